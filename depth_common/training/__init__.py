"""Training: the loop, its state and control, losses, warm start and data-parallel runs."""
