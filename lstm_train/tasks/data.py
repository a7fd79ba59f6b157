"""The data helpers every task shares: a vocabulary, padded batches, seeded generators."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


class Vocab:
    """Tokens <-> ids: ``tokens[i]`` has id i, the special tokens (padding, unknown, ...) first. A token outside
    the vocabulary encodes as ``unknown`` (without one, it is a KeyError: a tag set, say)."""

    def __init__(self, tokens: Iterable[str], unknown: str | None = None) -> None:
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.unknown = None if unknown is None else self.index[unknown]

    @classmethod
    def counted(cls, specials: Sequence[str], counts: Counter, min_count: int, unknown: str | None = None) -> Vocab:
        """The specials, then the tokens counted ``min_count`` times or more, most frequent first (ties by token)."""
        kept = sorted((t for t, n in counts.items() if n >= min_count and t not in specials),
                      key=lambda t: (-counts[t], t))
        return cls([*specials, *kept], unknown)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        if self.unknown is None:
            return [self.index[t] for t in tokens]
        return [self.index.get(t, self.unknown) for t in tokens]

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def encode_text(self, text: str) -> Tensor:
        """(len(text),) int64 ids of a text whose tokens are its characters. Vectorised (the KJV is 4 M
        characters): the text's code points are looked up among those of the one-character tokens."""
        if self.unknown is None:
            raise ValueError("encode_text needs a vocabulary with an unknown token")
        chars = sorted((ord(t), i) for i, t in enumerate(self.tokens) if len(t) == 1)
        known = torch.tensor([c for c, _ in chars], dtype=torch.long)
        ids = torch.tensor([i for _, i in chars], dtype=torch.long)
        cps = _codepoints(text).long()
        if not len(known):
            return torch.full((len(cps),), self.unknown, dtype=torch.long)
        pos = torch.searchsorted(known, cps).clamp(max=len(known) - 1)
        return torch.where(known[pos] == cps, ids[pos], self.unknown)


def _codepoints(text: str) -> Tensor:
    if not text:
        return torch.zeros(0, dtype=torch.int32)
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)


def pad(seqs: Sequence[Sequence[int] | Tensor], value: int = 0) -> tuple[Tensor, Tensor]:
    """Id sequences right-padded with ``value`` into (B, T), and their true lengths (B,) (on the CPU, where the
    LSTM wants them)."""
    tensors = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    return (torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value),
            torch.tensor([len(t) for t in tensors]))


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50
) -> list[list[int]]:
    """One epoch's batches of indices, each of similar lengths, in random order: a random permutation cut into
    pools of ``pool`` batches, each pool sorted by length and cut into batches, then the batches shuffled. The
    same examples per epoch as plain shuffled batches and the same batch count (only the epoch's last batch is
    short), with far less padding: random batches of 128 cmudict words are half padding."""
    order = torch.randperm(len(lengths), generator=generator)
    by_length = torch.as_tensor(lengths)
    batches: list[Tensor] = []
    for start in range(0, len(order), pool * batch_size):
        part = order[start : start + pool * batch_size]
        batches += part[torch.argsort(by_length[part], stable=True)].split(batch_size)
    return [batches[i].tolist() for i in torch.randperm(len(batches), generator=generator)]


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's hash() of a str changes from process to process)."""
    return zlib.crc32(repr(parts).encode())


def seeded(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts``: ``seeded("train", seed, epoch)`` draws an epoch's training data (a
    resumed run replays it); ``seeded(name, split, data_seed)`` a fixed evaluation set."""
    return torch.Generator().manual_seed(derive_seed(*parts))
