"""One training run from a validated config: loop, LR schedules, checkpoints, exact resume, logs."""
