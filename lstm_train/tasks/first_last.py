"""first_last: the label of a gaussian sequence depends only on its first and last steps.

x is (T, input_size) standard normal; s = x[0, 0] + x[-1, 0]; the label is the bucket of s among
``num_classes`` equally likely buckets (quantiles of s's normal distribution). With two classes that is
the seed's ``s > 0``. Everything between the first and last step is noise the model must carry its memory
of x[0, 0] through, which is what makes the task a test of long-range memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lstm_train.errors import UsageError
from lstm_train.schema import at_least, positive, value

from .base import Batch, Example, Inputs, Split, TaskConfig
from .classification import LABEL_OPTIONS, ClassificationTask
from .data import seeded


@dataclass
class FirstLastConfig(TaskConfig):
    seq_len: int = value(positive, doc="Steps per sequence: the two informative steps are this far apart.")
    input_size: int = value(positive, doc="Gaussian features per step.")
    num_classes: int = value(at_least(2), doc="2: the sign of x[0,0] + x[-1,0]; more: equally likely buckets of "
                             "it.")
    train_size: int = value(positive, doc="Training sequences per epoch.")
    val_size: int = value(positive, doc="Val sequences (fixed by data_seed).")
    test_size: int = value(positive, doc="Test sequences (fixed by data_seed).")
    fresh: bool = value(doc="New training sequences every epoch; false: one fixed training set (from data_seed).")

    def batch_length(self) -> int:  # every sequence has seq_len steps
        return self.seq_len


class FirstLast(ClassificationTask):
    name = "first_last"
    Config = FirstLastConfig

    def __init__(self, cfg: FirstLastConfig, state: dict | None = None) -> None:
        """With ``state`` (a checkpoint's: empty), no val, test or training set: only what :meth:`sample` needs."""
        self.seq_len = cfg.seq_len
        self.inputs = Inputs(features=cfg.input_size)
        self.num_outputs = cfg.num_classes
        self.train_size = cfg.train_size
        self.fresh = cfg.fresh
        self.data_seed = cfg.data_seed
        # s is N(0, 2) (N(0, 4) when the first step is also the last); cut it at its quantiles.
        std = 2.0 if self.seq_len == 1 else math.sqrt(2.0)
        k = torch.arange(1, self.num_outputs, dtype=torch.float64) / self.num_outputs
        self.thresholds = (std * torch.special.ndtri(k)).float()
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.fixed_train = None
        if state is not None:
            return
        # val and test depend on data_seed only, so runs with different trainer seeds share them.
        self.splits = {split: self.sample(size, seeded(self.name, self.data_seed, split)) for split, size in
                       (("val", cfg.val_size), ("test", cfg.test_size))}
        if not self.fresh:
            self.fixed_train = self.sample(self.train_size, seeded(self.name, self.data_seed, "train"))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n sequences (n, T, input_size) and their labels (n,)."""
        x = torch.randn(n, self.seq_len, self.inputs.features, generator=generator)
        s = x[:, 0, 0] + x[:, -1, 0]
        return x, torch.bucketize(s, self.thresholds)  # bucket k: thresholds[k-1] < s <= thresholds[k]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.train_size / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        generator = seeded("train", seed, epoch)
        if self.fixed_train is None:  # new sequences every batch: the same as a new set every epoch
            for start in range(0, self.train_size, batch_size):
                yield Batch(*self.sample(min(batch_size, self.train_size - start), generator))
        else:
            x, y = self.fixed_train
            order = torch.randperm(self.train_size, generator=generator)
            for start in range(0, self.train_size, batch_size):
                index = order[start : start + batch_size]
                yield Batch(x[index], y[index])

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        x, y = self.splits[split]
        for start in range(0, len(y), batch_size):
            yield Batch(x[start : start + batch_size], y[start : start + batch_size])

    predict_options: ClassVar[dict[str, dict[str, Any]]] = LABEL_OPTIONS

    def predict_line(self, model: nn.Module, line: str, top: int = 1, json: bool = False) -> str:
        """A sequence's label(s): the line's numbers (separated by spaces or commas), input_size per step."""
        numbers = line.replace(",", " ").split()
        try:
            values = [float(n) for n in numbers]
        except ValueError as e:
            raise UsageError(f"{e}; a first_last input is numbers separated by spaces or commas") from None
        size = self.inputs.features
        if len(values) % size:
            raise UsageError(f"{len(values)} numbers; a first_last model reads steps of {size} numbers "
                             f"(task.input_size): give a multiple of {size}, e.g. {self.seq_len * size} for the "
                             f"{self.seq_len} steps it was trained on")
        batch = Batch(torch.tensor(values).view(1, -1, size), torch.zeros(1, dtype=torch.long)) if values else None
        return self.labelled(model, line, batch, top, json)

    def example(self, text: str | None, seed: int) -> Example:
        """A sequence drawn with ``seed``, with its label: the first and last steps marked."""
        if text is not None:
            raise UsageError("first_last takes no --text; its sequence is drawn with --seed")
        x, y = self.sample(1, torch.Generator().manual_seed(seed))
        T = x.shape[1]
        return Example(Batch(x, y), [str(t) for t in range(T)], [0, T - 1], None, has_target=True)
