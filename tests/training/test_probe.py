"""Gate dynamics: the training probe, the gate plots from a checkpoint, the GRU/RNN baselines, the sweep plot."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lstm_train.cli import long_range, visualize
from lstm_train.config import ConfigError, to_container
from lstm_train.models import build_model
from lstm_train.nn import LSTM
from lstm_train.runs.checkpoint import save_checkpoint
from lstm_train.tasks import build_task
from lstm_train.train import train
from lstm_train.training.probe import GATES, record, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def checkpoint(compose_cfg, path, *overrides):
    """A checkpoint as lstm-train writes it (config, task state, weights) of a freshly initialised model."""
    cfg = compose_cfg(*overrides)
    torch.manual_seed(0)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task)
    save_checkpoint(path, {"model": model.state_dict(), "config": to_container(cfg), "task": task.state_dict()})
    return task, model


# ---- the probe in training ---------------------------------------------------------------------------
def test_probe_logs_its_tags_and_leaves_training_identical(compose_cfg, tmp_path):
    # dropout: the probe must not draw from the global generator; 8 steps, probed at 3 and 6
    base = ["debug=fast", "trainer.max_epochs=1", "model.bidirectional=true", "model.dropout=0.3"]
    plain = train(compose_cfg(*base), tmp_path / "plain")
    probed = train(compose_cfg(*base, "trainer.probe_every_n_steps=3", "trainer.probe_size=16"), tmp_path / "probe")
    for key in ("train", "val", "test", "best", "step"):
        assert probed[key] == plain[key]

    acc = EventAccumulator(str(tmp_path / "probe"), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    layers = [f"encoder.lstm.{layer}" for layer in ("l0", "l0_reverse", "l1", "l1_reverse")]
    histograms = {f"gates/{p}/{g}" for p in layers for g in GATES} | {f"cell_state/{p}" for p in layers}
    assert set(acc.Tags()["histograms"]) == histograms
    sigmoid_gates = ("input", "forget", "output")
    saturation = {f"saturation/{p}/{g}_{s}" for p in layers for g in sigmoid_gates for s in ("low", "high")}
    highway = {f"grad_highway/{p}/log10_first_over_last" for p in layers}
    scalars = set(acc.Tags()["scalars"])
    assert saturation | highway <= scalars
    assert acc.Tags()["images"] == ["grad_highway/encoder.lstm"]
    assert [e.step for e in acc.Scalars("saturation/encoder.lstm.l0/forget_high")] == [3, 6]
    # real steps only: 16 sequences x 8 steps x 16 units per histogram
    assert acc.Histograms("gates/encoder.lstm.l1/forget")[0].histogram_value.num == 16 * 8 * 16
    assert all(0 <= e.value <= 1 for e in acc.Scalars("saturation/encoder.lstm.l1/input_low"))


def test_summary_counts_real_steps_only_and_reads_torch_lstms(compose_cfg):
    # text_cls-like padding through the probe's own path: a Batch with lengths, our LSTM vs torch.nn.LSTM
    cfg = compose_cfg("debug=fast", "model.backend=torch")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    ours = LSTM(10, 16, 2, batch_first=True)
    ours.load_state_dict(model.encoder.lstm.state_dict())
    from lstm_train.tasks import Batch

    batch = Batch(x, y, torch.tensor([8, 3, 5]))
    grads_before = [p.grad for p in model.parameters()]
    calls = record(task, model, batch)
    assert model.training and grads_before == [p.grad for p in model.parameters()]
    (rec,) = calls["encoder.lstm"]
    gates = ours(x, lengths=batch.lengths, return_gates=True)[2]
    for a, b in zip(gates, rec.gates, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    summary = summarize(calls)
    assert summary.histograms["gates/encoder.lstm.l0/input"].numel() == (8 + 3 + 5) * 16
    forget = gates[0][..., 1, :][torch.arange(8)[None, :] < batch.lengths[:, None]]
    assert summary.scalars["saturation/encoder.lstm.l0/forget_high"] == pytest.approx((forget > 0.9).float().mean())


# ---- the visualiser ----------------------------------------------------------------------------------
def test_visualiser_gates_are_the_models_and_plots_are_pngs(compose_cfg, tmp_path):
    task, model = checkpoint(compose_cfg, tmp_path / "ck.pt", "debug=fast")
    _, loaded_task, loaded = visualize.load(tmp_path / "ck.pt")
    example = visualize.make_example(loaded_task, seed=7)
    recs = visualize.gate_recordings(loaded_task, loaded, example)
    x, _ = task.sample(1, torch.Generator().manual_seed(7))
    _, (_, c_n), gates = model.encoder(x, return_gates=True)
    for k, layer in enumerate(["l0", "l1"]):
        for j, gate in enumerate(GATES):
            torch.testing.assert_close(visualize.activations(recs["encoder.lstm"], layer, gate), gates[k][0, :, j])
        torch.testing.assert_close(visualize.activations(recs["encoder.lstm"], layer, "c")[-1], c_n[k, 0])

    written = visualize.write_plots(tmp_path / "ck.pt", tmp_path / "out", seed=7)
    names = [
        "gates_encoder.lstm.l0.png",
        "gates_encoder.lstm.l1.png",
        "saturation.png",
        "grad_highway_encoder.lstm.png",
    ]
    assert [p.name for p in written] == names
    assert png_size(written[3]) == (700, 400)
    width, height = visualize.heatmap_size(8, 16)
    assert png_size(written[0]) == (round(100 * width), round(100 * height)) == (800, 860)
    assert png_size(written[2]) == (760, 390)  # two panels of 3.6 x 3.4 inches, plus margins

    # Without --out, the plots go beside the run's checkpoints/, not into the working directory.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "ck.pt").rename(run / "checkpoints/best.pt")
    visualize.main([str(run / "checkpoints/best.pt"), "--seed", "7"])
    assert sorted(p.name for p in (run / "gates").iterdir()) == sorted(names)


def test_char_model_text_colouring_ranking_and_errors(compose_cfg, tmp_path, capsys):
    text_file = tmp_path / "t.txt"
    text_file.write_text('And he said, "Let there be light" (and it was so).\nThe end of the line.\n' * 30)
    task, model = checkpoint(
        compose_cfg, tmp_path / "ck.pt", "task=text_char", "model=char", f"task.path={text_file}",
        "task.seq_len=16", "model.hidden_size=8", "model.embedding_dim=8", "model.num_layers=1",
    )  # fmt: skip
    text = 'He said "yes" (twice).\nOk'
    written = visualize.write_plots(tmp_path / "ck.pt", tmp_path / "out", text=text, rank="inside_quotes", top=3)
    printed = capsys.readouterr().out
    assert "units of l0 ranked by inside_quotes" in printed
    html_file = next(p for p in written if p.suffix == ".html")
    assert html_file.read_text().count("<span") == len(text)
    assert all(png_size(p)[0] > 0 for p in written if p.suffix == ".png")

    # the ranking: |Pearson correlation| of each unit's cell state with the feature, as numpy computes it
    example = visualize.make_example(task, text)
    rec = visualize.gate_recordings(task, model, example)["encoder.lstm"]
    cells = visualize.activations(rec, "l0", "cell")
    feature = visualize.text_feature(text, "inside_quotes")
    assert visualize.text_feature('a"bc"d', "inside_quotes").tolist() == [0, 1, 1, 1, 0, 0]  # from the opening quote
    assert visualize.text_feature("a(b)c", "inside_parens").tolist() == [0, 1, 1, 0, 0]
    ranked = visualize.rank_units(cells, feature, top=8)
    expected = [torch.corrcoef(torch.stack([cells[:, u].double(), feature]))[0, 1].item() for u in range(8)]
    assert sorted(abs(s) for _, s in ranked) == pytest.approx(sorted(abs(e) for e in expected))
    assert all(s == pytest.approx(expected[u]) for u, s in ranked)
    assert visualize.rank_units(cells)[0][0] == int(cells.var(0).argmax())
    assert visualize.text_feature("ab\ncd", "line_position").tolist() == [0, 1, 2, 0, 1]

    for argv, message in [
        ([str(tmp_path / "ck.pt"), "--text", "hi", "--unit", "l5:cell:0"], "no layer 'l5'; this LSTM has l0"),
        ([str(tmp_path / "ck.pt"), "--text", "hi", "--unit", "l0:gain:0"], "no gate 'gain'"),
        ([str(tmp_path / "ck.pt"), "--text", "hi", "--unit", "l0:f:8"], "unit 8 out of range"),
        ([str(tmp_path / "ck.pt")], "needs an input"),
        ([str(tmp_path / "none.pt")], "no checkpoint file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            visualize.main([*argv, "--out", str(tmp_path / "err")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_tagger_sentence_gates_are_the_models(compose_cfg, tmp_path):
    task, model = checkpoint(
        compose_cfg, tmp_path / "ck.pt", "task=tag_synthetic", "model=tagger", "task.train_size=64",
        "task.val_size=8", "task.test_size=8", "model.hidden_size=8", "model.embedding_dim=8", "model.num_layers=1",
    )  # fmt: skip
    _, loaded_task, loaded = visualize.load(tmp_path / "ck.pt")
    words = [*task.vocab.tokens[2:6], "never-seen"]
    example = visualize.make_example(loaded_task, " ".join(words))
    assert example.labels == words
    rec = visualize.gate_recordings(loaded_task, loaded, example)["encoder.lstm"]
    assert rec.names == ["l0", "l0_reverse"]
    gates = model.encoder(task.encode(words)[None], return_gates=True)[2]
    for k, layer in enumerate(rec.names):
        torch.testing.assert_close(visualize.activations(rec, layer, "f"), gates[k][0, :, 1])


# ---- GRU and RNN baselines ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_baseline_cells_train_end_to_end(compose_cfg, tmp_path, cell):
    result = train(compose_cfg("debug=fast", f"model.cell={cell}", "trainer.max_epochs=1"), tmp_path)
    assert result["step"] == 8 and 0 <= result["test"]["acc"] <= 1
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    gate_rows = {"gru": 3, "rnn": 1}[cell]
    assert state["model"]["encoder.lstm.weight_hh_l0"].shape == (gate_rows * 16, 16)
    with pytest.raises(ConfigError, match=r"^trainer\.probe_every_n_steps: .*has none \(TorchGRU|TorchRNN"):
        train(compose_cfg("debug=fast", f"model.cell={cell}", "trainer.probe_every_n_steps=1"), tmp_path / "p")
    with pytest.raises(visualize.UsageError, match=f"model.cell={cell} model: only an LSTM has gates"):
        visualize.load(tmp_path / "checkpoints/last.pt")


def test_baseline_cells_handle_padding_like_packed_sequences():
    from lstm_train.nn import build_recurrent

    torch.manual_seed(0)
    for cell in ("gru", "rnn"):
        rnn = build_recurrent(cell, "fast", 3, 4, num_layers=2, batch_first=True, bidirectional=True)
        x = torch.randn(2, 5, 3)
        out, (h_n, c_n) = rnn(x, lengths=[5, 2])
        alone, (h_alone, _) = rnn(x[1:, :2])  # the short sequence without its padding
        torch.testing.assert_close(out[1, :2], alone[0])
        torch.testing.assert_close(h_n[:, 1], h_alone[:, 0])
        assert torch.all(out[1, 2:] == 0) and torch.all(c_n == 0)
        with pytest.raises(ValueError, match="has no gates"):
            rnn(x, return_gates=True)


# ---- the long-range sweep plot -----------------------------------------------------------------------
def test_plot_long_range_reads_a_sweep_dir(tmp_path, capsys, compose_cfg):
    accs = {("lstm", 10): [0.99, 0.97], ("lstm", 100): [0.95], ("rnn", 10): [0.9], ("rnn", 100): [0.74]}
    job = 0
    for (cell, n), values in accs.items():
        for acc in values:
            cfg = compose_cfg("experiment=long_range", f"model.cell={cell}", f"task.seq_len={n}")
            (tmp_path / f"{job}/.hydra").mkdir(parents=True)
            OmegaConf.save(cfg, tmp_path / f"{job}/.hydra/config.yaml")
            (tmp_path / f"{job}/metrics.json").write_text(json.dumps({"test": {"acc": acc, "loss": 0.1}}))
            job += 1
    (tmp_path / "unfinished/.hydra").mkdir(parents=True)  # a job without metrics.json is left out
    long_range.main([str(tmp_path), "--out", str(tmp_path / "plot.png")])
    out = capsys.readouterr().out
    assert "| 10 | 0.9800 (n=2) | 0.9000 |" in out and "| 100 | 0.9500 | 0.7400 |" in out
    assert png_size(tmp_path / "plot.png") == (650, 420)
    with pytest.raises(SystemExit):
        long_range.main([str(tmp_path / "unfinished")])
    assert "holds no finished first_last job" in capsys.readouterr().err
