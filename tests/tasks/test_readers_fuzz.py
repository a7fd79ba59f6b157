"""Every data reader, fed random bytes and near-valid files (valid lines with mutations: missing and extra
columns, stray quotes, blank lines, a BOM, CRLF, invalid UTF-8, NUL bytes, odd whitespace, huge lines): it
parses, or raises the project's one-line ConfigError; never another exception. Through build_task, so the
task's own splitting and vocabulary code runs on whatever the reader let through."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_train.config import CONF_DIR, ConfigError
from lstm_train.tasks import build_task

# A few valid lines per format: the mutations start from these.
VALID = {
    "csv": ["body,y", *(f"text {i} here,{i % 3}" for i in range(12)), '"a, quoted ""one""",1'],
    "tsv": ["body\ty", *(f"text {i} here\t{i % 3}" for i in range(12)), '"starts with a quote\t2'],
    "jsonl": [f'{{"body": "text {i}", "y": {i % 3}}}' for i in range(12)],
    "conllu": ["# sent_id = 1", *(f"{i}\tw{i}\tw\tNOUN\t_\t_\t0\troot\t_\t_" for i in range(1, 5)), "",
               "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_", "1\tdo\tdo\tAUX\t_\t_\t0\troot\t_\t_",
               "2\tn't\tnot\tPART\t_\t_\t1\tx\t_\t_"],
    "txt": ["-DOCSTART- -X- O", "", "EU NNP B-ORG", "rejects VBZ O", "German JJ B-MISC", "", "Peter NNP I-PER"],
    "brown": ["", "\tThe/at jury/nn said/vbd ./.", "\tIt/pps didn't/dod* say/vb ''/''", ""],
    "dict": [";;; comment", "cat K AE1 T", "cat(2) K AA1 T", "dog D AO1 G # note", "o'brien OW0 B R AY1 AH0 N",
             *(f"{w} {p}" for w, p in (("sun", "S AH1 N"), ("tree", "T R IY1"), ("apple", "AE1 P AH0 L")))],
    "text": ["In the beginning was the word.", "", "Twas brillig, and the slithy toves", "Did gyre and gimble."],
}
READERS = {  # reader -> (file name, its format in VALID, overrides)
    "csv": ("d.csv", "csv", ("task=text_cls", "task.text_column=body", "task.label_column=y",
                             "task.val_fraction=0.2", "task.test_fraction=0.2", "task.min_count=1")),
    "tsv": ("d.tsv", "tsv", ("task=text_cls", "task.text_column=body", "task.label_column=y",
                             "task.val_fraction=0.2", "task.test_fraction=0.2")),
    "jsonl": ("d.jsonl", "jsonl", ("task=text_cls", "task.text_column=body", "task.label_column=y",
                                   "task.val_fraction=0.2", "task.test_fraction=0.2")),
    "conllu": ("d.conllu", "conllu", ("model=tagger", "task=conll", "task.train={path}", "task.val={path}")),
    "columns": ("d.txt", "txt", ("model=tagger", "task=conll", "task.train={path}", "task.val={path}")),
    "brown": ("corpus", "brown", ("model=tagger", "task=brown_pos")),
    "g2p": ("d.dict", "dict", ("model=seq2seq", "task=g2p", "task.val_fraction=0.3", "task.test_fraction=0.3")),
    "text_char": ("d.txt", "text", ("model=char", "task=text_char", "task.seq_len=4")),
}
ODD = ["", '"', "\t", " ", ",", "\\", "{", "[", "]", "}", "/", "#", "-", "_", "\x85", "\u2028", "\xa0", "\x0c",
       "\r", "B-X", "S-", "1.1", "1-2", "é", "\U0001f600"]


@st.composite
def near_valid(draw: st.DrawFn, fmt: str) -> bytes:
    lines = list(VALID[fmt])
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        line, kind = lines[i], draw(st.integers(0, 6))
        at = draw(st.integers(0, len(line)))
        if kind == 0:  # drop the last field
            lines[i] = line.rsplit("\t" if "\t" in line else " ", 1)[0]
        elif kind == 1:  # an extra field
            lines[i] = line + draw(st.sampled_from(["\t", " ", ","])) + draw(st.sampled_from(ODD))
        elif kind == 2:  # something odd inside the line
            lines[i] = line[:at] + draw(st.sampled_from(ODD)) + line[at:]
        elif kind == 3:  # cut short
            lines[i] = line[:at]
        elif kind == 4:  # a blank line
            lines.insert(i, draw(st.sampled_from(["", " ", "\t"])))
        elif kind == 5:  # a huge line: past csv's field limit of 131,072 characters
            lines[i] = line + "x" * draw(st.sampled_from([1_000, 140_000]))
        else:  # random text instead
            lines[i] = draw(st.text(max_size=30))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # a byte that is not UTF-8, or a NUL
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x00", b"\xed\xa0\x80"])) + data[at:]
    return data


def contents(fmt: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), near_valid(fmt))


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """One composed config per reader (composing is the slow part), its data path in a fresh directory."""
    root = tmp_path_factory.mktemp("fuzz")
    made = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name, (file, _, overrides) in READERS.items():
            path = root / name / file
            path.parent.mkdir()
            overrides = [o.format(path=path) for o in overrides]
            if not any(o.startswith("task.train=") for o in overrides):
                overrides.append(f"task.path={path}")
            made[name] = (compose("config", overrides=overrides), path)
    return made


def write(path: Path, data: bytes, reader: str) -> None:
    if reader == "brown":  # the same content in each of 10 corpus files: every split gets it
        path.mkdir(exist_ok=True)
        for i in range(10):
            (path / f"ca{i + 1:02d}").write_bytes(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("reader", list(READERS))
def test_readers_parse_or_raise_one_clean_line(configs, reader):
    cfg, path = configs[reader]
    fmt = READERS[reader][1]
    seen = {"ok": 0, "error": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])
    @given(contents(fmt))
    def check(data: bytes) -> None:
        write(path, data, reader)
        try:
            build_task(cfg.task)
        except ConfigError as e:
            message = str(e)
            assert len(message.splitlines()) == 1 and message.startswith("task."), message
            assert len(message) < 400, message  # a whole huge line never lands in a message
            seen["error"] += 1
        else:
            seen["ok"] += 1

    check()
    assert seen["ok"] and seen["error"], seen  # the mutations reach both outcomes
