"""SpidR / DinoSR: the self-supervised speech encoder (model, objective, schedules, pretraining, checkpoints)."""
