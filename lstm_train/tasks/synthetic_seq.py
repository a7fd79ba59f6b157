"""reverse, sort, copy: synthetic sequence-to-sequence tasks over random symbol sequences.

A source is ``min_len`` to ``seq_len`` symbols (uniform length) drawn uniformly from ``vocab_size`` symbols,
written "0", "1", ...; the target is the source reversed, sorted (by symbol number), or copied. Training
sequences are fresh every epoch (a pure function of trainer.seed and the epoch); val and test are fixed by
``data_seed`` (with short lengths, some of them also occur in training: there are only so many). One schema
and one class; the three options differ only in the operation, so ``-m task=reverse,sort,copy`` sweeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from lstm_train.errors import ConfigError
from lstm_train.schema import non_negative, positive, value

from .base import Batch, TaskConfig, check_lengths
from .data import seeded
from .seq2seq import Seq2SeqTask, make_batch, token_vocab


@dataclass
class SyntheticSeqConfig(TaskConfig):  # reverse, sort, copy
    vocab_size: int = value(positive, doc="Symbols the sequences are drawn from (\"0\", \"1\", ...).")
    min_len: int = value(positive, doc="The shortest source: lengths are uniform in [min_len, seq_len].")
    seq_len: int = value(positive, doc="The longest source.")
    train_size: int = value(positive, doc="Fresh training sequences per epoch (an evaluation each epoch by "
                            "default).")
    val_size: int = value(positive, doc="Val sequences (fixed by data_seed).")
    test_size: int = value(positive, doc="Test sequences (fixed by data_seed).")
    num_samples: int = value(non_negative, doc="Val examples (source, reference, decoded) shown in TensorBoard's "
                             "text tab at each evaluation.")

    def check(self) -> None:
        check_lengths(self)

    def batch_length(self) -> int:  # lengths drawn up to seq_len: a batch is padded to its longest
        return self.seq_len


class SyntheticSeq(Seq2SeqTask):
    name: ClassVar[str]
    Config = SyntheticSeqConfig

    def __init__(self, cfg: SyntheticSeqConfig, state: dict | None = None) -> None:
        self.vocab_size, self.min_len, self.seq_len = cfg.vocab_size, cfg.min_len, cfg.seq_len
        self.train_size, self.num_samples = cfg.train_size, cfg.num_samples
        vocab = token_vocab(str(i) for i in range(cfg.vocab_size))
        if state is not None and state["source_vocab"] != vocab.tokens:
            raise ConfigError("task.vocab_size", "differs from the checkpoint's vocabulary")
        self.set_vocabs(vocab, vocab)
        self.data = {}
        if state is None:
            for split, size in (("val", cfg.val_size), ("test", cfg.test_size)):
                sources = self._draw(size, seeded(self.name, split, cfg.data_seed))
                self.data[split] = (sources, [self.transform(s) for s in sources], None)

    @staticmethod
    def transform(source: list[int]) -> list[int]:
        raise NotImplementedError

    def _draw(self, n: int, generator: torch.Generator) -> list[list[int]]:
        """n random sources, as ids (symbol k is id k + 4, after the special tokens)."""
        lengths = torch.randint(self.min_len, self.seq_len + 1, (n,), generator=generator).tolist()
        symbols = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=generator) + 4
        return [row[:length] for row, length in zip(symbols.tolist(), lengths, strict=True)]

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.train_size // batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        generator = seeded("train", self.name, seed, epoch)
        for start in range(0, self.train_size, batch_size):
            sources = self._draw(min(batch_size, self.train_size - start), generator)
            yield make_batch(sources, [self.transform(s) for s in sources])


class Reverse(SyntheticSeq):
    name = "reverse"

    @staticmethod
    def transform(source: list[int]) -> list[int]:
        return source[::-1]


class Sort(SyntheticSeq):
    name = "sort"

    @staticmethod
    def transform(source: list[int]) -> list[int]:
        return sorted(source)


class Copy(SyntheticSeq):
    name = "copy"

    @staticmethod
    def transform(source: list[int]) -> list[int]:
        return list(source)
