"""text_char and model=char: vocabulary, batches, metrics, sampling, the generate CLI; tiny files only."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lstm_train.cli.generate import load_model
from lstm_train.cli.generate import main as generate_main
from lstm_train.config import ConfigError, validate
from lstm_train.models import build_model
from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.tasks import build_task
from lstm_train.tasks.text_char import UNK, StreamBatch, TextChar, char_vocab
from lstm_train.train import train

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 8


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def char_cfg(compose_cfg, path: Path, *overrides: str):
    cfg = compose_cfg("debug=fast", "task=text_char", "model=char", f"task.path={path}", "task.val_fraction=0.1",
                      "task.test_fraction=0.1", "trainer.progress_bar=false", *overrides)
    validate(cfg)
    return cfg


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
])
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


def test_tied_weights_need_equal_sizes(compose_cfg, text_file):
    cfg = compose_cfg("task=text_char", "model=char", f"task.path={text_file}", "model.tie_weights=true")
    with pytest.raises(ConfigError, match=r"^model\.tie_weights: needs model\.hidden_size == model\.embedding_dim"):
        validate(cfg)
    cfg = char_cfg(compose_cfg, text_file, "model.tie_weights=true", "model.embedding_dim=16")
    model = build_model(cfg.model, build_task(cfg.task))
    assert model.head.weight is model.encoder.embedding.weight


def tiny_model(compose_cfg, text_file, *overrides: str):
    cfg = char_cfg(compose_cfg, text_file, *overrides)
    task = build_task(cfg.task)
    torch.manual_seed(0)
    return build_model(cfg.model, task), task


def memorise(model, ids, steps: int = 150) -> float:
    """Train ``model`` on the one row of ``ids`` until it knows it by heart; the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_overfits_a_tiny_text(compose_cfg, text_file, one_thread):
    model, task = tiny_model(compose_cfg, text_file, "model.hidden_size=64", "model.num_layers=1", "task.seq_len=48")
    ids = task.ids["train"][:49].view(1, -1)  # one line of the text and the start of the next
    assert memorise(model, ids) < 0.05
    # and greedy decoding reproduces the memorised line from its first character
    assert task.vocab.decode(model.generate(ids[0, :1], 20, temperature=0)) == task.vocab.decode(ids[0, 1:21])


def test_sampling_is_seeded_greedy_and_validated(compose_cfg, text_file):
    model, task = tiny_model(compose_cfg, text_file)
    prompt = task.vocab.encode_text("the ")
    def sample(seed, **kw):
        return model.generate(prompt, 30, generator=torch.Generator().manual_seed(seed), **kw)
    assert sample(1) == sample(1) and sample(1) != sample(2)
    assert sample(1, top_k=1) == sample(2, top_k=1) == sample(3, temperature=0)  # top-1 and greedy agree
    logits, _ = model.eval().step(prompt.view(1, -1))  # eval: no dropout, as in generate
    assert sample(5, temperature=0)[0] == int(logits[0, -1].argmax())
    assert set(sample(4, top_k=3)) <= set(range(task.num_outputs))
    for kw, message in (({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=message):
            sample(0, **kw)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate([], 3)


def test_prompt_is_fed_once_then_one_step_per_character(compose_cfg, text_file, monkeypatch):
    model, task = tiny_model(compose_cfg, text_file)
    model.eval()
    prompt = task.vocab.encode_text("the cat ")
    calls = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda x, state=None, lengths=None: calls.append((x.shape[1], state)) or step(
        x, state, lengths))
    out = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in calls] == [len(prompt), 1, 1, 1, 1, 1]  # 6 characters: the prompt once, 5 steps
    assert calls[0][1] is None
    # The carried state equals a full forward over prompt + the first 5 sampled characters.
    _, (h, c) = step(torch.cat([prompt, torch.tensor(out[:5])]).view(1, -1))
    _, (h_steps, c_steps) = step(torch.tensor([[out[4]]]), calls[-1][1])
    torch.testing.assert_close(h_steps, h)
    torch.testing.assert_close(c_steps, c)


def test_debug_run_end_to_end_and_generate_from_its_checkpoint(compose_cfg, text_file, tmp_path, capsys, one_thread):
    cfg = char_cfg(compose_cfg, text_file, "task.seq_len=16", "task.train_size=64")
    assert cfg.trainer.monitor == "val/bpc"
    metrics = train(cfg, tmp_path / "run")
    assert set(metrics["test"]) == {"loss", "bpc", "ppl"} and metrics["best"]["value"] > 0
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0}).Reload()
    samples = events.Tensors("sample/text_summary")
    assert len(samples) == 2 and len(samples[-1].tensor_proto.string_val[0]) > 100  # one per evaluation
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    state = load_checkpoint(ckpt)
    assert state["task"]["vocab"]["chars"] == "".join(build_task(cfg.task).vocab.tokens)
    # the vocabulary comes back from the checkpoint alone, without the text file
    text_file.unlink()
    _, task, _ = load_model(ckpt)
    assert isinstance(task, TextChar) and "".join(task.vocab.tokens) == state["task"]["vocab"]["chars"]
    args = [str(ckpt), "--prompt", "the ", "--length", "12", "--seed", "3", "--num-samples", "2"]
    generate_main(args)
    first = capsys.readouterr().out
    generate_main(args)
    assert capsys.readouterr().out == first and first.count("the ") >= 2 and "\n---\n" in first
    assert capsys.readouterr().err == ""
    generate_main([str(ckpt), "--prompt", "THE CAT", "--length", "1"])  # no capitals in the text it learnt
    assert capsys.readouterr().err == (
        "lstm-generate: warning: 6 of the input's 7 tokens (86%) are not in the model's vocabulary and read as "
        f"unknown ('T', 'H', 'E', 'C', 'A'); it was trained on task=text_char ({text_file})\n")
    generate_main([str(ckpt), "--prompt", "the the the the$", "--length", "1"])  # one in 16: named too
    assert capsys.readouterr().err == (
        "lstm-generate: warning: 1 of the input's 16 tokens (6%) are not in the model's vocabulary and read as "
        f"unknown ('$'); it was trained on task=text_char ({text_file})\n")
    assert OmegaConf.create(state["config"]).model.name == "char"


@pytest.mark.parametrize(("args", "message"), [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-k", "0"], "--top-k > 0"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file: no file at"),
])
def test_generate_bad_inputs_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        generate_main([str(tmp_path / "missing.pt"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_generate_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        generate_main([str(tmp_path / "missing.pt")])
    assert capsys.readouterr().err.strip() == f"lstm-generate: error: no checkpoint file at {tmp_path}/missing.pt"


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


@pytest.mark.parametrize("training_state", [False, True])
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
