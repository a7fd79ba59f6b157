"""What a task gives the trainer: batches, a loss, metrics. Every task in conf/task/ implements :class:`Task`.

A task owns its data and its notion of success; the trainer knows neither. The model factory matches
models to tasks by ``Task.kind`` and reads ``Task.inputs`` and ``Task.num_outputs`` to size the model.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

# classification: one label per sequence; tagging: one per step; language_model: the next token at every
# step; seq2seq: an output sequence per input sequence.
TaskKind = Literal["classification", "tagging", "language_model", "seq2seq"]
Split = Literal["val", "test"]


@dataclass
class Batch:
    x: Tensor  # (B, T, features) float vectors, or (B, T) token ids
    y: Tensor  # (B,) labels for classification; (B, T) for per-step targets
    lengths: Tensor | None = None  # (B,) true lengths of right-padded x, kept on the CPU; None: all full

    def to(self, device: torch.device) -> Batch:
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True), self.lengths)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Inputs:
    """What one step of the input is: a float vector of ``features``, or a token id below ``vocab_size``."""

    features: int | None = None
    vocab_size: int | None = None


class Metrics(ABC):
    """Accumulates a split's metrics over batches, on the model's device (no sync per batch).

    Its attributes that are numbers, tensors or lists of numbers must be sums over the batches (counts,
    loss times count, a confusion matrix): a data-parallel run adds them up over its processes
    (lstm_train.distributed.reduce_metrics). Flags and names (bools, strings) are left alone.
    """

    @abstractmethod
    def update(self, output: Tensor, batch: Batch, loss: Tensor) -> None:
        """Add one batch; ``loss`` is the task's mean loss on it, already computed."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metric name (``loss``, ``acc``, ...) -> value; empty if nothing was added."""

    def tables(self) -> dict[str, str]:
        """Markdown for TensorBoard's text tab after the test (name -> table, e.g. a confusion matrix)."""
        return {}

    def figures(self) -> dict[str, Any]:
        """matplotlib figures for TensorBoard's images tab after the test (name -> figure)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The accumulated sums (tensors and plain values), for a checkpoint taken between evaluations."""
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


class Task(ABC):
    kind: ClassVar[TaskKind]
    name: ClassVar[str]
    inputs: Inputs
    num_outputs: int  # classes, tags or vocabulary size: the width of the model's output layer
    metric_names: ClassVar[tuple[str, ...]]  # what Metrics.compute returns; trainer.monitor picks one
    higher_is_better: ClassVar[dict[str, bool]]

    @abstractmethod
    def steps_per_epoch(self, batch_size: int) -> int: ...

    @abstractmethod
    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        """One epoch of training batches, a pure function of its arguments (so a resumed run can replay
        an epoch and skip the batches it has seen)."""

    @abstractmethod
    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        """The fixed val or test set, in order."""

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's output on a batch: the one place the trainer calls a model. Tasks whose models need
        more than inputs and lengths (teacher-forced targets, a state carried across chunks) override it."""
        return model(batch.x, batch.lengths)

    @abstractmethod
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """The mean training loss of a batch."""

    def loss_weight(self, batch: Batch) -> float:
        """How many terms :meth:`loss` averages over: the samples (the default), or the real tokens of
        per-step targets. A data-parallel run weights each process's share of a batch by it."""
        return len(batch)

    @abstractmethod
    def new_metrics(self) -> Metrics: ...

    def samples(self, model: nn.Module) -> dict[str, str]:
        """Text to log at each evaluation (tag -> text), e.g. what a language model generates; none by default.
        Must leave the global RNG alone (draw from an own generator), so that runs resume to the same numbers."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint must carry to use the model later (a vocabulary, say); plain containers only."""
        return {}

    def train_state(self) -> dict:
        """What training carries from one batch to the next (a language model's state), for a checkpoint
        taken at any step; tensors and plain containers only."""
        return {}

    def load_train_state(self, state: dict) -> None:  # noqa: B027 (most tasks carry nothing: a no-op default)
        """Restore :meth:`train_state` in a resumed run."""


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's hash() of a str changes from process to process)."""
    return zlib.crc32(repr(parts).encode())
