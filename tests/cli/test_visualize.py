"""lstm-visualize: the gates it plots are the model's, its PNGs and where they go, a char model's text colouring
and unit ranking, a tagger's sentence, and one line for each mistake."""

from __future__ import annotations

import pytest
import torch

from lstm_train.cli import visualize
from lstm_train.config import to_container
from lstm_train.models import build_model
from lstm_train.runs.checkpoint import save_checkpoint
from lstm_train.tasks import build_task
from lstm_train.training.probe import GATES
from tests.helpers import png_size

pytestmark = pytest.mark.usefixtures("one_thread")

PLOTS = ["gates_encoder.lstm.l0.png", "gates_encoder.lstm.l1.png", "saturation.png", "grad_highway_encoder.lstm.png"]
QUOTES = 'And he said, "Let there be light" (and it was so).\nThe end of the line.\n' * 30


def checkpoint(compose_cfg, path, *overrides):
    """A checkpoint as lstm-train writes it (config, task state, weights) of a freshly initialised model."""
    cfg = compose_cfg(*overrides)
    torch.manual_seed(0)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task)
    save_checkpoint(path, {"model": model.state_dict(), "config": to_container(cfg), "task": task.state_dict()})
    return task, model


@pytest.fixture
def char_checkpoint(compose_cfg, tmp_path):
    """(task, model, path) of a one-layer char model's checkpoint, on a text with quotes and parentheses."""
    text_file = tmp_path / "t.txt"
    text_file.write_text(QUOTES)
    task, model = checkpoint(
        compose_cfg, tmp_path / "ck.pt", "task=text_char", "model=char", f"task.path={text_file}",
        "task.seq_len=16", "model.hidden_size=8", "model.embedding_dim=8", "model.num_layers=1",
    )  # fmt: skip
    return task, model, tmp_path / "ck.pt"


def test_visualiser_gates_are_the_models(compose_cfg, tmp_path):
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


def test_visualiser_plots_are_pngs_of_their_sizes(compose_cfg, tmp_path):
    checkpoint(compose_cfg, tmp_path / "ck.pt", "debug=fast")
    written = visualize.write_plots(tmp_path / "ck.pt", tmp_path / "out", seed=7)
    assert [p.name for p in written] == PLOTS
    assert png_size(written[3]) == (700, 400)
    width, height = visualize.heatmap_size(8, 16)
    assert png_size(written[0]) == (round(100 * width), round(100 * height)) == (800, 860)
    assert png_size(written[2]) == (760, 390)  # two panels of 3.6 x 3.4 inches, plus margins


def test_without_out_the_plots_go_beside_the_runs_checkpoints(compose_cfg, tmp_path):
    # not into the working directory
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint(compose_cfg, run / "checkpoints/best.pt", "debug=fast")
    visualize.main([str(run / "checkpoints/best.pt"), "--seed", "7"])
    assert sorted(p.name for p in (run / "gates").iterdir()) == sorted(PLOTS)


def test_char_model_text_colouring(char_checkpoint, tmp_path, capsys):
    _, _, ck = char_checkpoint
    text = 'He said "yes" (twice).\nOk'
    written = visualize.write_plots(ck, tmp_path / "out", text=text, rank="inside_quotes", top=3)
    printed = capsys.readouterr().out
    assert "units of l0 ranked by inside_quotes" in printed
    html_file = next(p for p in written if p.suffix == ".html")
    assert html_file.read_text().count("<span") == len(text)
    assert all(png_size(p)[0] > 0 for p in written if p.suffix == ".png")


def test_char_model_units_ranked_by_a_text_feature(char_checkpoint):
    # the ranking: |Pearson correlation| of each unit's cell state with the feature, as numpy computes it
    task, model, _ = char_checkpoint
    text = 'He said "yes" (twice).\nOk'
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


@pytest.mark.parametrize(("args", "message"), [
    (["--text", "hi", "--unit", "l5:cell:0"], "no layer 'l5'; this LSTM has l0"),
    (["--text", "hi", "--unit", "l0:gain:0"], "no gate 'gain'"),
    (["--text", "hi", "--unit", "l0:f:8"], "unit 8 out of range"),
    ([], "needs an input"),
], ids=["layer", "gate", "unit", "no-input"])
def test_a_mistake_is_one_line(char_checkpoint, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([str(char_checkpoint[2]), *args, "--out", str(tmp_path / "err")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([str(tmp_path / "none.pt"), "--out", str(tmp_path / "err")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no checkpoint file" in err and err.count("\n") == 1


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


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_a_cell_without_gates_is_refused(compose_cfg, tmp_path, cell):
    checkpoint(compose_cfg, tmp_path / "ck.pt", "debug=fast", f"model.cell={cell}")
    with pytest.raises(visualize.UsageError, match=f"model.cell={cell} model: only an LSTM has gates"):
        visualize.load(tmp_path / "ck.pt")
