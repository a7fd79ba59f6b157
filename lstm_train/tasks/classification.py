"""What every sequence-classification task shares: cross-entropy and accuracy, and lstm-predict's output."""

from __future__ import annotations

from json import dumps
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_train.errors import UsageError

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

    # ---- lstm-predict: a task that reads an input line into a batch shows its labels with labelled() --------
    @property
    def class_names(self) -> list[str]:
        """The label of each output, for lstm-predict (the class index where the classes have no names)."""
        return [str(i) for i in range(self.num_outputs)]

    def labelled(self, model: nn.Module, line: str, batch: Batch | None, top: int = 1, json: bool = False) -> str:
        """What lstm-predict prints for one input (``batch``: the line read as one sequence; None: nothing in it to
        classify): the ``top`` most likely labels with their probabilities, ``label p`` pairs separated by tabs,
        or a JSON object; an empty line for an empty input (JSON: a null label)."""
        if top < 1:
            raise UsageError(f"--top: must be >= 1, got {top}")
        top_k: list[tuple[str, float]] = []
        if batch is not None:
            probabilities = self.forward(model, batch.to(next(model.parameters()).device))[0].float().softmax(-1)
            values, ids = probabilities.topk(min(top, len(probabilities)))
            top_k = [(self.class_names[i], p) for i, p in zip(ids.tolist(), values.tolist(), strict=True)]
        if json:
            return dumps({"input": line, "label": top_k[0][0] if top_k else None,
                          "probabilities": {label: round(p, 6) for label, p in top_k}}, ensure_ascii=False)
        return "\t".join(f"{label} {p:.3f}" for label, p in top_k)


# lstm-predict's options for a classification task that implements predict_line with labelled()
LABEL_OPTIONS: dict[str, dict[str, Any]] = {
    "--top": {"type": int, "default": 1, "metavar": "K",
              "help": "classifiers: the K most likely labels, each with its probability (default 1)"},
    "--json": {"action": "store_true",
               "help": "classifiers: a JSON object per input (input, label, probabilities of the top K), for scripts"},
}
