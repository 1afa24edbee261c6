"""Evaluation: metrics, the protocol that scores predictions, the step and its report."""
