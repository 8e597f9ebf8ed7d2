"""Plans for semi-supervised training."""
