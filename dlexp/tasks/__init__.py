"""LightningModules, one per task type."""
