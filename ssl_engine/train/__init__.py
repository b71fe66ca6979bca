"""Pretraining: building a run from its config, the training loop, optimisers and the schedule."""
