"""Data-parallel training: N gloo processes follow the 1-process trajectory; one run dir; checkpoints move
between world sizes. Multi-process runs start real processes (a few seconds each): most are marked slow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstm_train.runs import provenance
from lstm_train.runs.checkpoint import evaluated_weights
from lstm_train.tasks import Batch
from lstm_train.tasks.seq2seq import Seq2SeqBatch
from lstm_train.train import train
from lstm_train.training.distributed import World, agreed_request, shard
from tests import helpers
from tests.helpers import BIN

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**helpers.ENV, "GLOO_SOCKET_IFNAME": "lo"}
TAGGER = ["model=tagger", "task=tag_synthetic", "task.train_size=256", "task.val_size=64", "task.test_size=64",
          "model.hidden_size=8", "trainer.batch_size=30"]  # 30: the last batch (16) splits unevenly too


def cli(*args: str, cwd: Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "lstm_train.train"] if launcher else [str(BIN / "lstm-train")]
    return subprocess.run([*command, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def assert_close_metrics(a: dict, b: dict) -> None:
    """The same run up to float rounding: counts and steps exactly, sums of floats to 1e-6."""
    assert a["step"] == b["step"] and a["best"]["step"] == b["best"]["step"]
    for split in ("train", "val", "test"):
        assert a[split].keys() == b[split].keys()
        for key in a[split]:
            assert a[split][key] == pytest.approx(b[split][key], rel=1e-5, abs=1e-6), (split, key)


def assert_close_models(a: Path, b: Path) -> None:
    """Two checkpoints' weights as trained, and as evaluated (with trainer.ema_decay, their average), up to rounding."""
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    for ma, mb in ((sa["model"], sb["model"]), (evaluated_weights(sa), evaluated_weights(sb))):
        assert ma.keys() == mb.keys()
        for name in ma:
            torch.testing.assert_close(ma[name], mb[name], rtol=1e-4, atol=1e-5, msg=name)


# ---- sharding: no processes needed --------------------------------------------------------------------------
def test_shards_are_contiguous_equal_shares_that_cover_the_batch():
    batch = Batch(torch.arange(7)[:, None].expand(7, 3), torch.arange(7), torch.tensor([3, 1, 2, 3, 3, 2, 1]))
    shares = [shard(batch, World(rank, 3)) for rank in range(3)]
    assert all(real for _, real in shares)
    assert [s.y.tolist() for s, _ in shares] == [[0, 1], [2, 3], [4, 5, 6]]
    assert torch.equal(torch.cat([s.lengths for s, _ in shares]), batch.lengths)
    assert shard(batch, World()) == (batch, True)


def test_shards_split_lists_and_keep_flags_and_give_an_empty_rank_a_dummy_row():
    batch = Seq2SeqBatch(torch.ones(2, 4), torch.zeros(2, 5), torch.tensor([4, 3]), refs=[[(1,)], [(2,)]])
    (first, real0), (second, real1), (third, real2) = (shard(batch, World(r, 3)) for r in range(3))
    assert (real0, real1, real2) == (False, True, True)  # 2 rows among 3 ranks: rank 0 has none
    assert len(first) == 1 and first.refs == [[(1,)]]  # its stand-in row, weighted zero by the trainer
    assert second.refs == [[(1,)]] and third.refs == [[(2,)]]
    assert isinstance(third, Seq2SeqBatch)


