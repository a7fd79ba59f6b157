"""A trained run from its checkpoint, for the command-line tools: its config, its task (no data) and its model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lstm_train.checkpoint import evaluated_weights, load_checkpoint
from lstm_train.models import Model, build_model
from lstm_train.tasks import Task, build_task


def load_trained(
    path: str | Path, device: str = "cpu", check: Callable[[DictConfig], None] | None = None
) -> tuple[DictConfig, Task, Model]:
    """A run's config (brought up to today's keys), task and model (eval mode, on ``device``) from its checkpoint:
    the weights the run evaluated (with trainer.ema_decay, their moving average).

    ``check`` sees the run's config before anything is built, to refuse a model the caller cannot use. The task
    is rebuilt from its checkpoint state (a vocabulary, say), without its data. Any problem with the file is a
    one-line ValueError; a config that no longer works, a ConfigError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no checkpoint file at {path}")
    state = load_checkpoint(path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    if check is not None:
        check(cfg)
    task = build_task(cfg.task, state=state["task"])
    model = build_model(cfg.model, task)
    model.load_state_dict(evaluated_weights(state))
    return cfg, task, model.to(device).eval()
