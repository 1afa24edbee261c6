"""Watching what is served: the training images' profile, drift detection, the monitor service."""
