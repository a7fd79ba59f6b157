"""What every sequence-classification task shares: cross-entropy and accuracy."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Metrics, Task


class ClassificationMetrics(Metrics):
    def __init__(self) -> None:
        self.loss_sum: Tensor | float = 0.0
        self.correct: Tensor | int = 0
        self.count = 0

    def update(self, output: Tensor, batch: Batch, loss: Tensor) -> None:
        n = len(batch)
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.correct = self.correct + (output.detach().argmax(-1) == batch.y).sum()
        self.count += n

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        values = torch.stack([torch.as_tensor(self.loss_sum, dtype=torch.float64).cpu(),
                              torch.as_tensor(self.correct, dtype=torch.float64).cpu()]) / self.count
        loss, acc = values.tolist()
        return {"loss": loss, "acc": acc}


class ClassificationTask(Task):
    kind = "classification"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "acc": True}

    def loss(self, output: Tensor, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output, batch.y, label_smoothing=label_smoothing)

    def new_metrics(self) -> Metrics:
        return ClassificationMetrics()
