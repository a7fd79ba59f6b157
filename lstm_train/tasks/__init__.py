"""Tasks: one per config option in conf/task/, built from config by :func:`build_task`."""

from __future__ import annotations

from omegaconf import DictConfig

from lstm_train.config import ConfigError

from .base import Batch, Inputs, Metrics, Split, Task, TaskKind, derive_seed
from .brown import BrownPos
from .conll import Conll
from .first_last import FirstLast
from .g2p import G2P
from .synthetic_seq import Copy, Reverse, Sort
from .tag_synthetic import TagSynthetic
from .text import CharVocab, TextChar
from .text_cls import TextCls

TASKS: dict[str, type[Task]] = {
    "first_last": FirstLast, "text_char": TextChar, "text_cls": TextCls,
    "reverse": Reverse, "sort": Sort, "copy": Copy, "g2p": G2P,
    "tag_synthetic": TagSynthetic, "conll": Conll, "brown_pos": BrownPos,
}


def build_task(cfg: DictConfig) -> Task:
    if cfg.name not in TASKS:
        raise ConfigError("task.name", f"unknown task {cfg.name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[cfg.name](cfg)


__all__ = [
    "TASKS", "Batch", "CharVocab", "Inputs", "Metrics", "Split", "Task", "TaskKind", "TextChar", "TextCls",
    "build_task", "derive_seed",
]
