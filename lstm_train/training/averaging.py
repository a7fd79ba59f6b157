"""trainer.ema_decay: a moving average of the weights, which val, test, samples and best.pt evaluate."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class WeightAverage:
    """A copy of a model whose weights follow the trained ones: ema = decay * ema + (1 - decay) * w after each
    step, the first update copying w; buffers are copied. Training, the probe and resuming use the weights as
    trained. (Not torch's AveragedModel: it moves its update count from the CPU to the weights' device at every
    update, which on a GPU waits for the stream each step.)"""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.updates = 0

    def announce(self) -> None:
        log.info("val, test and best.pt evaluate a moving average of the weights (trainer.ema_decay=%g: about the "
                 "last %d steps)", self.decay, round(1 / (1 - self.decay)))

    def update(self, trained: nn.Module) -> None:
        averaged, weights = list(self.model.parameters()), [w.detach() for w in trained.parameters()]
        with torch.no_grad():
            if self.updates == 0:
                torch._foreach_copy_(averaged, weights)
            else:
                torch._foreach_lerp_(averaged, weights, 1.0 - self.decay)
            for mine, theirs in zip(self.model.buffers(), trained.buffers(), strict=True):
                mine.copy_(theirs)
        self.updates += 1

    def start_from(self, trained: nn.Module) -> None:
        """Start the average at ``trained``'s weights (a run resumed with an average its checkpoint lacks)."""
        self.model.load_state_dict(trained.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = state["updates"]
