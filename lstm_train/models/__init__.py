"""Models: one per config option in conf/model/, built from config by :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from lstm_train.checkpoint import load_checkpoint
from lstm_train.config import ConfigError
from lstm_train.tasks import TASKS, Task, TaskKind

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


def load_trained(
    path: str | Path, device: str = "cpu", check: Callable[[DictConfig], None] | None = None
) -> tuple[DictConfig, Task, nn.Module]:
    """A run's config, task and model (eval mode, on ``device``) from its checkpoint; no training data needed.

    ``check`` sees the run's config before anything is built, to refuse a model the caller cannot use.

    Tasks with checkpoint state (a vocabulary) rebuild from it; a task built from config alone (first_last)
    gets one-sequence val and test sets, which nothing here reads. Any problem is a one-line ValueError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no checkpoint file at {path}")
    state = load_checkpoint(path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    if check is not None:
        check(cfg)
    task_cls = TASKS.get(cfg.task.name)
    if task_cls is None:
        raise ValueError(f"{path}: unknown task {cfg.task.name!r}")
    if "state" in inspect.signature(task_cls).parameters:
        task = task_cls(cfg.task, state=state["task"])
    else:
        task = task_cls(OmegaConf.merge(cfg.task, {k: 1 for k in ("val_size", "test_size") if k in cfg.task}))
    model = build_model(cfg.model, task)
    model.load_state_dict(state["model"])
    return cfg, task, model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BUILDERS", "KINDS", "CharLM", "Classifier", "Encoder", "Seq2Seq", "Tagger", "build_model", "count_parameters",
    "load_trained",
]
