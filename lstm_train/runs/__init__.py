"""What a run leaves on disk and reads back: the run dir, checkpoints, a trained run for the tools, a sweep's
summary."""
