"""text_char: the vocabulary, contiguous chunks and truncated BPTT, streamed evaluation, bpc and perplexity, bad
files, and a whole run's metrics and task state; tiny files only. (model=char is in tests/models/test_char.py.)"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from lstm_train.config import ConfigError
from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.tasks import build_task
from lstm_train.tasks.text_char import UNK, StreamBatch, char_vocab
from tests.helpers import TEXT, char_cfg, events, memorise, tiny_model


def test_vocab_unknown_symbol_and_round_trip():
    vocab = char_vocab("abca\n")
    assert "".join(vocab.tokens) == UNK + "\nabc"
    ids = vocab.encode_text("cab\nzé")
    assert ids.tolist() == [4, 2, 3, 1, 0, 0]  # z and é were not in training: the unknown symbol
    assert "".join(vocab.decode(ids)) == f"cab\n{UNK}{UNK}"
    assert vocab.encode(list("cab\nzé")) == ids.tolist()


def test_batches_are_shifted_contiguous_chunks(compose_cfg, text_file):
    task = build_task(char_cfg(compose_cfg, text_file, "task.seq_len=10").task)
    assert task.metric_names == ("loss", "bpc", "ppl")
    for batch in task.train_batches(0, 4, seed=0):
        assert batch.x.shape == batch.y.shape == (4, 10)
        assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])
        assert "".join(task.vocab.decode(batch.x[0]) + task.vocab.decode(batch.y[0, -1:])) in TEXT
    a = [b.x for b in task.train_batches(1, 4, seed=0)]
    assert all(torch.equal(x, y) for x, y in zip(a, [b.x for b in task.train_batches(1, 4, seed=0)], strict=True))


def test_per_chunk_evaluation_predicts_every_character_once(compose_cfg, text_file):
    # per-chunk val (eval_streams null): every character of the split is predicted once, the last chunk shorter
    task = build_task(char_cfg(compose_cfg, text_file, "task.seq_len=10", "task.eval_streams=null").task)
    val = list(task.eval_batches("val", 3))
    n_val = round(len(TEXT) * 0.1)
    assert sum(b.y.numel() for b in val) == n_val - 1
    assert val[-1].x.shape[1] == (n_val - 1) % 10 or (n_val - 1) % 10 == 0


def test_metrics_bpc_and_perplexity(compose_cfg, text_file):
    task = build_task(char_cfg(compose_cfg, text_file).task)
    metrics = task.new_metrics()
    for batch in task.eval_batches("val", 4):  # uniform logits: loss ln V, bpc log2 V, perplexity V
        out = torch.zeros(*batch.x.shape, task.num_outputs)
        metrics.update(out, batch, task.loss(out, batch))
    m = metrics.compute()
    v = task.num_outputs
    assert m["loss"] == pytest.approx(math.log(v)) and m["bpc"] == pytest.approx(math.log2(v))
    assert m["ppl"] == pytest.approx(v)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no file at"), (b"", "is empty"), (b"ab\xff\xfecd", "1: not UTF-8 text"),
], ids=["missing", "empty", "not-utf8"])
def test_bad_files_are_one_line_config_errors(compose_cfg, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^task\.path: .*{message}"):
        build_task(char_cfg(compose_cfg, path).task)


def test_bad_file_through_the_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lstm_train.train", "task=text_char", "model=char", f"task.path={tmp_path}/nope.txt",
         f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"lstm-train: error: task.path: no file at {tmp_path}/nope.txt"]


def test_a_run_logs_bpc_and_samples_and_its_checkpoint_holds_the_vocabulary(compose_cfg, text_file, char_run):
    assert char_run.cfg.trainer.monitor == "val/bpc"
    assert set(char_run.metrics["test"]) == {"loss", "bpc", "ppl"} and char_run.metrics["best"]["value"] > 0
    samples = events(char_run.dir).Tensors("sample/text_summary")
    assert len(samples) == 2 and len(samples[-1].tensor_proto.string_val[0]) > 100  # one per evaluation
    state = load_checkpoint(char_run.dir / "checkpoints/best.pt")
    # the run's text is gone; text_file holds the same text
    task = build_task(char_cfg(compose_cfg, text_file, *char_run.overrides).task)
    assert state["task"]["vocab"]["chars"] == "".join(task.vocab.tokens)
    assert OmegaConf.create(state["config"]).model.name == "char"


def test_truncated_bptt_carries_the_detached_state(compose_cfg, text_file):
    model, task = tiny_model(compose_cfg, text_file, "task.bptt=true", "model.dropout=0", "task.seq_len=6")
    batches = list(task.train_batches(0, 3, seed=0))
    assert len(batches) == task.steps_per_epoch(3) and [b.reset for b in batches[:2]] == [True, False]
    assert all(len(b) == 3 for b in batches)
    first, second = batches[0], batches[1]
    assert torch.equal(first.y[:, -1], second.x[:, 0])  # each row goes on where it stopped
    out1 = task.forward(model, first)
    out2 = task.forward(model, second)
    assert not task._state[0].requires_grad  # detached: the graph ends at the chunk boundary
    whole = model(torch.cat([first.x, second.x], 1))
    torch.testing.assert_close(torch.cat([out1, out2], 1), whole)
    # the next epoch starts afresh
    out3 = task.forward(model, next(iter(task.train_batches(1, 3, seed=0))))
    torch.testing.assert_close(out3, model(next(iter(task.train_batches(1, 3, seed=0))).x))


@pytest.mark.parametrize("training_state", [False, True], ids=["no-training-state", "training-state"])
def test_streamed_evaluation_reads_each_row_from_its_start(compose_cfg, text_file, training_state):
    model, task = tiny_model(compose_cfg, text_file, "task.eval_streams=3", "task.seq_len=4", "task.bptt=true")
    model.eval()
    ids = task.ids["val"]
    width = (len(ids) - 1) // 3
    batches = list(task.eval_batches("val", 1000))  # the eval batch size plays no part: 3 rows
    assert [b.reset for b in batches] == [True] + [False] * (len(batches) - 1)
    x, y = torch.cat([b.x for b in batches], 1), torch.cat([b.y for b in batches], 1)
    assert torch.equal(x, ids[: 3 * width].view(3, width)) and torch.equal(y, ids[1 : 3 * width + 1].view(3, width))
    carried = (torch.ones(1, 3, 32), torch.ones(1, 3, 32)) if training_state else None
    task._state = carried
    with torch.no_grad():
        streamed = torch.cat([task.forward(model, b) for b in batches], 1)
        torch.testing.assert_close(streamed, model(x))  # each row read as one sequence: the state was carried
        again = torch.cat([task.forward(model, b) for b in task.eval_batches("val", 1000)], 1)
    torch.testing.assert_close(again, streamed)  # a second evaluation starts afresh
    assert task._state is carried  # and the training state of truncated BPTT is left alone


def test_probe_takes_chunks_from_zeros_when_evaluation_streams(compose_cfg, text_file):
    streams = build_task(char_cfg(compose_cfg, text_file, "task.seq_len=4", "task.eval_streams=2").task)
    chunks = build_task(char_cfg(compose_cfg, text_file, "task.seq_len=4", "task.eval_streams=null").task)
    probe = streams.probe_batch(5)  # trainer.probe_size chunks, not the 2 stream rows
    assert not isinstance(probe, StreamBatch) and probe.x.shape == (5, 4)
    first = next(iter(chunks.eval_batches("val", 5)))
    assert torch.equal(probe.x, first.x) and torch.equal(probe.y, first.y)
    assert torch.equal(chunks.probe_batch(5).x, first.x)


def test_streamed_evaluation_beats_chunks_from_zeros(compose_cfg, text_file, one_thread):
    """A model that has learnt the text predicts a chunk's first characters better with the context."""
    model, task = tiny_model(compose_cfg, text_file, "model.hidden_size=64", "model.num_layers=1",
                             "task.seq_len=5", "task.eval_streams=1")
    memorise(model, task.ids["train"][:97].view(1, -1))
    model.eval()

    def bpc(task) -> float:
        metrics = task.new_metrics()
        with torch.no_grad():
            for batch in task.eval_batches("val", 1000):
                out = task.forward(model, batch)
                metrics.update(out, batch, task.loss(out, batch))
        return metrics.compute()["bpc"]

    chunks = build_task(char_cfg(compose_cfg, text_file, "task.seq_len=5", "task.eval_streams=null").task)
    assert bpc(task) < bpc(chunks) - 0.1
