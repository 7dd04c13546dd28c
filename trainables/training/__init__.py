"""Training: the optimiser and schedule of the release code, the loop, checkpoints."""
