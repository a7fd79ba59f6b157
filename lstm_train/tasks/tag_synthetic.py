"""tag_synthetic: random token sequences whose tags need memory across the sequence; for tests and quick runs.

Words are the numbers ``0`` .. ``vocab_size - 1`` drawn uniformly; lengths are uniform in
[``min_len``, ``seq_len``], so batches are padded. ``rule`` says what each token's tag is:

- ``first``: ``same`` if the token equals the sentence's first token, else ``other`` (the first token is
  ``same``). The forward direction must carry the first token to the end.
- ``seen``: ``seen`` if the token occurred earlier in the sentence, else ``new``: a set to remember.

Validation and test sets are fixed by ``data_seed``; training sentences are new every epoch (drawn from
trainer.seed and the epoch, so a resumed run replays them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lstm_train.schema import one_of, positive, value

from .base import Batch, TaskConfig, check_lengths
from .data import Vocab, seeded
from .tagging import PAD, UNK, Encoded, TaggingTask, bucketed

TAGS = {"first": ["other", "same"], "seen": ["new", "seen"]}


@dataclass
class TagSyntheticConfig(TaskConfig):
    rule: str = value(one_of("first", "seen"), doc="A word's tag: seen: whether it occurred earlier in the "
                      "sentence; first: whether it equals the first word.")
    vocab_size: int = value(positive, doc="Words the sentences are drawn from (0 .. vocab_size - 1).")
    min_len: int = value(positive, doc="The shortest sentence: lengths are uniform in [min_len, seq_len].")
    seq_len: int = value(positive, doc="The longest sentence.")
    train_size: int = value(positive, doc="Fresh training sentences per epoch.")
    val_size: int = value(positive, doc="Val sentences (fixed by data_seed).")
    test_size: int = value(positive, doc="Test sentences (fixed by data_seed).")

    def check(self) -> None:
        check_lengths(self)

    def batch_length(self) -> int:  # lengths drawn up to seq_len: a batch is padded to its longest
        return self.seq_len


class TagSynthetic(TaggingTask):
    name = "tag_synthetic"
    Config = TagSyntheticConfig

    def __init__(self, cfg: TagSyntheticConfig, state: dict | None = None) -> None:
        self.cfg = cfg
        super().__init__(cfg, state)

    def _load(self, cfg: TagSyntheticConfig) -> None:
        # UNK: words outside the range, in prediction
        self.vocab = Vocab([PAD, UNK, *map(str, range(cfg.vocab_size))], UNK)
        self.chars = Vocab([PAD, UNK, *"0123456789"], UNK)
        self.spellings = self.spell(self.vocab.tokens)  # word id -> its characters
        self.tags, self.scheme = TAGS[cfg.rule], "none"
        self.data = {split: self.sample(size, seeded(self.name, cfg.data_seed, split))
                     for split, size in (("val", cfg.val_size), ("test", cfg.test_size))}

    def sample(self, n: int, generator: torch.Generator) -> list[Encoded]:
        """n (word ids, tag ids, character ids) sentences."""
        cfg = self.cfg
        vocab_size, first = cfg.vocab_size, cfg.rule == "first"
        lengths = torch.randint(cfg.min_len, cfg.seq_len + 1, (n,), generator=generator).tolist()
        pairs = []
        for length in lengths:
            tokens = torch.randint(vocab_size, (length,), generator=generator)
            if first:
                tags = (tokens == tokens[0]).long()
            else:  # seen: an earlier position holds the same token
                tags = (tokens[:, None] == tokens[None, :]).tril(-1).any(1).long()
            ids = tokens + 2  # ids 0 and 1: padding and the unknown word
            pairs.append((ids, tags, self.spellings[ids]))
        return pairs

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.cfg.train_size / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        generator = seeded("train", seed, epoch)
        return bucketed(self.sample(self.cfg.train_size, generator), batch_size, generator)
