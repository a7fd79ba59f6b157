"""A fifth model added from outside the package, with no edit to lstm_train: its module and its YAML
(tests/toy_model/), trained end to end by lstm-train, checked against its own schema, plotted by lstm-visualize
(which imports its module only when told to with --import).

Everything runs in one subprocess (tests/catalogue_driver.py), with the module's directory on PYTHONPATH and its
conf/ on Hydra's search path: this process's registry never sees the toy model, so the config tests still
match conf/ option for option.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests import TESTS
from tests.helpers import ENV

TOY = TESTS / "toy_model"


def run_commands(commands: list[list[str]], cwd: Path) -> list[dict]:
    """The results of the command lines, run in one process with the toy model's directory on PYTHONPATH."""
    env = {**ENV, "PYTHONPATH": str(TOY)}
    proc = subprocess.run([sys.executable, str(TESTS / "catalogue_driver.py")], input=json.dumps(commands),
                          capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"code"')]


def test_a_fifth_model_is_one_module_and_one_yaml(tmp_path):
    common = ["model=bag", "debug=fast", f"hydra.searchpath=[file://{TOY / 'conf'}]", "trainer.progress_bar=false"]
    run = tmp_path / "run"
    commands = [
        ["lstm-train", *common, f"hydra.run.dir={run}"],
        ["lstm-train", *common, "model.pool=sum", f"hydra.run.dir={tmp_path / 'bad'}"],
        ["lstm-train", *common, "task=tag_synthetic", f"hydra.run.dir={tmp_path / 'misfit'}"],
        ["lstm-visualize", str(run / "checkpoints/best.pt"), "--out", str(tmp_path / "gates"), "--import",
         "bag_of_states"],
    ]
    trained, bad, misfit, plotted = run_commands(commands, tmp_path)

    assert trained["code"] == 0 and trained["traceback"] is None, trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 16 and 0 <= metrics["test"]["acc"] <= 1
    state = torch.load(run / "checkpoints/best.pt", weights_only=True)
    model = state["config"]["model"]
    assert model["_target_"] == "bag_of_states.BagOfStates" and model["pool"] == "mean"
    assert state["model"]["head.weight"].shape == (2, 16)  # debug=fast: hidden 16, mean over one direction

    # its own key is checked by its own schema, with the one line any model's mistake gets
    assert bad["code"] == 2
    assert bad["stderr"].strip() == "lstm-train: error: model.pool: must be one of mean, max; got 'sum'"
    assert misfit["code"] == 2 and misfit["stderr"].strip().startswith(
        "lstm-train: error: model: model=bag is a classification model and does not fit task=tag_synthetic")
    # the checkpoint names its module, but only the user's --import may import it (in a fresh process: here the
    # training above has imported it)
    unnamed_dir = tmp_path / "unnamed"
    (unnamed,) = run_commands([["lstm-visualize", str(run / "checkpoints/best.pt"), "--out", str(unnamed_dir)]],
                              tmp_path)
    assert unnamed["code"] == 2 and unnamed["stderr"].strip().endswith(
        "model._target_: bag_of_states.BagOfStates is outside lstm_train and a checkpoint imports nothing by "
        "itself; if you trust that code, pass --import bag_of_states")
    assert not unnamed_dir.exists()
    assert plotted["code"] == 0 and (tmp_path / "gates/gates_encoder.lstm.l0.png").is_file(), plotted


def test_help_describes_its_own_keys(tmp_path):
    env = {**ENV, "PYTHONPATH": str(TOY)}
    proc = subprocess.run([sys.executable, "-m", "lstm_train.train", "model=bag",
                           f"hydra.searchpath=[file://{TOY / 'conf'}]", "--help"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  pool: mean "))
    end = next(i for i in range(at + 1, len(lines)) if not lines[i].lstrip().startswith("#"))  # wrapped at 100
    about = " ".join(line.partition("# ")[2] for line in lines[at:end])
    # its schema's description, then the choices its check allows
    assert about == "How the LSTM's outputs over each sequence's real steps are pooled. One of mean, max."
