"""The run dir: a refused run changes nothing and leaves no new dir; one process at a time holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_train.errors import ConfigError, command
from lstm_train.runs import rundir
from tests.helpers import ENV, LSTM_TRAIN, digest


def lstm_train(*args: str, cwd: Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run([LSTM_TRAIN, "debug=fast", "trainer.progress_bar=false", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run, made by the console script (so with .hydra/ and train.log)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = lstm_train(f"hydra.run.dir={run}", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_a_refused_run_changes_nothing_of_the_run_it_refuses(finished, tmp_path):
    before = digest(finished)
    proc = lstm_train(f"hydra.run.dir={finished}", "model.hidden_size=99", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == (f"lstm-train: error: hydra.run.dir: {finished} already holds a run's checkpoints "
                              "(last.pt, best.pt), which this run would overwrite; continue that run with "
                              "trainer.resume=auto, or choose another hydra.run.dir")
    assert digest(finished) == before  # .hydra/config.yaml still says the run's own hidden size, train.log as it was


def test_a_resume_refused_for_a_checkpoint_that_does_not_fit_changes_nothing_either(finished, tmp_path):
    # Refused only once the job reads the checkpoint, after Hydra wrote .hydra/ and train.log: they are put back.
    before = digest(finished)
    proc = lstm_train(f"hydra.run.dir={finished}", "trainer.resume=auto", "model.hidden_size=99", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"lstm-train: error: trainer.resume: {finished}/checkpoints/last.pt holds a "
                                     "different model: model.hidden_size")
    assert digest(finished) == before


def test_a_run_dir_with_metrics_but_no_checkpoints_is_refused_too(finished, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_bytes((finished / "metrics.json").read_bytes())
    (run / "events.out.tfevents.1").write_bytes(b"curves")
    before = digest(run)
    proc = lstm_train(f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc) == (f"lstm-train: error: hydra.run.dir: {run} already holds a run's metrics.json "
                              "(without checkpoints), which this run would overwrite; choose another hydra.run.dir")
    assert digest(run) == before
    assert proc.stdout == ""  # refused before Hydra started the job: not even a log line


@pytest.mark.parametrize("args", [["optim.lr=-1"], ["task=text_char", "model=char", "task.path=nope.txt"],
                                  ["optim.betas=[0.9]"]],
                         ids=["a bad value", "a missing data file", "one Adam beta"])
def test_a_refused_run_leaves_no_new_dir(tmp_path, args):
    # A bad value is refused before Hydra makes the dir; a missing file only when the task reads it, in the job.
    proc = lstm_train(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_line(proc).startswith("lstm-train: error: ")
    assert list(tmp_path.iterdir()) == []  # not even outputs/runs/


# (tests/test_config.py holds the kinds of interpolation that fail; here, that none gets a run dir)
@pytest.mark.parametrize(("arg", "key"), [
    ("model.hidden_size=${oops}", "model.hidden_size"),
    ("hydra.job.name=${oops}", "hydra.job.name"), ("hydra.run.dir=runs/${oops}", "hydra.run.dir"),
])
def test_an_interpolation_that_does_not_resolve_is_refused_before_the_run(tmp_path, arg, key):
    proc = lstm_train(arg, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_line(proc).startswith(f"lstm-train: error: {key}: ")
    assert proc.stdout == ""  # no "run dir:" for a dir that is not made
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "line"), [
    (["task=reverse"], "model: model=classifier is a classification model and does not fit task=reverse"),
    (["model=tagger", "task=conll"], "task.train: needs the path of a CoNLL-U or column file; set task.train=PATH"),
])
def test_what_needs_no_data_is_refused_before_the_run_dir_is_named(tmp_path, args, line):
    proc = lstm_train(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_line(proc).startswith(f"lstm-train: error: {line}")
    assert proc.stdout == ""  # no "run dir: ..." naming a dir that is then removed
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_keeps_a_dir_that_was_there(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    proc = lstm_train("task=text_char", "model=char", "task.path=nope.txt", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert run.is_dir() and list(run.iterdir()) == []  # and nothing in it: no .hydra/, train.log or .lock


def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with rundir.claim(run, undo_if_refused=False):  # this test process is the run in it
        before = digest(run)
        proc = lstm_train(f"hydra.run.dir={run}", cwd=tmp_path)
        assert proc.returncode == 2
        assert one_line(proc).startswith(f"lstm-train: error: hydra.run.dir: {run} is in use by lstm-train (pid "
                                         f"{os.getpid()} on ")
        assert one_line(proc).endswith("; wait for that run to end (or stop it), or choose another hydra.run.dir")
        assert digest(run) == before
        # and in-process, a second claim
        with pytest.raises(ConfigError, match="is in use by lstm-train"), rundir.claim(run, undo_if_refused=False):
            pass
    rundir.check_free(run)  # released with the run
    with rundir.claim(run, undo_if_refused=False):
        pass


def test_a_run_dir_is_released_when_its_process_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom lstm_train.runs import rundir\n"
         f"with rundir.claim(Path({str(run)!r}), False):\n    print('held', flush=True)\n    time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"pid {holder.pid} on "):
            rundir.check_free(run)
    finally:
        holder.kill()
        holder.wait()
    rundir.check_free(run)


def test_a_run_that_passed_the_check_as_another_took_the_lock_writes_nothing(tmp_path):
    """Two runs started at once on one dir both pass check_free; the second to lock is refused before Hydra
    writes its .hydra/ and train.log into the first one's dir (the lock is taken before Hydra's job starts)."""
    run = tmp_path / "run"
    with rundir.claim(run, undo_if_refused=False):  # the first run, holding the dir
        (run / "train.log").write_text("the first run's log\n")
        before = digest(run)
        proc = subprocess.run(  # the second, as if it had checked the dir a moment before the first locked it
            [sys.executable, "-c", "import sys\nfrom lstm_train.runs import rundir\nfrom lstm_train import train\n"
             "rundir.check_free = lambda out_dir: None\n"
             f"sys.argv = ['lstm-train', 'debug=fast', 'hydra.run.dir={run}']\ntrain.main()"],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        assert one_line(proc).startswith(f"lstm-train: error: hydra.run.dir: {run} is in use by lstm-train (pid ")
        assert digest(run) == before


def test_resume_auto_in_a_time_stamped_dir_warns_that_it_never_resumes(tmp_path):
    proc = lstm_train("trainer.resume=auto", "trainer.max_steps=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("trainer.resume=auto: hydra.run.dir is named after the time it starts "
            "(outputs/runs/${now:%Y-%m-%d_%H-%M-%S.%f}_${name}), so it never holds a last.pt to resume and every "
            "start trains afresh; set hydra.run.dir=DIR, the same on every start") in proc.stdout


def test_printed_commands_name_the_script_by_path_when_it_is_not_on_path(monkeypatch):
    bin_dir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command("lstm-train") == str(bin_dir / "lstm-train")
    assert command("tensorboard") == str(bin_dir / "tensorboard")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # an activated venv
    assert command("lstm-train") == "lstm-train"
    assert command("tensorboard") == "tensorboard"
