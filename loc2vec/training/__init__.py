"""Training: device handling, the triplet training loop, checkpoints, DDP."""
