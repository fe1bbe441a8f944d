"""Datasets as in-memory uint8 tensors with device-side batching (see datamodule.py)."""
