"""Evaluation of a model on a split, data-parallel or not."""

from __future__ import annotations

import torch
from torch import nn

from lstm_train.tasks import Metrics, Split, Task
from lstm_train.training import distributed
from lstm_train.training.distributed import World
from lstm_train.training.precision import Precision
from lstm_train.training.tracking import Tracker


class Evaluator:
    """Evaluates on ``task``'s splits in batches of ``batch_size`` (trainer.eval_batch_size). Data-parallel, each
    rank evaluates its share of every batch and the sums are added up."""

    def __init__(self, task: Task, batch_size: int, precision: Precision, world: World = World()) -> None:  # noqa: B008
        self.task, self.batch_size, self.precision, self.world = task, batch_size, precision, world

    def evaluate(self, model: nn.Module, split: Split) -> Metrics:
        """The split's accumulated metrics (all ranks'); ``model`` is left in eval mode."""
        metrics = self.task.new_metrics()
        model.eval()
        with torch.inference_mode():
            for batch in self.task.eval_batches(split, self.batch_size):
                local, real = distributed.shard(batch, self.world)
                if real:
                    local = local.to(self.precision.device)
                    with self.precision.autocast():
                        output = self.task.forward(model, local)
                        loss = self.task.loss(output, local)
                    metrics.update(output, local, loss)
        return distributed.reduce_metrics(metrics)

    def test(self, model: nn.Module, tracker: Tracker, step: int) -> dict[str, float]:
        """The test metrics of ``model``, logged at ``step`` with the task's tables and figures."""
        metrics = self.evaluate(model, "test")
        test = metrics.compute()
        tracker.scalars({f"test/{k}": v for k, v in test.items()}, step)
        tracker.text({f"test/{k}": v for k, v in metrics.tables().items()}, step, markdown=True)
        tracker.figures({f"test/{k}": v for k, v in metrics.figures().items()}, step)
        return test
