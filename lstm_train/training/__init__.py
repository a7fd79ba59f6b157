"""Training: the Trainer and its parts, optimizers and schedules, data parallelism, signals, TensorBoard, the
gate probe."""
