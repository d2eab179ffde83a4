"""Training: the Lightning system, camera data, stages (coarse → fine), checkpoints and their
records, callbacks, signals, preflight checks and the run folder (lock, metrics history)."""
