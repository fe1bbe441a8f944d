"""Configs: find and compose them (compose.py) and check every override before anything runs (checks.py)."""
