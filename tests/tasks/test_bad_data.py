"""The data-file mistakes a user can make, each through the real path (compose the config, validate it, build
the task): a one-line ConfigError that starts with the config key and names the file, the line where there is
one, the problem and the fix. docs/errors.md (What a mistake gets) lists the same cases."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lstm_train.config import ConfigError, validate
from lstm_train.tasks import build_task
from tests import ROOT

DIR = object()  # a directory where a file should be
CSV_ROWS = "".join(f"text {i} {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(40))
GOOD = {
    "csv": ("body,y\n" + CSV_ROWS).encode(),
    "conll": b"EU B-ORG\nrejects O\n\nPeter B-PER\n",
    "brown": b"\tThe/at jury/nn said/vbd ./.\n",
}


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("d.csv", data)
    return buffer.getvalue()


@dataclass
class Case:
    id: str
    task: str  # text_cls | text_char | conll | conll_val | brown | g2p
    files: dict[str, object]  # name -> bytes, or DIR; the first is the file the message names
    key: str
    message: str  # a part of the message after "key: <file>"
    overrides: tuple[str, ...] = ()
    names_file: bool = True  # False: a config-level mistake that no one file holds
    extra: dict[str, object] = field(default_factory=dict)


def bio_words(tags: str) -> bytes:
    return "".join(f"w{i} {t}\n" for i, t in enumerate(tags.split())).encode()


CASES = [
    # ---- any data file (read_text): shown on text_cls's .csv; every reader goes through it -------------
    Case("missing file", "text_cls", {"missing.csv": None}, "task.path", "no file at"),
    Case("a directory", "text_cls", {"dir.csv": DIR}, "task.path", "is a directory; give a file"),
    Case("empty file", "text_cls", {"d.csv": b""}, "task.path", "is empty"),
    Case("not UTF-8 (Latin-1)", "text_cls", {"d.csv": b"body,y\ncaf\xe9,1\n"}, "task.path",
         ":2: not UTF-8 text (byte 0xe9 at offset 10); save the file as UTF-8"),
    Case("binary (a NUL byte)", "text_cls", {"d.csv": b"body,y\nab\x00c,1\n"}, "task.path",
         ":2: a NUL byte: this is a binary file, not text"),
    Case("gzip-compressed", "text_cls", {"d.csv": gzip.compress(GOOD["csv"])}, "task.path",
         "is gzip-compressed, not UTF-8 text; decompress it (gunzip)"),
    Case("a zip archive", "text_cls", {"d.csv": zipped(GOOD["csv"])}, "task.path",
         "is a zip archive, not UTF-8 text; unzip it"),
    Case("xz-compressed", "text_cls", {"d.csv": lzma.compress(GOOD["csv"])}, "task.path", "is xz-compressed"),
    Case("UTF-16", "text_cls", {"d.csv": GOOD["csv"].decode().encode("utf-16")}, "task.path",
         "is UTF-16 text, not UTF-8 text; convert it to UTF-8"),
    Case(".bz2 name, not bz2", "text_cls", {"d.csv.bz2": GOOD["csv"]}, "task.path",
         "is not bz2-compressed (Invalid data stream); if it is plain text, drop the .bz2"),
    Case("bz2 without .bz2 name", "text_cls", {"d.csv": bz2.compress(GOOD["csv"])}, "task.path",
         "is bz2-compressed; name it d.csv.bz2"),
    # ---- text_cls: CSV, TSV, JSONL -------------------------------------------------------------------
    Case("unknown extension", "text_cls", {"d.txt": GOOD["csv"]}, "task.path",
         ": the name must end in .csv, .tsv or .jsonl"),
    Case("no such text column", "text_cls", {"d.csv": b"text,y\nhi,1\n"}, "task.text_column",
         ":1: the header has no column 'body'; it has 'text', 'y'"),
    Case("no such label column", "text_cls", {"d.csv": b"body,label\nhi,1\n"}, "task.label_column",
         ":1: the header has no column 'y'; it has 'body', 'label'"),
    Case("column named twice", "text_cls", {"d.csv": b"body,body,y\na,b,1\n"}, "task.text_column",
         ":1: the header names 'body' twice"),
    Case("CSV with semicolons", "text_cls", {"d.csv": b"body;y\nhi;1\n"}, "task.text_column",
         "it has 'body;y' (one column: is the file comma-separated?)"),
    Case("TSV with commas", "text_cls", {"d.tsv": b"body,y\nhi,1\n"}, "task.text_column",
         "(one column: is the file tab-separated?)"),
    Case("CSV unquoted comma", "text_cls", {"d.csv": b"body,y\nhi,1\nhello, world,0\n"}, "task.path",
         ':3: 3 fields, the header has 2; quote a field that holds a comma: "a, b"'),
    Case("CSV row too short", "text_cls", {"d.csv": b"body,y\nhello\n"}, "task.path",
         ":2: 1 field, the header has 2; give every row all the header's columns"),
    Case("CSV quote never closed", "text_cls", {"d.csv": b'body,y\n"hi,1\nho,0\n'}, "task.path",
         ':2: a field opened with a quote (") is never closed'),
    Case("CSV field over csv's limit", "text_cls", {"d.csv": b"body,y\n" + b"x" * 140_000 + b",1\n"}, "task.path",
         ":2: a field longer than 131072 characters, csv's limit (a quote never closed?); close the quote, or cut"),
    Case("CSV text after a quote", "text_cls", {"d.csv": b'body,y\n"hi" there,1\n'}, "task.path",
         ":2: text after a field's closing quote"),
    Case("TSV tab in a text", "text_cls", {"d.tsv": b"body\ty\na\tb\t1\n"}, "task.path",
         ":2: 3 tab-separated fields, the header has 2; a .tsv field cannot hold a tab (no quoting)"),
    Case("header only", "text_cls", {"d.csv": b"body,y\n"}, "task.path", "holds a header and no rows"),
    Case("blank lines only", "text_cls", {"d.csv": b"\n  \n"}, "task.path", "holds only blank lines"),
    Case("empty label", "text_cls", {"d.csv": b"body,y\nhi,1\nho,\n"}, "task.label_column",
         ":3: the label 'y' is empty; label the row or remove it"),
    Case("JSONL line not JSON", "text_cls", {"d.jsonl": b'{"body": "hi", "y": 1}\n{oops\n'}, "task.path",
         ":2: not JSON (Expecting property name enclosed in double quotes); write one JSON object per line"),
    Case("JSONL line not an object", "text_cls", {"d.jsonl": b'["hi", 1]\n'}, "task.path",
         ":1: a JSON array, not an object"),
    Case("JSONL key missing", "text_cls", {"d.jsonl": b'{"body": "hi"}\n'}, "task.label_column",
         ":1: no 'y' in this record; it has 'body'"),
    Case("JSONL null value", "text_cls", {"d.jsonl": b'{"body": "hi", "y": null}\n'}, "task.label_column",
         ":1: 'y' is null; give a string or a number"),
    Case("JSONL nested value", "text_cls", {"d.jsonl": b'{"body": {"a": 1}, "y": 1}\n'}, "task.text_column",
         ":1: 'body' is a JSON object; give a string or a number"),
    Case("JSONL nested too deeply", "text_cls", {"d.jsonl": b"[" * 200_000}, "task.path",
         ":1: JSON nested too deeply to read"),
    Case("one label only", "text_cls", {"d.csv": b"body,y\nhi,1\nho,1\nha,1\n"}, "task.label_column",
         ": needs >= 2 different labels; found only '1'"),
    Case("no text has a token", "text_cls", {"d.csv": b"body,y\n ,1\n ,2\n"}, "task.label_column",
         ": needs >= 2 different labels; found no text with a token"),
    Case("too few rows to split", "text_cls", {"d.csv": b"body,y\nhi,1\nho,2\n"}, "task.path",
         ": no text falls in the val split (2 in all); give more rows, or a larger task.val_fraction"),
    # ---- text_char --------------------------------------------------------------------------------------
    Case("text_char: missing file", "text_char", {"t.txt": None}, "task.path", "no file at"),
    Case("text_char: not UTF-8", "text_char", {"t.txt": b"abc\n\xff\n"}, "task.path", ":2: not UTF-8 text"),
    Case("text_char: too short to split", "text_char", {"t.txt": b"abc"}, "task.path",
         ": its val split has 0 characters; needs >= 2 (a longer file"),
    Case("text_char: shorter than seq_len", "text_char", {"t.txt": b"abcdefghij" * 10}, "task.seq_len",
         "'s training split has 90 characters", ("task.seq_len=128",)),
    # ---- conll: CoNLL-U and column files --------------------------------------------------------------
    Case("conll: missing train file", "conll", {"train.txt": None}, "task.train", "no file at"),
    Case("conll: missing val file", "conll_val", {"val.txt": None}, "task.val", "no file at"),
    Case("conll: not UTF-8", "conll", {"train.txt": b"EU B-ORG\nK\xf6ln B-LOC\n"}, "task.train",
         ":2: not UTF-8 text"),
    Case("CoNLL-U: 9 fields", "conll", {"t.conllu": b"1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\n"}, "task.train",
         ":1: expected 10 tab-separated fields (CoNLL-U), got 9"),
    Case("CoNLL-U: ID not a number", "conll", {"t.conllu": b"x\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n"},
         "task.train", ":1: the ID field is 'x', not a number"),
    Case("CoNLL-U: no tag", "conll", {"t.conllu": b"1\tHi\thi\t_\t_\t_\t0\troot\t_\t_\n"}, "task.train",
         ":1: no tag (the tag column 4 holds '_')"),
    Case("columns: a word with a space", "conll", {"train.txt": b"EU B-ORG\nNew York B-LOC\n"}, "task.train",
         ":2: 3 columns, line 1 has 2; every token line needs the same columns"),
    Case("columns: tag column out of range", "conll", {"train.txt": GOOD["conll"]}, "task.train",
         ":1: 2 columns, but the tag column is 5", ("task.tag_column=5",)),
    Case("conll: no sentences", "conll", {"train.txt": b"-DOCSTART- -X- O\n\n"}, "task.train",
         "holds no sentences, only blank, comment or -DOCSTART- lines"),
    Case("scheme=bio on POS tags", "conll", {"train.txt": b"a DT\ncat NN\n"}, "task.scheme",
         "bio needs tags O or B/I-TYPE; the data has 'DT' (use scheme=auto or none)", ("task.scheme=bio",),
         names_file=False),
    Case("scheme=bioes on BIO tags", "conll", {"train.txt": GOOD["conll"]}, "task.scheme",
         "bioes scores only chunks that end in E- or S-", ("task.scheme=bioes",), names_file=False),
    Case("scheme=bioes, B- without E-", "conll", {"train.txt": bio_words("B-X I-X S-X O")}, "task.scheme",
         "tags with the prefixes B/I/S cannot make BIOES chunks", ("task.scheme=bioes",), names_file=False),
    # ---- brown_pos ---------------------------------------------------------------------------------------
    Case("brown: no corpus", "brown", {"corpus": DIR}, "task.path",
         "no Brown corpus files (ca01 .. cr09) in", extra={"files": 0}),
    Case("brown: a file, not the corpus dir", "brown", {"corpus": b"x"}, "task.path",
         "; fetch them with: .venv/bin/python scripts/fetch_brown.py --dest", extra={"files": 0}),
    Case("brown: too few files", "brown", {"corpus": DIR}, "task.path",
         "holds 3 Brown corpus files; the split needs 10 or more", extra={"files": 3}),
    Case("brown: blank corpus files", "brown", {"corpus": DIR}, "task.path",
         ": the train split's corpus files hold no sentences", extra={"files": 10, "content": b"\t\n"}),
    Case("brown: token not word/tag", "brown", {"corpus/ca03": b"\tThe/at jury/nn\n\tbroken ./.\n"}, "task.path",
         ":2: token 'broken' is not word/tag"),
    Case("brown: not UTF-8", "brown", {"corpus/ca02": b"\tcaf\xe9/nn\n"}, "task.path", ":1: not UTF-8 text"),
    # ---- g2p: cmudict-format files --------------------------------------------------------------------
    Case("g2p: missing file", "g2p", {"d.dict": None}, "task.path", "no file at"),
    Case("g2p: no phonemes", "g2p", {"d.dict": b"cat K AE1 T\nlonely\n"}, "task.path",
         ":2: expected 'word PH1 PH2 ...', got 'lonely'"),
    Case("g2p: not a phoneme", "g2p", {"d.dict": b"cat K AE1 T\ndog D ao1 G\n"}, "task.path",
         ":2: 'ao1' is not a phoneme (ARPAbet: capitals and an optional stress digit 0-2)"),
    Case("g2p: no usable words", "g2p", {"d.dict": b"a.m. EY2 EH1 M\n"}, "task.path",
         "has no entries of letters and apostrophes"),
    Case("g2p: too few words to split", "g2p", {"d.dict": b"cat K AE1 T\n"}, "task.path",
         ": no word falls in the val split (1 in all); give more words, or a larger task.val_fraction"),
]

TASK_OVERRIDES = {
    "text_cls": ("task=text_cls", "task.text_column=body", "task.label_column=y", "task.path={target}"),
    "text_char": ("model=char", "task=text_char", "task.path={target}"),
    "conll": ("model=tagger", "task=conll", "task.train={target}", "task.val={dir}/good.txt"),
    "conll_val": ("model=tagger", "task=conll", "task.train={dir}/good.txt", "task.val={target}"),
    "brown": ("model=tagger", "task=brown_pos", "task.path={dir}/corpus"),
    "g2p": ("model=seq2seq", "task=g2p", "task.path={target}"),
}


def write_case(case: Case, root: Path) -> Path | None:
    """The case's files under root (the good ones its task needs, then its own); the path its message names."""
    (root / "good.txt").write_bytes(GOOD["conll"])
    if case.task == "brown" and "files" not in case.extra:
        for i in range(10):
            (root / "corpus").mkdir(exist_ok=True)
            (root / "corpus" / f"ca{i + 1:02d}").write_bytes(GOOD["brown"])
    for name, content in case.files.items():
        path = root / name
        if content is DIR:
            path.mkdir(exist_ok=True)
            for i in range(case.extra.get("files", 0)):
                (path / f"ca{i + 1:02d}").write_bytes(case.extra.get("content", GOOD["brown"]))
        elif content is not None:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
    return root / next(iter(case.files)) if case.files else None


