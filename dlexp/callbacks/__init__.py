"""Training callbacks: early stopping, gradient clipping, freezing, run info in checkpoints."""
