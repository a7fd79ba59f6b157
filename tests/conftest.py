"""Fixtures: composing configs the way the CLI does, a quiet CPU, our LSTM's code paths, and sweep dirs."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lstm_train.config import CONF_DIR
from lstm_train.nn import compiled
from lstm_train.train import train
from lstm_train.training.checkpoints import Checkpoints
from tests.helpers import CMUDICT, SEEDED, TEXT, Run, char_cfg, compose_config, dead_pid, make_job, threads
from tests.paths import on_path

CONF = str(CONF_DIR)


@pytest.fixture
def compose_cfg() -> Iterator[Callable[..., DictConfig]]:
    """compose_cfg("model.hidden_size=8", ...) -> the config lstm-train would run with those overrides."""
    with initialize_config_dir(CONF, version_base="1.3"):
        yield lambda *overrides, **kwargs: compose("config", overrides=list(overrides), **kwargs)


@pytest.fixture
def killed_after_first_checkpoint() -> Callable[[DictConfig, Path], None]:
    """killed(cfg, run_dir): train, stopped by a KeyboardInterrupt right after its first checkpoint is written."""

    def killed(cfg: DictConfig, run_dir: Path) -> None:
        save = Checkpoints.save

        def save_then_crash(self: Checkpoints, *args: object) -> None:
            save(self, *args)
            raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(Checkpoints, "save", save_then_crash)
            train(cfg, run_dir)

    return killed


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and a busy 2-core machine does not stall them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def compiled_kernel():
    """The compiled LSTM kernel, built once per session (the first time on a machine: about 30 s). Skips only
    where there is no toolchain to build it; a failed build with one is a failure."""
    try:
        return compiled.load()
    except RuntimeError as e:
        if shutil.which("ninja") is None or shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip(f"no C++ toolchain for the compiled LSTM kernel: {e}")
        raise


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The LSTM backend to build for a code path of tests.paths.PATHS, taken as an indirect parameter
    (``@pytest.mark.parametrize("backend", PATHS, indirect=True)``), with that path selected for the test."""
    if request.param == "compiled":
        request.getfixturevalue("compiled_kernel")
    with on_path(request.param) as backend:
        yield backend


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """tiny.txt, holding tests.helpers.TEXT: the data of a text_char run."""
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A debug-sized text_char run, trained once for the tests of the task and of lstm-generate. The text it
    read is removed afterwards: what reads its checkpoint must find the vocabulary in it alone."""
    data = tmp_path_factory.mktemp("char_run") / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    overrides = ("task.seq_len=16", "task.train_size=64")
    cfg = char_cfg(compose_config, data, *overrides)
    with threads(1):
        metrics = train(cfg, data.parent / "run")
    data.unlink()
    return Run(data.parent / "run", cfg, metrics, data, overrides)


@pytest.fixture(scope="session", params=["sort", "g2p"])
def seq2seq_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A debug-sized model=seq2seq run with beam search, on task=sort and on task=g2p (a small cmudict), each
    trained once for the tests of the task and of lstm-predict."""
    root = tmp_path_factory.mktemp(f"seq2seq_{request.param}")
    data = root / "dict.txt" if request.param == "g2p" else None
    extra = ()
    if data is not None:
        data.write_text(CMUDICT)
        extra = (f"task.path={data}", "task.val_size=null")
    overrides = ("model=seq2seq", f"task={request.param}", "debug=fast", "model.beam_size=2",
                 "trainer.progress_bar=false", *extra)
    cfg = compose_config(*overrides)
    with threads(1):
        metrics = train(cfg, root / "run")
    return Run(root / "run", cfg, metrics, data, overrides)


# ---- sweep dirs as lstm-train -m leaves them -------------------------------------------------------------
@pytest.fixture
def sweep(tmp_path) -> Path:
    """Six jobs: three completed (one of them without a status file, as before job status files existed), one
    failed, one killed hard (its pid gone), one still running (its pid alive: this test's parent)."""
    host = socket.gethostname()
    done = {"status": "completed", "host": host, "pid": 1, "started": 0.0, "wall_s": 4.5}
    make_job(tmp_path, 0, ["optim.lr=0.001", "debug=fast"], best=0.80, status=done, ended={"stopped_early": True})
    make_job(tmp_path, 1, ["optim.lr=0.01", "debug=fast"], best=0.95, status=done)
    make_job(tmp_path, 2, ["optim.lr=0.1", "debug=fast"], status={
        "status": "failed", "host": host, "pid": 1, "started": 0.0, "wall_s": 1.0,
        "error": "training diverged: train/loss is nan at step 20; try a lower optim.lr"})
    make_job(tmp_path, 3, ["optim.lr=0.003", "debug=fast"], best=0.90, ended={"max_time_reached": True})
    make_job(tmp_path, 4, ["optim.lr=1.0", "debug=fast"],
             status={"status": "running", "host": host, "pid": dead_pid(), "started": 0.0})
    make_job(tmp_path, 5, ["optim.lr=0.3", "debug=fast"],
             status={"status": "running", "host": host, "pid": os.getppid(), "started": 0.0})
    (tmp_path / ".submitit").mkdir()  # not a job dir
    return tmp_path


@pytest.fixture
def seeded(tmp_path) -> Path:
    """Four variants x three seeds: tests.helpers.SEEDED's values; nog's seed 2 failed, cifg's still running."""
    host = socket.gethostname()
    num = 0
    for variant in ("v", "nfg", "nog", "cifg"):
        for seed in range(3):
            overrides = [f"model.variant={variant}", f"trainer.seed={seed}", "debug=fast"]
            if (variant, seed) in SEEDED:
                best, acc = SEEDED[variant, seed]
                make_job(tmp_path, num, overrides, best=best, test={"acc": acc, "loss": 1 - acc},
                         status={"status": "completed", "host": host, "pid": 1, "started": 0.0, "wall_s": 2.0})
            elif variant == "nog":
                make_job(tmp_path, num, overrides, status={"status": "failed", "host": host, "pid": 1,
                                                           "started": 0.0, "error": "RuntimeError: boom"})
            else:
                make_job(tmp_path, num, overrides, status={"status": "running", "host": host, "pid": os.getppid(),
                                                           "started": 0.0})
            num += 1
    return tmp_path
