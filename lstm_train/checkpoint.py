"""The one checkpoint format: a dict of tensors and plain containers, for torch.load(weights_only=True).

Keys (written by :meth:`lstm_train.trainer.Trainer.state_dict`): ``format``, ``model``, ``optimizer``,
``scheduler``, ``progress`` (step, epoch, batch in epoch, best, early stopping), ``rng``, ``config`` (the
resolved config as plain dicts), ``task`` (what the task needs to rebuild itself, e.g. a vocabulary),
``num_params``, ``metrics`` (the last evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstm-train checkpoint (format {FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """Torch's global generators (init, dropout); the data has its own, derived from seed and epoch."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
