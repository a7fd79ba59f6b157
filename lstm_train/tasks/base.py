"""What a task gives the trainer and the command-line tools. Every task in conf/task/ is a :class:`Task`.

A task owns its data and its notion of success; the trainer knows neither. The model factory matches
models to tasks by ``Task.kind`` and reads ``Task.inputs`` and ``Task.num_outputs`` to size the model.
A task also owns how a user's input reaches its model and how the output is shown: lstm-predict,
lstm-generate and lstm-visualize use a checkpoint through the optional methods at the end of :class:`Task`,
and refuse tasks that do not implement theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from lstm_train.errors import ConfigError, UsageError
from lstm_train.registry import Registered, Registry
from lstm_train.schema import Schema, to_schema, value

# classification: one label per sequence; tagging: one per step; language_model: the next token at every
# step; seq2seq: an output sequence per input sequence.
TaskKind = Literal["classification", "tagging", "language_model", "seq2seq"]
KINDS: tuple[TaskKind, ...] = get_args(TaskKind)
Split = Literal["val", "test"]
TASKS = Registry("task")


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
    """What one step of the input is: a float vector of ``features``, or a token id below ``vocab_size``; with
    ``chars``, the batches also hold each token's characters, ids below ``chars`` (a tagging task's words)."""

    features: int | None = None
    vocab_size: int | None = None
    chars: int | None = None


@dataclass
class Example:
    """One input for lstm-visualize: a one-sequence batch ready for the task's forward, and its steps' labels."""

    batch: Batch
    labels: list[str]  # one tick label per step (a character, a word, a step number)
    marks: list[int]  # steps to highlight (first_last: the two informative ones)
    text: str | None  # the text whose characters are the steps, for colouring it by a unit; None: not such a text
    has_target: bool = False  # the batch holds the true target, so dL/dh_t of its loss means something


@dataclass
class TaskConfig(Schema):
    """What every task's schema has."""

    name: str = value(doc="The task's option name (task=NAME).")
    data_seed: int = value(doc="Seeds the data trainer.seed does not: the val/test data (and a fixed training set).")
    monitor: str = value(doc="The task's headline metric: the default of trainer.monitor, val/<this>.")

    def batch_length(self) -> int | None:
        """The steps of the longest sequence in a batch, as far as the config alone says (the memory estimate of
        :func:`lstm_train.config.check_memory`); None when the data decides (a cap on what is read from files)."""
        return None


def check_fractions(cfg: Any) -> None:
    """For the schemas of tasks that split one file by fractions: something must be left to train on."""
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigError("task.val_fraction", "task.val_fraction + task.test_fraction must be < 1")


def check_lengths(cfg: Any) -> None:
    """For the schemas of tasks that draw lengths in [min_len, seq_len]."""
    if cfg.min_len > cfg.seq_len:
        raise ConfigError("task.min_len", f"must be <= task.seq_len ({cfg.min_len} > {cfg.seq_len})")


class Metrics(ABC):
    """Accumulates a split's metrics over batches, on the model's device (no sync per batch).

    Its attributes that are numbers, tensors or lists of numbers must be sums over the batches (counts,
    loss times count, a confusion matrix): a data-parallel run adds them up over its processes
    (lstm_train.training.distributed.reduce_metrics). Flags and names (bools, strings) are left alone.
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


def metric_text(value: float, spec: str = ".4f") -> str:
    """A metric's value as the log and the sweep summary write it: ``spec``, but 4 significant digits for a
    fixed-point spec once the value is huge (a diverged run's perplexity: 3.644e+92, not 93 digits)."""
    return format(value, ".4g" if spec.endswith("f") and abs(value) >= 1e6 else spec)


class Task(Registered, ABC):
    """A task of conf/task/: a subclass that sets ``name`` is that option, with its schema dataclass ``Config``.
    It is built as ``cls(cfg, state)`` (by :func:`build_task`): ``cfg`` an instance of ``Config``; ``state`` None
    to read the data, or what :meth:`state_dict` returned (from a checkpoint) to use a trained model without it."""

    registry: ClassVar[Registry] = TASKS
    kind: ClassVar[TaskKind]
    Config: ClassVar[type[TaskConfig]]
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

    def probe_batch(self, size: int) -> Batch:
        """The gate probe's fixed batch: the val split's first ``size`` sequences, each read from a zero state."""
        return next(iter(self.eval_batches("val", size)))

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's output on a batch: the one place the trainer calls a model. Tasks whose models need
        more than inputs and lengths (teacher-forced targets, a state carried across chunks) override it."""
        return model(batch.x, batch.lengths)

    @abstractmethod
    def loss(self, output: Tensor, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        """The mean cross-entropy of a batch; the trainer passes ``trainer.label_smoothing`` in training only,
        so val and test losses stay the plain negative log-likelihood."""

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

    def load_train_state(self, state: dict) -> None:  # most tasks carry nothing: a no-op default
        """Restore :meth:`train_state` in a resumed run."""

    # ---- for the command-line tools: optional, a tool refuses a task that lacks its method ------------------
    # lstm-predict: options it adds for tasks like this one (flag -> argparse.add_argument keywords), passed to
    # predict_line as keywords (``--beam-size`` -> ``beam_size``)
    predict_options: ClassVar[dict[str, dict[str, Any]]] = {}

    def predict_line(self, model: nn.Module, line: str, **options: Any) -> str:
        """lstm-predict: the text to print for one input line (the model is in eval mode, gradients off)."""
        raise NotImplementedError

    def generate(
        self, model: nn.Module, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[str]:
        """lstm-generate: ``length`` tokens sampled after ``prompt``, as text, one at a time as they come."""
        raise NotImplementedError

    def unknown_tokens(self, text: str) -> tuple[list[str], int]:
        """lstm-predict, lstm-generate, lstm-visualize: the tokens of a user's input that the model's vocabulary
        lacks (it reads them as its unknown token), in order, and how many tokens the input has; ([], 0) for a
        task whose inputs have no vocabulary."""
        return [], 0

    def example(self, text: str | None, seed: int) -> Example:
        """lstm-visualize: the input whose gates to plot, from the user's ``text`` (or a sequence drawn with
        ``seed``, for a task whose inputs are not text)."""
        raise NotImplementedError


def needs_text(task: Task, text: str | None) -> str:
    """The text lstm-visualize was given for a task that reads text; a UsageError if there is none."""
    if not text:
        raise UsageError(f"task {task.name} needs an input: give --text or --text-file")
    return text


def build_task(cfg: Any, state: dict | None = None) -> Task:
    """The task of ``cfg`` (a composed ``task`` group, or a checkpoint's), its config read once here; with a
    checkpoint's ``state``, without its data. A ConfigError for a config that cannot work."""
    cls = TASKS.option(cfg)
    typed = to_schema(cls.Config, cfg, "task")
    typed.check()
    return cls(typed, state)