def bad_data_error(compose_cfg, case: Case, root: Path) -> tuple[ConfigError, Path | None]:
    target = write_case(case, root)
    overrides = [o.format(target=target, dir=root) for o in TASK_OVERRIDES[case.task]]
    cfg = compose_cfg(*overrides, *case.overrides)
    validate(cfg)
    with pytest.raises(ConfigError) as error:
        build_task(cfg.task)
    return error.value, target


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_data_file_is_one_clear_line(compose_cfg, tmp_path, case):
    error, target = bad_data_error(compose_cfg, case, tmp_path)
    message = str(error)
    assert "\n" not in message and message.startswith(f"{case.key}: "), message
    assert case.message in message, message
    if case.names_file:
        assert str(target) in message, message


def test_the_catalogue_covers_every_reader_and_many_mistakes():
    assert {c.task for c in CASES} == set(TASK_OVERRIDES)
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
    assert f"for {len(CASES)} more mistakes" in (ROOT / "docs/errors.md").read_text()  # the catalogue's count


def test_unreadable_file(compose_cfg, tmp_path, monkeypatch):
    """chmod 000 does not stop root (CI runs as root), so the refusal is simulated where the file is read."""
    path = tmp_path / "d.csv"
    path.write_bytes(GOOD["csv"])

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    cfg = compose_cfg(*(o.format(target=path) for o in TASK_OVERRIDES["text_cls"]))
    with pytest.raises(ConfigError, match=rf"^task\.path: cannot read {path}: Permission denied$"):
        build_task(cfg.task)
