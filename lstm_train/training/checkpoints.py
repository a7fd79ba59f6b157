"""A run's checkpoints/ dir: last.pt, saved after every evaluation and at a stop, and best.pt beside it (the
format: lstm_train/runs/checkpoint.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lstm_train.runs.checkpoint import evaluated_weights, load_checkpoint, save_checkpoint
from lstm_train.training.distributed import World

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoints in ``directory``; data-parallel, rank 0 alone writes them."""

    def __init__(self, directory: Path, world: World = World()) -> None:  # noqa: B008 (frozen: one process)
        self.dir, self.world = directory, world
        self.last: Path | None = None  # the last.pt that holds the run's state as it is now

    def save(self, state: dict[str, Any], improved: bool) -> Path:
        """last.pt, then best.pt if ``improved``: a stop between the two leaves a last.pt that records itself as
        the best (its progress.best's step is its own) beside the previous best.pt, which a resume repairs from
        last.pt (lstm_train/training/resume.py)."""
        if self.world.main:
            save_checkpoint(self.dir / "last.pt", state)
            if improved:
                save_checkpoint(self.dir / "best.pt", state)
        self.last = self.dir / "last.pt"
        return self.last

    def best_weights(self, step: int, device: torch.device) -> dict[str, Tensor]:
        """best.pt's evaluated weights, checked to be those of ``step``, the best step the run records; a
        ValueError (KeyError, RuntimeError) says why they cannot be."""
        best = self.dir / "best.pt"
        if not best.is_file():
            raise ValueError(f"{best} is missing")
        held = load_checkpoint(best, map_location=device)
        if held["progress"]["step"] != step:
            raise ValueError(f"{best} holds step {held['progress']['step']}, not the best step {step}")
        return evaluated_weights(held)

    def load_best(self, model: nn.Module, best: dict[str, Any] | None, device: torch.device) -> tuple[str, str | None]:
        """Load into ``model`` the weights of the run's ``best`` (progress' record) for the test: which weights it
        then holds (best, or last when there is no best or best.pt is unusable), and why best.pt is unusable."""
        if best is None:
            log.warning("no best yet (no evaluation since the run or its best started): testing the last weights")
            return "last", None
        try:
            model.load_state_dict(self.best_weights(best["step"], device))
        except (ValueError, KeyError, RuntimeError) as e:
            unusable = str(e).splitlines()[0]
            log.error("%s: testing the last weights instead", unusable)
            return "last", unusable
        return "best", None
