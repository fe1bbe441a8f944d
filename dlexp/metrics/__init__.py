"""Evaluation metrics: sample quality of generative runs."""
