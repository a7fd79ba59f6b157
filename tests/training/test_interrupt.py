"""Ctrl-C and SIGTERM: a clean stop at any step, last.pt at that step, and a resume to the same numbers;
``trainer.resume=auto``; resuming with a config that does not fit; run dirs that hold another run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstm_train.config import ConfigError
from lstm_train.train import train
from lstm_train.training import distributed
from lstm_train.training.data_parallel import agreed
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import ECHO_SECONDS, Interrupted, StopRequest
from tests import helpers
from tests.helpers import LSTM_TRAIN, TEXT, train_losses, without_time
from tests.training.callbacks import SignalInStep

pytestmark = pytest.mark.usefixtures("one_thread")

# PATH without the venv's bin, as in a shell that has not activated it.
PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(LSTM_TRAIN).parent)
ENV = {**helpers.ENV, "PATH": PATH}




CASES = {
    # mid-interval: steps since the last log and the last evaluation are in flight
    "classifier": ["trainer.log_every_n_steps=3", "model.dropout=0.3"],
    # a language model that carries its (h, c) from batch to batch: the carried state must survive
    "char-bptt": ["task=text_char", "model=char", "task.bptt=true", "task.seq_len=16", "task.train_size=64",
                  "task.val_fraction=0.1", "task.test_fraction=0.1", "trainer.batch_size=8", "task.sample_length=0"],
    # padded token batches, span metrics accumulated between evaluations
    "tagger": ["model=tagger", "task=tag_synthetic", "task.train_size=256", "model.hidden_size=8"],
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_the_step_and_resumes_to_the_same_numbers(
    compose_cfg, tmp_path, text_file, case, signum
):
    overrides = ["debug=fast", "trainer.progress_bar=false", *CASES[case]]
    if case == "char-bptt":
        overrides.append(f"task.path={text_file}")
    cfg = compose_cfg(*overrides)
    uninterrupted = train(cfg, tmp_path / "a")
    total = uninterrupted["step"]

    stop_at = total // 2 + 1  # not an evaluation step: the log interval and the train metrics are half-full
    with pytest.raises(Interrupted) as stopped:
        train(cfg, tmp_path / "b", callbacks=[SignalInStep(stop_at, signum)])
    assert stopped.value.exit_code == 128 + signum
    assert str(stopped.value).startswith(f"interrupted ({signal.Signals(signum).name}) at step {stop_at}/{total}")
    last = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert last["progress"]["step"] == stop_at
    assert not (tmp_path / "b/metrics.json").exists()  # no test on a stopped run
    assert signal.getsignal(signum) is not None  # the handlers were given back

    # Resumed into the same run dir, as a requeued job does with trainer.resume=auto.
    resumed = train(compose_cfg(*overrides, "trainer.resume=auto"), tmp_path / "b")
    assert without_time(resumed) == without_time(uninterrupted)
    a, b = dict(train_losses(tmp_path / "a")), dict(train_losses(tmp_path / "b"))
    assert a == b  # every train/loss point, the one whose interval the interruption split included


def test_resume_auto_starts_afresh_without_a_checkpoint(compose_cfg, tmp_path):
    result = train(compose_cfg("debug=fast", "trainer.resume=auto"), tmp_path)
    assert result["step"] == 16


def test_a_run_dir_with_another_runs_checkpoints_is_refused(compose_cfg, tmp_path):
    train(compose_cfg("debug=fast"), tmp_path)
    before = (tmp_path / "checkpoints/last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"^hydra\.run\.dir: .* already holds a run's checkpoints \(last\.pt, "
                                          r"best\.pt\).*trainer\.resume=auto"):
        train(compose_cfg("debug=fast", "optim.lr=0.1"), tmp_path)
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hidden_size=32"], r"holds a different model: model\.hidden_size \(checkpoint 16, now 32\); "
                                   r"resume with the checkpoint's values"),
        (["model.num_layers=1", "model.bidirectional=true"],
         r"holds a different model: model\.bidirectional \(checkpoint false, now true\), model\.num_layers "
         r"\(checkpoint 2, now 1\)"),
        (["task.input_size=3"], r"holds a different model: task\.input_size \(checkpoint 10, now 3\)"),
        (["model=tagger", "task=tag_synthetic"], r"was trained on task=first_last, not task=tag_synthetic"),
    ],
)
def test_resume_with_a_config_that_does_not_fit_names_the_keys(compose_cfg, tmp_path, overrides, message):
    train(compose_cfg("debug=fast"), tmp_path / "a")
    checkpoint = tmp_path / "a/checkpoints/last.pt"
    cfg = compose_cfg("debug=fast", *overrides, f"trainer.resume={checkpoint}")
    with pytest.raises(ConfigError, match=r"^trainer\.resume: .*" + message) as error:
        train(cfg, tmp_path / "b")
    assert "\n" not in str(error.value)


def test_resume_with_other_data_names_the_vocabulary(compose_cfg, tmp_path, text_file):
    base = ["debug=fast", "task=text_char", "model=char", "task.seq_len=16", "task.val_fraction=0.1",
            "task.test_fraction=0.1", "task.sample_length=0"]
    train(compose_cfg(*base, f"task.path={text_file}"), tmp_path / "a")
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    cfg = compose_cfg(*base, f"task.path={other}", f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}")
    expected = (r"^trainer\.resume: .* was trained on other data: its vocab differ from this data's "
                r"\(task\.path \(checkpoint .*tiny\.txt, now .*other\.txt\)\)")
    with pytest.raises(ConfigError, match=expected):
        train(cfg, tmp_path / "b")


# ---- the command line: exit status, one line, the printed command resumes --------------------------------
def test_sigterm_from_outside_then_the_printed_command_resumes(tmp_path):
    # 2 epochs of 128 steps; the signal comes once the first epoch's checkpoint exists, mid-way in the second.
    args = ["debug=fast", "task.train_size=4096", "trainer.progress_bar=false"]
    reference = subprocess.Popen([LSTM_TRAIN, *args, f"hydra.run.dir={tmp_path / 'a'}"], env=ENV, cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen([LSTM_TRAIN, *args, f"hydra.run.dir={tmp_path / 'b'}"], env=ENV, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "b/checkpoints/last.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[0].startswith("lstm-train: interrupted (SIGTERM) at step "), lines[0]
    step = int(lines[0].split(" at step ")[1].split("/")[0])
    assert 128 <= step < 256
    assert torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["progress"]["step"] == step
    # The command as printed runs (pasted into a shell), the console script by its full path: not on this PATH.
    assert f"resume with: {LSTM_TRAIN} " in lines[0]
    command = lines[0].split("resume with: ")[1]
    resumed = subprocess.run(command, shell=True, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    a, b = (json.loads((tmp_path / run_dir / "metrics.json").read_text()) for run_dir in ("a", "b"))
    assert without_time(a) == without_time(b)
    assert f"run dir: {tmp_path / 'b'}" in (tmp_path / "b/train.log").read_text()


# lstm-train's main with an evaluation that goes on until it is interrupted (pass after pass of the real one), as a
# long one does, and a marker of its start: the two presses land in it on a machine of any speed.
ENDLESS_EVALUATION = """
import sys
from pathlib import Path
from lstm_train.train import main
from lstm_train.training.evaluation import Evaluator

