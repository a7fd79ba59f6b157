"""Tasks: one per config option in conf/task/, each registered where its class is defined; :func:`build_task`."""

from lstm_train.registry import import_modules

from .base import (
    KINDS,
    TASKS,
    Batch,
    Example,
    Inputs,
    Metrics,
    Split,
    Task,
    TaskConfig,
    TaskKind,
    build_task,
    metric_text,
)
from .data import Vocab, derive_seed, pad, seeded

import_modules(__name__, __path__)  # every module here: each registers the tasks it defines

__all__ = [
    "KINDS", "TASKS", "Batch", "Example", "Inputs", "Metrics", "Split", "Task", "TaskConfig", "TaskKind", "Vocab",
    "build_task", "derive_seed", "metric_text", "pad", "seeded",
]