def _agreement_worker(rank: int, store: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:  # a SIGTERM reached rank 0 only, a save request rank 1 only: both act on both; rank 0's clock decides
        seen = [agreed_request(signal.SIGTERM if rank == 0 else None, False, rank == 0),
                agreed_request(None, rank == 1, rank == 1)]
        Path(results, str(rank)).write_text(json.dumps(seen))
    finally:
        torch.distributed.destroy_process_group()


def test_a_request_on_one_rank_is_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(_agreement_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    expected = [[int(signal.SIGTERM), False, True], [None, True, False]]
    assert [json.loads((tmp_path / str(rank)).read_text()) for rank in (0, 1)] == [expected, expected]


# ---- N processes against 1 ---------------------------------------------------------------------------------
def test_two_processes_follow_the_one_process_run(compose_cfg, tmp_path):
    args = ["debug=fast", "trainer.progress_bar=false", "trainer.ema_decay=0.8"]  # val and test: each rank's average
    single = train(compose_cfg(*args), tmp_path / "one")
    proc = cli(*args, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two/metrics.json").read_text())
    assert_close_metrics(two, single)
    assert_close_models(tmp_path / "two/checkpoints/last.pt", tmp_path / "one/checkpoints/last.pt")
    # one run dir, written by rank 0 alone: one event file, one log, one .hydra, one lock (the launching process's)
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1
    # and one provenance.yaml (with provenance.diff beside it from a dirty checkout), with no second start in it
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name != "provenance.diff") == [
        ".hydra", ".lock", "checkpoints", "events.out.tfevents." + next((tmp_path / "two").glob("events*")).name[20:],
        "metrics.json", "provenance.yaml", "train.log"]
    assert "resumes" not in provenance.load(tmp_path / "two")
    assert "Traceback" not in proc.stderr and "[rank 1]" not in proc.stderr


@pytest.mark.slow
def test_two_processes_follow_the_one_process_run_on_padded_tokens(compose_cfg, tmp_path):
    # Token losses are means over the global batch's real tokens, not means of per-rank means.
    single = train(compose_cfg("debug=fast", *TAGGER), tmp_path / "one")
    proc = cli("debug=fast", *TAGGER, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_metrics(json.loads((tmp_path / "two/metrics.json").read_text()), single)
    assert_close_models(tmp_path / "two/checkpoints/last.pt", tmp_path / "one/checkpoints/last.pt")


@pytest.mark.slow
def test_torchrun_trains_one_model_into_one_run_dir(compose_cfg, tmp_path):
    single = train(compose_cfg("debug=fast"), tmp_path / "one")
    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2")
    proc = cli("debug=fast", "trainer.progress_bar=false", cwd=tmp_path, launcher=torchrun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs/runs").iterdir()  # not one timestamped dir per rank
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert_close_metrics(json.loads((run_dir / "metrics.json").read_text()), single)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.backend=reference"],
        ["model.backend=torch"],
        # dropout off: each process draws its own masks, so a run with dropout cannot follow the 1-process one
        ["model=char", "model.dropout=0", "task=text_char", "task.bptt=true", "task.train_size=64",
         "trainer.batch_size=8", "task.seq_len=16", "task.sample_length=0"],
        ["model=seq2seq", "task=reverse", "task.train_size=64", "task.val_size=16", "task.test_size=16",
         "model.attention=true", "model.teacher_forcing_ratio=1.0", "trainer.batch_size=16"],
        ["model=tagger", "task=tag_synthetic", "task.train_size=64", "model.num_layers=2",
         "model.bidirectional=true"],
        ["model=tagger", "task=tag_synthetic", "task.train_size=64", "model.char_dim=4", "model.char_hidden=4",
         "trainer.batch_size=30"],  # each rank spells its own share of the batch's tokens
    ],
    ids=["reference", "torch", "char-bptt", "seq2seq-attention", "tagger-bidir", "tagger-chars"],
)
def test_every_backend_and_model_trains_data_parallel(compose_cfg, tmp_path, overrides, monkeypatch):
    args = ["debug=fast", "trainer.progress_bar=false", *overrides]
    if "task=text_char" in overrides:
        text = tmp_path / "text.txt"
        text.write_text("In the beginning God created the heaven and the earth.\n" * 40, encoding="utf-8")
        args += [f"task.path={text}", "task.val_fraction=0.1", "task.test_fraction=0.1"]
    single = train(compose_cfg(*args), tmp_path / "one")
    proc = cli(*args, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_metrics(json.loads((tmp_path / "two/metrics.json").read_text()), single)
    assert "in 2 processes on cpu (data-parallel)" in (tmp_path / "two/train.log").read_text()  # not "on cpu"


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_a_checkpoint_resumes_in_another_world_size(compose_cfg, tmp_path, first, then):
    # scheduler=none: the first part's shorter run has the same learning rates as the whole one
    args = ["debug=fast", "scheduler=none", "trainer.progress_bar=false"]
    whole = train(compose_cfg(*args), tmp_path / "whole")
    part = cli(*args, "trainer.max_epochs=1", f"trainer.devices={first}", f"hydra.run.dir={tmp_path / 'a'}",
               cwd=tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    rest = cli(*args, f"trainer.devices={then}", f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}",
               f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert_close_metrics(json.loads((tmp_path / "b/metrics.json").read_text()), whole)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["kill -TERM launcher", "Ctrl-C"])
def test_a_signal_stops_every_rank_and_the_run_resumes(compose_cfg, tmp_path, signum):
    args = ["debug=fast", "task.train_size=4096", "trainer.progress_bar=false"]
    single = train(compose_cfg(*args), tmp_path / "one")
    run = subprocess.Popen([str(BIN / "lstm-train"), *args, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'b'}"],
                           cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "b/checkpoints/last.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if signum == signal.SIGTERM:
        run.send_signal(signum)  # to the launching process only, as `kill` does: it passes it on
    else:
        os.killpg(run.pid, signum)  # to every process, as a terminal's Ctrl-C does
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    line = [line for line in stderr.splitlines() if line.startswith(f"lstm-train: interrupted ({name}) at step")]
    assert len(line) == 1, stderr[-3000:]
    rest = cli(*args, "trainer.devices=2", "trainer.resume=auto", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert_close_metrics(json.loads((tmp_path / "b/metrics.json").read_text()), single)


FULL_DISK_ON_RANK_0 = """
import errno, os, sys, torch
from lstm_train import train
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):  # rank 0's disk fills up after its first checkpoint
    calls.append(f)
    if len(calls) > 2:
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write to a full disk: no file named
    return real(obj, f, *args, **kwargs)
if os.environ["RANK"] == "0":
    torch.save = save
sys.argv = ["lstm-train", *sys.argv[1:]]
train.main()
"""


@pytest.mark.slow
def test_rank_0_failing_to_write_stops_the_ranks_waiting_for_it(tmp_path):
    """srun-style (no launcher watching the processes): the rank waiting in a collective for rank 0 stops at once
    with one line, instead of waiting out the collective's timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, "-c", FULL_DISK_ON_RANK_0, "debug=fast", "task.train_size=4096", "trainer.progress_bar=false",
         f"hydra.run.dir={tmp_path}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port)}) for rank in (0, 1)]
    stderr = [p.communicate(timeout=240)[1] for p in procs]  # gloo's own timeout: 30 minutes
    assert [p.returncode for p in procs] == [1, 1], stderr
    (rank_0,), (rank_1,) = (s.strip().splitlines() for s in stderr)
    assert rank_0.startswith(f"lstm-train: error: {tmp_path}/checkpoints/") and "No space left on device" in rank_0
    assert rank_1 == "lstm-train: rank 1: another process of this run ended (its own message says why); this one " \
                     "stopped too"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_gets_one_line_not_the_launchers_report(tmp_path):
    args = ["debug=fast", "task.train_size=4096", "trainer.progress_bar=false", "trainer.devices=2"]
    run = subprocess.Popen([str(BIN / "lstm-train"), *args, f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "checkpoints/last.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = [c for c in _children(run.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # the OOM killer's way: no chance to say anything
    _, stderr = run.communicate(timeout=300)
    assert run.returncode in (1, 128 + signal.SIGKILL), stderr[-3000:]
    assert "Traceback" not in stderr and "torch/distributed" not in stderr, stderr[-3000:]
    assert f"lstm-train: error: rank 1's process was killed by signal 9; {tmp_path}/checkpoints/last.pt holds the " \
           "last evaluation: resume with: " in stderr


@pytest.mark.slow
def test_a_run_the_workers_refuse_is_one_line_and_leaves_no_dir(tmp_path):
    proc = cli("debug=fast", "trainer.devices=2", "task=text_char", "model=char", "task.path=nope.txt", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["lstm-train: error: task.path: no file at nope.txt"], proc.stderr
    assert list(tmp_path.iterdir()) == []  # the run dir the launching process made is gone
