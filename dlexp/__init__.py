"""dlexp: a config-driven deep-learning experiment runner (Hydra configs, PyTorch Lightning engine)."""
__version__ = "0.1.0"
