"""Models: one per config option in conf/model/, built from config by :func:`build_model`."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

from lstm_train.config import ConfigError
from lstm_train.tasks import Task, TaskKind

from .char import CharLM
from .classifier import Classifier
from .encoder import Encoder
from .seq2seq import Seq2Seq
from .tagger import Tagger

# The kind of task each model is made for: a mismatch is reported before anything is built.
KINDS: dict[str, TaskKind] = {
    "classifier": "classification",
    "tagger": "tagging",
    "char": "language_model",
    "seq2seq": "seq2seq",
}
BUILDERS: dict[str, Callable[[DictConfig, Task], nn.Module]] = {
    "classifier": Classifier, "char": CharLM, "seq2seq": Seq2Seq, "tagger": Tagger,
}


def build_model(cfg: DictConfig, task: Task) -> nn.Module:
    """The model of ``cfg.name``, sized for ``task``; a :class:`ConfigError` if the two don't fit."""
    name = cfg.name
    if name not in KINDS:
        raise ConfigError("model.name", f"unknown model {name!r}; choose one of {', '.join(KINDS)}")
    if KINDS[name] != task.kind:
        fits = [m for m, kind in KINDS.items() if kind == task.kind]
        raise ConfigError(
            "model",
            f"model={name} is a {KINDS[name]} model and does not fit task={task.name}, a {task.kind} task; "
            f"use model={' or model='.join(fits)}",
        )
    if name not in BUILDERS:
        raise ConfigError("model", f"model={name} is not implemented yet")
    return BUILDERS[name](cfg, task)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BUILDERS", "KINDS", "CharLM", "Classifier", "Encoder", "Seq2Seq", "Tagger", "build_model", "count_parameters",
]
