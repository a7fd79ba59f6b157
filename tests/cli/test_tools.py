"""The checkpoint tools (lstm-predict, lstm-generate, lstm-visualize) as users run them: a checkpoint imports
nothing, a classifier's predictions, one-line mistakes, where the plots go, both ways of starting each tool."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lstm_train.cli import generate, predict, visualize
from lstm_train.errors import ConfigError
from lstm_train.models import MODELS
from lstm_train.registry import import_named
from lstm_train.runs.checkpoint import load_checkpoint, save_checkpoint
from lstm_train.tasks import TASKS
from lstm_train.train import train
from tests import ROOT
from tests.helpers import BIN, ENV, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

TOOLS = {"predict": predict.main, "generate": generate.main, "visualize": visualize.main}


def run(args: list[str], cwd: Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def first_last(tmp_path_factory) -> Path:
    """The best.pt of a debug-sized first_last classifier run (first_last: 10 numbers per step)."""
    out = tmp_path_factory.mktemp("first_last")
    train(compose_config("debug=fast", "trainer.progress_bar=false"), out)
    return out / "checkpoints" / "best.pt"


def crafted(source: Path, path: Path, group: str, **node: str) -> Path:
    """A copy of a checkpoint whose config.<group> has the given keys changed."""
    state = load_checkpoint(source)
    state["config"][group].update(node)
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    return path


def one_line(capsys, tool: str, argv: list[str]) -> str:
    """What a tool prints on stderr for a mistake: exactly one line, exit status 2; without the prefix."""
    with pytest.raises(SystemExit) as exit_:
        TOOLS[tool](argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lstm-{tool}: error: "), err
    return err.removeprefix(f"lstm-{tool}: error: ").strip()


# ---- a checkpoint imports nothing --------------------------------------------------------------------------
@pytest.mark.parametrize("tool", TOOLS)
def test_a_checkpoint_naming_a_module_in_the_working_directory_runs_nothing(first_last, tmp_path, tool):
    """``python -m`` puts the working directory on sys.path: a module there named by a checkpoint's _target_
    used to be imported (run) by every tool."""
    (tmp_path / "lstm_helpers.py").write_text("from pathlib import Path\nPath('IMPORTED').touch()\n")
    evil = crafted(first_last, tmp_path / "evil.pt", "task", name="mine", _target_="lstm_helpers.Mine")
    proc = run([sys.executable, "-m", f"lstm_train.cli.{tool}", str(evil), *(["1"] if tool == "predict" else [])],
               tmp_path)
    assert not (tmp_path / "IMPORTED").exists()
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lstm-{tool}: error: {evil}: task._target_: lstm_helpers.Mine is outside lstm_train and a checkpoint "
        "imports nothing by itself; if you trust that code, pass --import lstm_helpers"]


def test_a_checkpoint_naming_an_importable_module_runs_nothing_from_the_console_script(first_last, tmp_path):
    """Any importable module would do: importing ``this`` prints the Zen of Python."""
    evil = crafted(first_last, tmp_path / "evil.pt", "model", _target_="this.Classifier")
    proc = run([str(BIN / "lstm-predict"), str(evil), "1 2"], tmp_path)
    assert "Zen" not in proc.stdout and proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"lstm-predict: error: {evil}: model._target_: this.Classifier does not define model 'classifier' (that "
        "name is lstm_train.models.classifier.Classifier)"]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "first_last", "_target_": "..evil.X"}, "task._target_: '..evil.X' is not a class of a module"),
        ({"name": "first_last", "_target_": "os.system"},
         "task._target_: os.system does not define task 'first_last' (that name is "
         "lstm_train.tasks.first_last.FirstLast)"),
        ({"name": "mine", "_target_": "json.Mine"}, "task._target_: json.Mine does not define task 'mine' (that name "
         "is not registered)"),
        ({"name": "nope"}, "task.name: unknown task 'nope'; choose one of"),
        ("first_last", "task: not a task option (a mapping with a name), got str 'first_last'"),
    ],
    ids=["relative", "another-class", "unregistered", "unknown-name", "a-string"],
)
def test_a_checkpoint_names_only_registered_options(node, message):
    modules = set(sys.modules)
    with pytest.raises(ConfigError) as error:
        TASKS.named(node)
    assert str(error.value).startswith(message)
    assert set(sys.modules) == modules  # nothing was imported
    assert TASKS.named({"name": "first_last"}).name == "first_last"
    assert MODELS.named({"name": "tagger", "_target_": "lstm_train.models.tagger.Tagger"}).name == "tagger"


def test_import_names_a_module_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_models.py").write_text("LOADED = True\n")
    import_named(["my_models"])
    assert sys.modules["my_models"].LOADED
    with pytest.raises(ConfigError, match=r"--import: '\.\.x' is not a module name"):
        import_named(["..x"])
    with pytest.raises(ConfigError, match=r"--import: cannot import no_such_module_here .*; put its directory on"):
        import_named(["no_such_module_here"])


def test_a_checkpoints_strings_are_read_as_they_are(first_last, tmp_path):
    """Its config was resolved when saved: a ``${`` in it (a data path, say) is text, never an interpolation."""
    from lstm_train.runs.trained import load_trained

    odd = "runs/${x}/a\\${y} ${oc.env:HOME}"
    cfg, task, _ = load_trained(crafted(first_last, tmp_path / "odd.pt", "task", monitor=odd))
    assert cfg.task.monitor == odd and task.name == "first_last"


# ---- lstm-predict on classifiers ---------------------------------------------------------------------------
def test_predict_classifies_first_last_sequences(first_last, capsys):
    model, task, _ = predict.load(first_last)
    x, _ = task.sample(2, torch.Generator().manual_seed(0))
    lines = [" ".join(f"{v:.6f}" for v in seq.flatten().tolist()) for seq in x]
    with torch.no_grad():
        probabilities = model(torch.tensor([[float(v) for v in line.split()] for line in lines]).view(2, -1, 10))
    probabilities = probabilities.softmax(-1)
    predict.main([str(first_last), *lines])
    out = capsys.readouterr().out.splitlines()
    expected = [f"{int(p.argmax())} {float(p.max()):.3f}" for p in probabilities]
    assert out == expected

    predict.main([str(first_last), "--top", "2", "--json", lines[0].replace(" ", ", ")])  # commas too
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["label"] == expected[0].split()[0]
    assert record["probabilities"] == pytest.approx({str(k): float(p) for k, p in enumerate(probabilities[0])},
                                                    abs=1e-5)

    assert one_line(capsys, "predict", [str(first_last), lines[0], "1 2 3"]) == (
        "input 2: 3 numbers; a first_last model reads steps of 10 numbers (task.input_size): give a multiple of 10, "
        "e.g. 80 for the 8 steps it was trained on")
    assert one_line(capsys, "predict", [str(first_last), "1 x"]).startswith(
        "input 1: could not convert string to float: 'x'; a first_last input is numbers")
    assert one_line(capsys, "predict", [str(first_last), "--top", "0", lines[0]]) == (
        "--top: must be >= 1, got 0")
    assert one_line(capsys, "predict", [str(first_last), "--beam-size", "3", lines[0]]) == (
        f"--beam-size is for seq2seq models, and {first_last} holds a classifier model: leave it out")


def test_the_first_last_page_shows_how_to_feed_lstm_predict(first_last, tmp_path, capsys, monkeypatch):
    page = (ROOT / "docs/tasks/first-last.md").read_text()
    make, use = [line.split(" > ")[0].split(" < ")[0] for line in page.splitlines() if "seq.txt" in line]
    defaults = compose_config().task
    assert f"range({defaults.seq_len * defaults.input_size})" in make  # a sequence of the default run
    assert shlex.split(use)[0] == ".venv/bin/lstm-predict"
    numbers = subprocess.run([sys.executable, *shlex.split(make)[1:]], capture_output=True, text=True, check=True)
    monkeypatch.setattr("sys.stdin", io.StringIO(numbers.stdout))
    predict.main([str(first_last.parent.parent)])  # the run dir, as the page gives it
    (label, probability), = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert label in ("0", "1") and 0.5 <= float(probability) <= 1


# ---- one line for a machine's or a path's mistake ----------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("tool", TOOLS)
def test_a_device_the_machine_lacks_is_one_line(first_last, capsys, tool):
    argv = [str(first_last), *(["1"] if tool == "predict" else []), "--device"]
    assert one_line(capsys, tool, [*argv, "cuda"]) == (
        "--device cuda: this torch sees 0 CUDA device(s); use --device cpu")
    assert one_line(capsys, tool, [*argv, "tpu"]) == "--device tpu: not a device; use cpu, cuda, cuda:N or mps"


def test_visualize_out_must_be_a_writable_directory(first_last, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    assert one_line(capsys, "visualize", [str(first_last), "--out", str(tmp_path / "a_file")]) == (
        f"--out {tmp_path / 'a_file'} is a file; give a directory (made if missing)")
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert one_line(capsys, "visualize", [str(first_last), "--out", str(tmp_path / "a_file" / "sub")]) == (
        f"--out {tmp_path / 'a_file' / 'sub'}: cannot make it (Not a directory); give a writable directory")


# ---- where lstm-visualize writes ---------------------------------------------------------------------------
def test_visualize_writes_beside_a_checkpoint_outside_a_run_dir(first_last, tmp_path, capsys, monkeypatch):
    alone = tmp_path / "alone.pt"
    alone.write_bytes(first_last.read_bytes())
    assert visualize.default_out_dir(first_last) == first_last.parent.parent / "gates"  # RUN/gates
    visualize.main([str(alone)])
    assert (tmp_path / "alone_gates" / "saturation.png").is_file()  # not tmp_path's parent's gates/
    assert f"wrote {tmp_path / 'alone_gates' / 'saturation.png'}" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "alone_gates")
    monkeypatch.setattr(visualize.os, "access", lambda *_: False)  # its directory is not writable: the cwd
    assert visualize.default_out_dir(alone) == tmp_path / "alone_gates" / "alone_gates"


# ---- a run dir for its checkpoint ---------------------------------------------------------------------------
def test_the_tools_take_a_run_dir_for_the_checkpoint_it_tested(first_last, tmp_path, capsys):
    run, line = first_last.parent.parent, " ".join(["0.5"] * 80)
    predict.main([str(first_last), line])
    expected = capsys.readouterr().out
    predict.main([str(run), line])
    assert capsys.readouterr() == (expected, "")
    assert one_line(capsys, "generate", [str(run)]).startswith(f"{run} is a classifier model on first_last;")
    visualize.main([str(run), "--out", str(tmp_path / "gates")])
    assert (tmp_path / "gates" / "saturation.png").is_file()
    assert visualize.default_out_dir(run) == visualize.default_out_dir(run / "checkpoints") == run / "gates"
    for tool in TOOLS:  # a dir, but not a run's
        assert one_line(capsys, tool, [str(tmp_path), *(["1"] if tool == "predict" else [])]) == (
            f"{tmp_path} holds no checkpoints/ (not a run dir?); give a run dir or a .pt file")


def test_a_run_dir_without_best_pt_gives_its_last_pt_and_says_so(first_last, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes((first_last.parent / "last.pt").read_bytes())
    predict.main([str(tmp_path), " ".join(["0.5"] * 80)])
    out, err = capsys.readouterr()
    assert err == f"lstm-predict: note: {tmp_path} saved no best.pt: using its checkpoints/last.pt\n"
    assert len(out.splitlines()) == 1


# ---- both ways of starting a tool --------------------------------------------------------------------------
def test_python_m_visualize_writes_its_plots(first_last, tmp_path):
    proc = run([sys.executable, "-m", "lstm_train.cli.visualize", str(first_last), "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "saturation.png").is_file() and f"wrote {tmp_path / 'saturation.png'}" in proc.stdout


@pytest.mark.parametrize("tool", TOOLS)
def test_console_scripts_start_their_tool(tool, tmp_path):
    proc = run([str(BIN / f"lstm-{tool}"), "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: lstm-{tool} ")
    assert "--import MODULE" in proc.stdout
