"""Training: batching, the loop, checkpoints, resume."""
