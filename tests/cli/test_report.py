"""What the console script reports, and how it ends (lstm_train/cli/report.py); the one-line errors of every user
mistake are run through it in tests/test_catalogue.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ENV

# lstm-train's main with an exit made slow on purpose: in an atexit handler, or in the interpreter's teardown
# (an object of __main__ deleted there, when Python has given SIGINT back its default action). The marker says
# the exit got there; what the slow part uses is bound beforehand, as the teardown clears module globals.
SLOW_EXIT = """
import atexit, os, sys, time
from lstm_train.train import main

where, marker = sys.argv.pop(1), os.open(sys.argv.pop(1), os.O_WRONLY | os.O_CREAT)

def slow(write=os.write, marker=marker, sleep=time.sleep):
    write(marker, b"reached")
    sleep(60)

class DeletedInTheTeardown:
    def __del__(self, slow=slow):
        slow()

if where == "atexit":
    atexit.register(slow)
else:
    kept_until_the_teardown = DeletedInTheTeardown()
main()
"""


@pytest.mark.parametrize("where", ["atexit", "teardown"])
def test_a_second_sigint_while_a_stopped_run_exits_exits_at_once(tmp_path, where):
    marker, run_dir = tmp_path / "reached", tmp_path / "run"
    args = ["debug=fast", "task.train_size=4096", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    run = subprocess.Popen([sys.executable, "-c", SLOW_EXIT, where, str(marker), *args], env=ENV, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints/last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)  # stops the run at a step, with last.pt saved there
    while not (marker.exists() and marker.read_text()) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)  # the exit has reached the slow part, or has ended
    try:
        _, stderr = run.communicate(timeout=20)  # not the minute the slow part would take
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[0].startswith("lstm-train: interrupted (SIGINT) at step "), lines[0]
    step = int(lines[0].split(" at step ")[1].split("/")[0])
    assert torch.load(last, weights_only=True)["progress"]["step"] == step
    # The exit handlers run (the second press came in one); the teardown, a second of freeing PyTorch, is skipped.
    assert marker.read_text() == ("reached" if where == "atexit" else "")


# lstm-train's main where a Ctrl-C in the test comes while a C extension is imported, which pybind11 reports as its
# own error, caused by ours (matplotlib's ft2font, first imported for the test's figures, does).
WRAPPED_IN_THE_TEST = """
import os, signal, time
from lstm_train.train import main
from lstm_train.training.evaluation import Evaluator

def test(self, *args):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
    except BaseException as e:
        raise ImportError("initialization failed") from e

Evaluator.test = test
main()
"""


def test_a_stop_that_library_code_wrapped_in_its_own_error_is_reported_as_the_stop(tmp_path):
    run = subprocess.run([sys.executable, "-c", WRAPPED_IN_THE_TEST, "debug=fast", f"hydra.run.dir={tmp_path}"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 130, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[0].startswith("lstm-train: interrupted (SIGINT) in the test, after training to step 16/16 "), lines[0]
    assert "; resume with: " in lines[0]
