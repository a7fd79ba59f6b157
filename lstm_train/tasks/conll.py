"""conll: tagging from your own CoNLL-U or whitespace-column files (train, val and test by path).

Formats (``task.format``; ``auto``: ``.conllu`` files, or files whose first token line has 10 tab-separated
fields starting with a number, are CoNLL-U; everything else is columns):

- ``conllu``: 10 tab-separated fields per token line; ``#`` comment lines, multiword-token lines (ID
  ``1-2``) and empty nodes (ID ``1.1``) are skipped; a blank line ends a sentence.
- ``columns`` (CoNLL-2000/2003 style): fields separated by spaces or tabs, as many on every token line; a
  blank line ends a sentence, ``-DOCSTART-`` lines are skipped.

Columns are numbered from 1 as in the CoNLL-U spec; negative numbers count from the end (-1: the last).
``word_column`` / ``tag_column`` null: FORM (2) and UPOS (4) for CoNLL-U, the first and the last column
otherwise (word and NER tag in CoNLL-2003, word and chunk tag in CoNLL-2000).

Any malformed line stops the run with one line naming ``file:line`` and the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lstm_train.errors import ConfigError
from lstm_train.schema import allows, one_of, value

from .files import read_text, shown, split_fields, text_lines
from .tagging import Sentence, TaggedTextConfig, TaggingTask

DEFAULT_COLUMNS = {"conllu": (2, 4), "columns": (1, -1)}  # (word, tag), 1-based


@allows("an integer other than 0")
def _column(v: int) -> str | None:
    return None if v != 0 else "columns are numbered from 1 (negative: from the end); got 0"


@dataclass
class ConllConfig(TaggedTextConfig):
    data_seed: int = value(doc="Unused: the files are the splits.")
    train: str | None = value(doc="The training file: CoNLL-U or whitespace columns (required).")
    val: str | None = value(doc="The val file (required).")
    test: str | None = value(doc="The test file; null: the val file.")
    format: str = value(one_of("auto", "conllu", "columns"), doc="auto: CoNLL-U for .conllu or 10 tab-separated "
                        "fields with a numeric ID, else columns.")
    word_column: int | None = value(_column, doc="The words' column, from 1 (negative: from the end); null: FORM "
                                    "(2) for CoNLL-U, else the first.")
    tag_column: int | None = value(_column, doc="The tags' column, from 1 (negative: from the end); null: UPOS (4) "
                                   "for CoNLL-U, else the last.")

    def check(self) -> None:
        super().check()
        for split in ("train", "val"):  # before the run dir is made: a data file's problems only once it is read
            if getattr(self, split) is None:
                raise ConfigError(f"task.{split}", f"needs the path of a CoNLL-U or column file; set task.{split}=PATH")


def detect_format(path: Path, text: str) -> str:
    if path.suffix.lower() == ".conllu":
        return "conllu"
    first = next((line for line in text_lines(text) if line.strip() and not line.startswith("#")), "")
    fields = first.split("\t")
    return "conllu" if len(fields) == 10 and re.fullmatch(r"\d+([-.]\d+)?", fields[0]) else "columns"


def read_conll(
    path: str | Path,
    fmt: str = "auto",
    word_column: int | None = None,
    tag_column: int | None = None,
    key: str = "task.train",
) -> list[Sentence]:
    """The (words, tags) sentences of a CoNLL-U or column file; :class:`ConfigError` ``key: file:line: ...``
    for anything malformed."""
    path = Path(path).expanduser()
    text = read_text(path, key)
    fmt = detect_format(path, text) if fmt == "auto" else fmt
    columns = [c if c is not None else d for c, d in zip((word_column, tag_column), DEFAULT_COLUMNS[fmt], strict=True)]
    for name, c in zip(("word_column", "tag_column"), columns, strict=True):
        if c == 0:
            raise ConfigError(f"task.{name}", "columns are numbered from 1 (negative: from the end); got 0")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def fail(n: int, problem: str) -> ConfigError:
        return ConfigError(key, f"{path}:{n}: {problem}")

    def field(fields: list[str], n: int, column: int, what: str) -> str:
        index = column - 1 if column > 0 else column
        if not -len(fields) <= index < len(fields):
            raise fail(n, f"{len(fields)} columns, but the {what} column is {column}; set task.{what}_column to "
                       "one the file has (from 1; negative: from the end)")
        return fields[index]

    width = None  # (fields, line) of the first token line of a column file: every other one must match it
    for n, line in enumerate([*text_lines(text), ""], 1):  # a final blank line ends the last sentence
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if fmt == "conllu":
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise fail(n, f"expected 10 tab-separated fields (CoNLL-U), got {len(fields)}")
            if re.fullmatch(r"\d+[-.]\d+", fields[0]):  # a multiword token or an empty node
                continue
            if not fields[0].isdigit():
                raise fail(n, f"the ID field is {shown(fields[0])}, not a number")
        else:
            fields = split_fields(line)
            if fields[0] == "-DOCSTART-":
                continue
            width = width or (len(fields), n)
            if len(fields) != width[0]:
                raise fail(n, f"{len(fields)} columns, line {width[1]} has {width[0]}; every token line needs the "
                           "same columns (a word cannot hold a space)")
        word, tag = field(fields, n, columns[0], "word"), field(fields, n, columns[1], "tag")
        if tag in ("", "_"):
            raise fail(n, f"no tag (the tag column {columns[1]} holds {shown(tag)})")
        words.append(word)
        tags.append(tag)
    if not sentences:
        raise ConfigError(key, f"{path} holds no sentences, only blank, comment or -DOCSTART- lines")
    return sentences


class Conll(TaggingTask):
    name = "conll"
    Config = ConllConfig

    def read(self, cfg: ConllConfig) -> dict[str, list[Sentence]]:
        paths = {"train": cfg.train, "val": cfg.val, "test": cfg.test if cfg.test is not None else cfg.val}
        return {
            split: read_conll(
                path,
                cfg.format,
                cfg.word_column,
                cfg.tag_column,
                key=f"task.{split if split != 'test' or cfg.test else 'val'}",
            )
            for split, path in paths.items()
        }
