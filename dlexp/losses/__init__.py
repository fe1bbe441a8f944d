"""Loss terms: regularization penalties (and, for generative tasks, their losses)."""