marker, evaluate = Path(sys.argv.pop(1)), Evaluator.evaluate

def endless(self, model, split):
    marker.touch()
    while True:
        evaluate(self, model, split)

Evaluator.evaluate = endless
main()
"""


@pytest.mark.slow
def test_a_second_sigint_stops_at_once(tmp_path):
    # An evaluation is where a user presses Ctrl-C twice: the first press waits for the step (its evaluation) to end.
    marker, run_dir = tmp_path / "evaluating", tmp_path / "run"
    args = ["debug=fast", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    run = subprocess.Popen([sys.executable, "-c", ENDLESS_EVALUATION, str(marker), *args], env=ENV, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    time.sleep(ECHO_SECONDS + 0.5)  # a second press, not the echo of the first
    assert run.poll() is None, run.communicate()[1][-2000:]  # still in the evaluation, stopping after it
    run.send_signal(signal.SIGINT)
    try:
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("lstm-train: interrupted again (SIGINT): stopped at once")
    assert "SIGINT received: stopping after this step" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_to_the_same_numbers(compose_cfg, tmp_path):
    # submitit's local executor requeues a job the way SLURM does: its preemption signal (USR2) makes the
    # job save last.pt and exit for a requeue, and the requeued job continues with trainer.resume=auto.
    args = ["debug=fast", "task.train_size=4096", "trainer.progress_bar=false"]
    single = train(compose_cfg(*args), tmp_path / "one")
    sweep = tmp_path / "sweep"
    run = subprocess.Popen([LSTM_TRAIN, "-m", "hydra/launcher=submitit_local", *args, "trainer.resume=auto",
                            f"hydra.sweep.dir={sweep}"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 300
    while not list(sweep.glob("0_*/checkpoints/last.pt")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    jobs = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_submitit_job(p, sweep)]
    assert len(jobs) == 1, jobs
    os.kill(jobs[0], signal.SIGUSR2)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    (job,) = sweep.glob("0_*")
    log = (job / "train.log").read_text()
    assert "saving last.pt after this step, then requeueing" in log and "resumed from" in log
    assert without_time(json.loads((job / "metrics.json").read_text())) == without_time(single)


def _is_submitit_job(proc: Path, sweep: Path) -> bool:
    try:
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "submitit.core._submit" in command and str(sweep) in command


def test_a_signal_during_the_ranks_agreement_is_kept_for_the_next(monkeypatch):
    """Data-parallel ranks act on the requests they agreed on; one that reaches a rank while they agree (its
    handler runs inside the collective) must not be overwritten by the agreed 'no request'."""
    stop = StopRequest()

    def agree_while_a_signal_comes(signum, save, late):
        stop.signum = signal.SIGTERM  # the handler, during the collective
        return None, False, late  # what the ranks had before it

    monkeypatch.setattr(distributed, "agreed_request", agree_while_a_signal_comes)
    assert agreed(stop, World(rank=1, size=2)) == (None, False, False)  # not acted on alone at this step...
    assert stop.signum == signal.SIGTERM  # ...but agreed on at the next


def test_exit_after_stop_called_twice_exits_with_the_last_status_and_runs_each_exit_handler_once():
    script = ("import atexit\nfrom lstm_train.training.interrupt import exit_after_stop\n"
              "atexit.register(print, 'early handler')\nexit_after_stop(130)\nexit_after_stop(143)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["early handler"]
