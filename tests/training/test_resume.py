"""Resuming with another config: each change a resume allows takes effect from the step reached, the others are
refused on one line before anything is written; best.pt kept in step with last.pt; a stop during the test; and
resume.py's checks of a checkpoint before anything is loaded."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lstm_train.config import to_container
from lstm_train.errors import ConfigError, RunError
from lstm_train.models import build_model
from lstm_train.runs.checkpoint import RESUME_REFUSED, load_checkpoint, save_checkpoint
from lstm_train.tasks import build_task
from lstm_train.train import train
from lstm_train.training.checkpoints import Checkpoints
from lstm_train.training.evaluation import Evaluator
from lstm_train.training.interrupt import Interrupted
from lstm_train.training.resume import check_resumable, fmt_changes, held_step
from lstm_train.training.trainer import Trainer, build_trainer
from tests.helpers import events

pytestmark = pytest.mark.usefixtures("one_thread")

# 4 steps an epoch; the first run trains one epoch, the resumed ones two (so each also extends the run)
BASE = ["debug=fast", "task.train_size=64", "task.val_size=32", "task.test_size=32", "trainer.batch_size=16",
        "trainer.log_every_n_steps=1", "trainer.progress_bar=false"]
SGD, RMSPROP, STEP, PLATEAU = ["optim=sgd", "optim.nesterov=false"], ["optim=rmsprop"], \
    ["scheduler=step", "scheduler.step_size=1"], ["scheduler=plateau"]

# Every change a resume allows, as (the first run's options, the change). Keys the trainer restores from the
# checkpoint (optimizer, schedule, best) and keys it reads anew alike: resumed, the trainer must hold what a
# trainer built for the changed config does.
TAKES_EFFECT = {
    "optim.lr": ([], ["optim.lr=0.02"]),
    "optim.betas": ([], ["optim.betas=[0.8,0.99]"]),
    "optim.eps": ([], ["optim.eps=1e-6"]),
    "optim.weight_decay": ([], ["optim.weight_decay=0.01"]),
    "optim.amsgrad": ([], ["optim.amsgrad=true"]),  # Adam then keeps more state: it starts afresh
    "optim._target_": ([], ["optim=sgd"]),  # another optimizer: afresh
    "optim.momentum": (SGD, ["optim.momentum=0.5"]),
    "optim.dampening": (SGD, ["optim.dampening=0.1"]),
    "optim.nesterov": (SGD, ["optim.nesterov=true"]),
    "optim.alpha": (RMSPROP, ["optim.alpha=0.9"]),
    "optim.centered": (RMSPROP, ["optim.centered=true"]),
    "optim.momentum-rmsprop": (RMSPROP, ["optim.momentum=0.5"]),
    "scheduler.warmup_steps": ([], ["scheduler.warmup_steps=2"]),
    "scheduler.min_lr_ratio": ([], ["scheduler.min_lr_ratio=0.1"]),
    "scheduler.total_steps": ([], ["scheduler.total_steps=6"]),
    "scheduler.interval": (STEP, ["scheduler.interval=step"]),
    "scheduler.step_size": (STEP, ["scheduler.step_size=2"]),
    "scheduler.gamma": (STEP, ["scheduler.gamma=0.1"]),
    "scheduler.factor": (PLATEAU, ["scheduler.factor=0.1"]),
    "scheduler.patience": (PLATEAU, ["scheduler.patience=1"]),
    "scheduler.threshold": (PLATEAU, ["scheduler.threshold=0.1"]),
    "scheduler.min_lr": (PLATEAU, ["scheduler.min_lr=0.001"]),
    "scheduler._target_": ([], ["scheduler=step"]),
    "scheduler._target_-plateau": ([], ["scheduler=plateau"]),  # cosine's state is never loaded into plateau
    "scheduler._target_-cosine": (PLATEAU, ["scheduler=cosine", "scheduler.warmup_steps=0"]),
    "scheduler._target_-none": ([], ["scheduler=none"]),
    "trainer.max_steps": ([], ["trainer.max_steps=6"]),
    "trainer.max_epochs": ([], ["trainer.max_epochs=3"]),
    "trainer.max_time": ([], ["trainer.max_time=1h"]),
    "trainer.eval_every_n_steps": ([], ["trainer.eval_every_n_steps=2"]),
    # a schedule stepped per evaluation: the evaluations a run at the new cadence would have done
    "trainer.eval_every_n_steps-eval-schedule": ([*STEP, "scheduler.interval=eval"], ["trainer.eval_every_n_steps=2"]),
    "trainer.log_every_n_steps": ([], ["trainer.log_every_n_steps=3"]),
    "trainer.eval_batch_size": ([], ["trainer.eval_batch_size=7"]),
    "trainer.clip_grad_norm": ([], ["trainer.clip_grad_norm=0.5"]),
    "trainer.label_smoothing": ([], ["trainer.label_smoothing=0.1"]),
    "trainer.precision": ([], ["trainer.precision=bf16"]),
    "trainer.ema_decay": ([], ["trainer.ema_decay=0.9"]),
    "trainer.monitor": ([], ["trainer.monitor=val/loss"]),  # the best restarts
    "trainer.monitor_mode": ([], ["trainer.monitor_mode=min"]),
    "trainer.early_stopping_patience": ([], ["trainer.early_stopping_patience=1"]),
    "trainer.test_checkpoint": ([], ["trainer.test_checkpoint=last"]),
    "trainer.device": ([], ["trainer.device=cpu"]),
    "trainer.num_threads": ([], ["trainer.num_threads=1"]),
    "trainer.deterministic": ([], ["trainer.deterministic=true"]),
    "trainer.progress_bar": ([], ["trainer.progress_bar=true"]),
    "trainer.probe_every_n_steps": ([], ["trainer.probe_every_n_steps=2"]),
    "trainer.probe_size": ([], ["trainer.probe_every_n_steps=2", "trainer.probe_size=8"]),
    "model.dropout": ([], ["model.dropout=0.2"]),
    "model.backend": ([], ["model.backend=reference"]),
    "task.monitor": ([], ["task.monitor=loss"]),
    "name": ([], ["name=renamed"]),
}
# Allowed keys tested elsewhere: another world size (tests/training/test_distributed.py), and _partial_ (a constant
# of every option). The model and task keys of other models and tasks used at run time: RUNTIME, below.
ELSEWHERE = {"trainer.devices", "trainer.resume", "optim._partial_", "scheduler._partial_"}


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    """first_runs(compose_cfg, *options) -> the last.pt of a one-epoch run with those options (made once)."""
    made: dict[tuple[str, ...], Path] = {}

    def first_run(compose_cfg, *options: str) -> Path:
        if options not in made:
            run_dir = tmp_path_factory.mktemp("first")
            train(compose_cfg(*BASE, "trainer.max_epochs=1", *options), run_dir)
            made[options] = run_dir / "checkpoints" / "last.pt"
        return made[options]

    return first_run


def trainer_for(cfg, out_dir: Path) -> Trainer:
    torch.manual_seed(cfg.trainer.seed)
    task = build_task(cfg.task)
    return build_trainer(cfg, task, build_model(cfg.model, task), out_dir, torch.device("cpu"))


# The scheduler's own copies of its settings (the rest of its state is where it is in the run)
SCHEDULER_SETTINGS = ("base_lrs", "total_steps", "warmup_steps", "min_lr_ratio", "step_size", "gamma", "factor",
                      "patience", "threshold", "threshold_mode", "min_lrs", "mode", "cooldown", "eps")


def settings(trainer: Trainer) -> dict:
    """What a trainer does with its config, apart from the state a run accumulates."""
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in trainer.optimizer.param_groups]
    scheduler = trainer.scheduler.state_dict() or {}
    return {
        "optimizer": (type(trainer.optimizer), groups, trainer.base_lrs),
        "scheduler": (type(trainer.scheduler.scheduler), trainer.scheduler.settings, trainer.scheduler.interval,
                      {k: v for k, v in scheduler.items() if k in SCHEDULER_SETTINGS}),
        "length": (trainer.run_length, trainer.steps_per_epoch),
        "monitor": (trainer.monitor.name, trainer.monitor.maximize, trainer.monitor.patience),
        "settings": trainer.settings, "loss": trainer.loss_options, "max_time": trainer.budget.limit,
        "ema": trainer.ema is None, "probe": trainer.probe is None,
        "dropout": [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)],
        "config": trainer.config,
    }


def test_every_key_a_resume_allows_is_tested(compose_cfg):
    """A key added to optim, scheduler or trainer takes effect on resume unless refused: it needs a case above.
    (model.* and task.* keys are refused unless listed as used at run time: RESUME_MODEL_RUNTIME, ...)"""
    keys = set()
    for options in ([], SGD, RMSPROP, ["optim=adamw"], STEP, PLATEAU, ["scheduler=none"]):
        keys |= {k for k in _flat(to_container(compose_cfg(*BASE, *options))) if not k.startswith(("model.", "task."))}
    tested = {k.partition("-")[0] for k in TAKES_EFFECT} | ELSEWHERE | set(RESUME_REFUSED)
    assert keys - tested == set()


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("case", TAKES_EFFECT)
def test_a_change_a_resume_allows_takes_effect(compose_cfg, tmp_path, first_runs, case):
    first, change = TAKES_EFFECT[case]
    last = first_runs(compose_cfg, *first)
    cfg = compose_cfg(*BASE, *first, *change)
    try:
        fresh = trainer_for(cfg, tmp_path / "fresh")
    except ConfigError as e:  # this machine cannot run it at all (bf16 emulated): nothing to resume either
        pytest.skip(str(e))
    resumed = trainer_for(cfg, tmp_path / "resumed")
    resumed.resume(last)
    assert settings(resumed) == settings(fresh)
    state = resumed.state_dict()
    resumed.optimizer.step()  # the loaded state fits the optimizer it is in (a KeyError here, before the fix)
    assert state["progress"]["step"] == 4


# The changes that move the learning rate: after the resume, train/lr is what a run with the change from the
# start has at each step (the schedule rebuilt over the new length from the step reached), never the old
# schedule's tail (lr 0 past its end).
LR_CASES = ["optim.lr", "optim._target_", "optim.amsgrad", "scheduler.warmup_steps", "scheduler.min_lr_ratio",
            "scheduler.total_steps", "scheduler.step_size", "scheduler.gamma", "scheduler.interval",
            "scheduler._target_", "scheduler._target_-cosine", "scheduler._target_-none", "trainer.max_steps",
            "trainer.max_epochs", "trainer.eval_every_n_steps-eval-schedule"]


@pytest.mark.parametrize("case", LR_CASES)
def test_the_lr_after_a_resume_is_the_changed_runs(compose_cfg, tmp_path, first_runs, case, caplog):
    first, change = TAKES_EFFECT[case]
    last = first_runs(compose_cfg, *first)
    extended = ["trainer.max_epochs=2", *change]  # every case also trains on past the first run's end
    unbroken = train(compose_cfg(*BASE, *first, *extended), tmp_path / "unbroken")
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):
        resumed = train(compose_cfg(*BASE, *first, *extended, f"trainer.resume={last}"), tmp_path / "resumed")
    assert resumed["step"] == unbroken["step"] > 4
    want = [(e.step, e.value) for e in events(tmp_path / "unbroken").Scalars("train/lr") if e.step > 4]
    assert [(e.step, e.value) for e in events(tmp_path / "resumed").Scalars("train/lr")] == want
    assert all(lr > 0 for _, lr in want[:-1])
    assert "learning-rate schedule from step 4: " in caplog.text


def test_an_extended_run_says_what_its_schedule_now_is(compose_cfg, tmp_path, first_runs, caplog):
    last = first_runs(compose_cfg, "scheduler.warmup_steps=0")
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):
        train(compose_cfg(*BASE, "scheduler.warmup_steps=0", "trainer.max_epochs=3", "optim.lr=0.05",
                          f"trainer.resume={last}"), tmp_path)
    assert ("learning-rate schedule from step 4: WarmupCosineLR(warmup_steps=0, total_steps=12, min_lr_ratio=0.0) "
            "per step, at 4 of the run's 12, lr now 0.0375") in caplog.text


def test_an_unchanged_schedule_is_loaded_not_rebuilt(compose_cfg, tmp_path, first_runs, caplog):
    last = first_runs(compose_cfg, *STEP)
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):  # StepLR does not depend on the length
        train(compose_cfg(*BASE, *STEP, "trainer.max_epochs=2", f"trainer.resume={last}"), tmp_path)
    assert "learning-rate schedule" not in caplog.text


@pytest.mark.parametrize(("change", "message"), [
    ("optim=sgd", r"the optimizer starts afresh at step 4: the checkpoint's state \(torch\.optim\.Adam: exp_avg, "
                  r"exp_avg_sq, step per parameter\) does not fit this run's \(torch\.optim\.SGD: momentum_buffer\)"),
    ("optim.amsgrad=true", r"does not fit this run's \(torch\.optim\.Adam: exp_avg, exp_avg_sq, max_exp_avg_sq, "
                           r"step\)"),
])
def test_another_optimizer_starts_afresh_and_says_so(compose_cfg, tmp_path, first_runs, caplog, change, message):
    last = first_runs(compose_cfg)
    with caplog.at_level(logging.WARNING, logger="lstm_train.training"):
        result = train(compose_cfg(*BASE, "trainer.max_epochs=2", change, f"trainer.resume={last}"), tmp_path)
    assert result["step"] == 8
    assert any(re.search(message, r.getMessage()) for r in caplog.records), caplog.text


def test_plateau_never_takes_another_schedulers_state(compose_cfg, tmp_path, first_runs):
    last = first_runs(compose_cfg)  # cosine, ended at lr 0
    trainer = trainer_for(compose_cfg(*BASE, *PLATEAU, "trainer.max_epochs=2"), tmp_path)
    trainer.resume(last)
    plateau = trainer.scheduler.scheduler
    assert plateau.num_bad_epochs == 0 and plateau.best == float("-inf")  # fresh: no cosine keys merged in
    assert not hasattr(plateau, "total_steps") and trainer.optimizer.param_groups[0]["lr"] == 6e-3


def test_another_monitor_restarts_the_best(compose_cfg, tmp_path, first_runs, caplog):
    last = first_runs(compose_cfg)  # best by val/acc
    before = load_checkpoint(last)["progress"]["best"]
    with caplog.at_level(logging.WARNING, logger="lstm_train.training"):
        result = train(compose_cfg(*BASE, "trainer.max_epochs=2", "trainer.monitor=val/loss",
                                   f"trainer.resume={last}"), tmp_path)
    assert "trainer.monitor is val/loss (min) now, val/acc (max) in the checkpoint: the best restarts at step 4" \
        in caplog.text
    # the best is by val/loss, from the resumed step on, and best.pt holds it (the old best.pt is not copied)
    assert result["best"]["step"] == 8 and result["best"]["value"] == result["best"]["val"]["loss"]
    assert result["best"]["value"] != before["value"]
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert best["progress"]["step"] == 8 and result["test_checkpoint"] == "best"


@pytest.mark.parametrize(("change", "key"), [(f"{k}={v}", k) for k, v in
                                             (("trainer.seed", 3), ("trainer.batch_size", 8))])
def test_a_key_a_resume_cannot_change_is_refused_before_anything_is_written(compose_cfg, tmp_path, first_runs,
                                                                            change, key):
    last = first_runs(compose_cfg)
    with pytest.raises(ConfigError, match=rf"^trainer\.resume: .*last\.pt was trained with {key}=\d+, not \d+, "
                                          rf"which a resumed run cannot change \(.*\); resume with {key}=\d+"):
        train(compose_cfg(*BASE, change, f"trainer.resume={last}"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("change", "message"), [
    ("model.forget_bias=0.5", r"holds a different model: model\.forget_bias \(checkpoint 2\.0, now 0\.5\)"),
    ("model.chrono_max_len=5", r"holds a different model: model\.chrono_max_len \(checkpoint null, now 5\)"),
    ("task.seq_len=9", r"was trained on other data: task\.seq_len \(checkpoint 8, now 9\); resume with the data"),
    ("task.data_seed=1", r"was trained on other data: task\.data_seed \(checkpoint 1234, now 1\)"),
    ("task.train_size=128", r"was trained on other data: task\.train_size \(checkpoint 64, now 128\)"),
])
def test_model_and_data_keys_are_refused(compose_cfg, tmp_path, first_runs, change, message):
    last = first_runs(compose_cfg)
    with pytest.raises(ConfigError, match=r"^trainer\.resume: .*" + message):
        train(compose_cfg(*BASE, change, f"trainer.resume={last}"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ---- best.pt and last.pt in step ----------------------------------------------------------------------------
@pytest.fixture
def stopped_between_saves(compose_cfg, tmp_path):
    """A run killed after writing last.pt at step 8 (a new best) and before best.pt: its run dir."""
    save = Checkpoints.save

    def save_last_then_die(self, state, improved):
        if state["progress"]["step"] < 8:
            return save(self, state, improved)
        save(self, state, False)  # last.pt, recording itself as the best...
        raise KeyboardInterrupt  # ...and no best.pt

    cfg = compose_cfg(*BASE, "trainer.max_epochs=2", "trainer.monitor=val/loss", "optim.lr=0.05")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Checkpoints, "save", save_last_then_die)
        train(cfg, tmp_path / "a")
    last = load_checkpoint(tmp_path / "a/checkpoints/last.pt")["progress"]
    assert last["step"] == 8 and last["best"]["step"] == 8  # the case: val/loss improved at step 8
    assert load_checkpoint(tmp_path / "a/checkpoints/best.pt")["progress"]["step"] == 4
    return tmp_path / "a"


@pytest.mark.parametrize("where", ["new-dir", "auto"])
def test_a_stop_between_last_and_best_is_repaired_on_resume(compose_cfg, tmp_path, stopped_between_saves, where,
                                                            caplog):
    run = stopped_between_saves
    unbroken = train(compose_cfg(*BASE, "trainer.max_epochs=2", "trainer.monitor=val/loss", "optim.lr=0.05"),
                     tmp_path / "unbroken")
    out = tmp_path / "b" if where == "new-dir" else run
    resume = f"trainer.resume={run / 'checkpoints/last.pt'}" if where == "new-dir" else "trainer.resume=auto"
    with caplog.at_level(logging.WARNING, logger="lstm_train.training"):
        resumed = train(compose_cfg(*BASE, "trainer.max_epochs=2", "trainer.monitor=val/loss", "optim.lr=0.05",
                                    resume), out)
    assert "records itself as the best (a stop between the two saves): best.pt is made from it" in caplog.text
    assert load_checkpoint(out / "checkpoints/best.pt")["progress"]["step"] == 8
    assert resumed["best"] == unbroken["best"] and resumed["test"] == unbroken["test"]


def test_a_best_pt_from_another_save_is_refused(compose_cfg, tmp_path, first_runs):
    run = tmp_path / "mixed"
    run.mkdir()
    last = load_checkpoint(first_runs(compose_cfg))
    last["progress"]["best"]["step"] = 2  # a record that matches neither last.pt nor best.pt
    save_checkpoint(run / "last.pt", {k: v for k, v in last.items() if k != "format"})
    save_checkpoint(run / "best.pt", {k: v for k, v in load_checkpoint(first_runs(compose_cfg)).items()
                                      if k != "format"})
    with pytest.raises(ConfigError, match=r"best\.pt holds step 4, but .*last\.pt records its best at step 2: they "
                                          r"are not from one run's saves"):
        train(compose_cfg(*BASE, "trainer.max_epochs=2", f"trainer.resume={run / 'last.pt'}"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_last_pt_without_its_best_pt_restarts_the_best(compose_cfg, tmp_path, first_runs, caplog):
    alone = tmp_path / "alone" / "last.pt"
    alone.parent.mkdir()
    state = load_checkpoint(first_runs(compose_cfg))
    state["progress"]["best"]["step"] = 2  # not last.pt itself: nothing to make best.pt from
    save_checkpoint(alone, {k: v for k, v in state.items() if k != "format"})
    with caplog.at_level(logging.WARNING, logger="lstm_train.training"):
        result = train(compose_cfg(*BASE, "trainer.max_epochs=2", f"trainer.resume={alone}"), tmp_path / "new")
    assert "no best.pt beside" in caplog.text and "the best restarts at step 4" in caplog.text
    assert result["best"]["step"] == 8


def test_a_run_dir_resumes_from_its_last_pt(compose_cfg, tmp_path, first_runs, caplog):
    last = first_runs(compose_cfg)
    with caplog.at_level(logging.INFO, logger="lstm_train.training"):
        result = train(compose_cfg(*BASE, "trainer.max_epochs=2", f"trainer.resume={last.parent.parent}"),
                       tmp_path / "new")
    assert f"resumed from {last} at step 4" in caplog.text
    assert result["step"] == 8


def test_a_checkpoint_with_keys_missing_is_one_line(compose_cfg, tmp_path, first_runs):
    state = load_checkpoint(first_runs(compose_cfg))
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {k: v for k, v in state.items() if k not in ("format", "optimizer", "progress")})
    with pytest.raises(ConfigError, match=r"^trainer\.resume: .*partial\.pt cannot be resumed: optimizer, progress "
                                          r"missing or not as lstm-train writes them; resume from a checkpoints/"):
        train(compose_cfg(*BASE, f"trainer.resume={partial}"), tmp_path / "new")


# ---- the end of a run -----------------------------------------------------------------------------------------
def test_an_unreadable_best_pt_at_test_time_keeps_the_training(compose_cfg, tmp_path, monkeypatch):
    load_best = Checkpoints.load_best

    def corrupt_then_load(self, *args):
        (self.dir / "best.pt").write_bytes(b"not a checkpoint")  # the disk failing after the last save
        return load_best(self, *args)

    monkeypatch.setattr(Checkpoints, "load_best", corrupt_then_load)
    with pytest.raises(RunError) as error:
        train(compose_cfg(*BASE, "trainer.max_epochs=2"), tmp_path)
    assert str(error.value) == (
        f"{tmp_path}/checkpoints/best.pt is not an lstm-train checkpoint (truncated or not a torch file), so the "
        f"test used the last weights (metrics.json has it, test_checkpoint: last); the trained run is in "
        f"{tmp_path}/checkpoints/last.pt")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["test_checkpoint"] == "last" and set(metrics["test"]) == {"loss", "acc"}
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["progress"]["step"] == 8


CORRUPT_BEST = """
import sys
from lstm_train import train
from lstm_train.training.checkpoints import Checkpoints
load_best = Checkpoints.load_best
def corrupt_then_load(self, *args):
    (self.dir / "best.pt").write_bytes(b"not a checkpoint")
    return load_best(self, *args)
Checkpoints.load_best = corrupt_then_load
sys.argv = ["lstm-train", *sys.argv[1:]]
train.main()
"""


def test_an_unreadable_best_pt_at_test_time_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-c", CORRUPT_BEST, *BASE, f"hydra.run.dir={tmp_path}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"lstm-train: error: {tmp_path}/checkpoints/best.pt is not an lstm-train checkpoint (truncated or not a "
        "torch file), so the test used the last weights (metrics.json has it, test_checkpoint: last); the trained "
        f"run is in {tmp_path}/checkpoints/last.pt"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test_checkpoint"] == "last"


def test_a_signal_during_the_test_stops_it_and_says_so(compose_cfg, tmp_path, monkeypatch):
    evaluate = Evaluator.evaluate

    def signal_in_test(self, model, split):
        if split == "test":
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self, model, split)

    monkeypatch.setattr(Evaluator, "evaluate", signal_in_test)
    with pytest.raises(Interrupted) as stopped:
        train(compose_cfg(*BASE), tmp_path / "a")
    last = tmp_path / "a/checkpoints/last.pt"
    assert str(stopped.value) == (f"interrupted (SIGINT) in the test, after training to step 8/8 (saved in {last}): "
                                  "no test, no metrics.json")
    assert stopped.value.exit_code == 130 and stopped.value.checkpoint == last
    assert not (tmp_path / "a/metrics.json").exists()
    monkeypatch.undo()
    # the resume the CLI prints runs the test only
    again = train(compose_cfg(*BASE, f"trainer.resume={last}"), tmp_path / "b")
    assert again["step"] == 8 and set(again["test"]) == {"loss", "acc"}


# ---- model and task keys used at run time, by the other models and tasks ------------------------------------------
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\nBRUSSELS B-LOC\n1996-08-22 O\n"
RUNTIME = {
    "seq2seq": (["model=seq2seq", "task=reverse", "model.hidden_size=8", "model.embedding_dim=8"],
                ["model.output_dropout=0.1", "model.teacher_forcing_ratio=0.5", "model.beam_size=2",
                 "model.length_penalty=0.5", "model.max_length_ratio=1.5", "model.max_length_offset=3"]),
    "text_char": (["model=char", "task=text_char", "task.seq_len=16", "task.val_fraction=0.1", "task.test_fraction=0.1",
                   "task.sample_length=0", "task.path={d}/a.txt"], ["task.sample_length=10", "task.path={d}/b.txt"]),
    "conll": (["model=tagger", "task=conll", "task.train={d}/a.conll", "task.val={d}/a.conll", "task.test={d}/a.conll"],
              ["task.word_dropout=0.1", "task.train={d}/b.conll", "task.val={d}/b.conll", "task.test={d}/b.conll"]),
    "regularisers": ([], ["model.zoneout_c=0.1", "model.zoneout_h=0.1", "model.recurrent_dropout=0.1",
                          "model.weight_drop=0.1"]),
}


def plain_attributes(*objects: object) -> dict:
    """The plain values a model's modules or a task hold (rates, sizes, paths): what their config set."""
    modules = [m for o in objects for m in (o.modules() if isinstance(o, torch.nn.Module) else [o])]
    return {(i, k): v for i, m in enumerate(modules) for k, v in vars(m).items()
            if isinstance(v, bool | int | float | str | Path) and k != "training"}


@pytest.mark.parametrize("case", RUNTIME)
def test_run_time_model_and_task_keys_take_effect(compose_cfg, tmp_path, case):
    """The keys of RESUME_MODEL_RUNTIME and RESUME_TASK_RUNTIME: moved data files too (the same content)."""
    for name in ("a", "b"):  # the same data in two places
        (tmp_path / f"{name}.txt").write_text("In the beginning God created the heaven and the earth.\n" * 40)
        (tmp_path / f"{name}.conll").write_text(CONLL * 8)
    first, changes = ([o.format(d=tmp_path) for o in options] for options in RUNTIME[case])
    train(compose_cfg(*BASE, "trainer.max_epochs=1", *first), tmp_path / "first")
    cfg = compose_cfg(*BASE, *first, *changes)
    fresh, resumed = trainer_for(cfg, tmp_path / "fresh"), trainer_for(cfg, tmp_path / "resumed")
    resumed.resume(tmp_path / "first/checkpoints/last.pt")
    assert plain_attributes(resumed.model, resumed.task) == plain_attributes(fresh.model, fresh.task)
    before = trainer_for(compose_cfg(*BASE, *first), tmp_path / "before")
    unchanged = plain_attributes(before.model, before.task)
    # each change shows in those values (else the comparison above would prove nothing); a moved file shows only
    # in that the resume reads it and is not refused
    for option in [o for o in changes if o.split("=")[0] not in ("task.path", "task.train", "task.val", "task.test")]:
        one = trainer_for(compose_cfg(*BASE, *first, option), tmp_path / "one")
        assert plain_attributes(one.model, one.task) != unchanged, option


# ---- resume.py's checks of a checkpoint, before anything is loaded ------------------------------------------
CONFIG = {"model": {"name": "m"}, "task": {"name": "t"}, "optim": {}, "scheduler": {}, "trainer": {}}
PROGRESS = {"step": 8, "epoch": 1, "batch_in_epoch": 0, "best": None, "bad_evals": 0, "stopped_early": False,
            "last_val": {}, "last_train": {}, "elapsed_s": 1.0, "out_of_time": False, "max_time_reached": False}


def resumable() -> dict:
    return {"config": CONFIG, "optimizer": {}, "scheduler": None, "progress": dict(PROGRESS), "rng": {},
            "model": {}, "task": {}}


def test_a_checkpoint_lstm_train_writes_is_resumable():
    check_resumable(Path("last.pt"), resumable())
    old = resumable()
    old["progress"] = {"step": 3}  # written before the later progress keys: they start at their defaults
    check_resumable(Path("last.pt"), old)


@pytest.mark.parametrize(("change", "named"), [
    (lambda s: s.pop("optimizer"), "optimizer"),
    (lambda s: s.update(rng=[1, 2]), "rng"),
    (lambda s: s["progress"].update(lr=0.1), "progress.lr"),  # a key no part of the trainer keeps
    (lambda s: s["progress"].pop("step"), "progress.step"),
    (lambda s: s.update(config={**CONFIG, "trainer": None}), "config.trainer"),
])
def test_what_a_resume_lacks_is_named(change, named):
    state = resumable()
    change(state)
    with pytest.raises(ConfigError, match=rf"^trainer.resume: last.pt cannot be resumed: {named} missing or not as "
                                          r"lstm-train writes them; resume from a checkpoints/last.pt written by"):
        check_resumable(Path("last.pt"), state)


def test_the_step_best_pt_holds(tmp_path):
    best = tmp_path / "best.pt"
    assert held_step(best) is None
    save_checkpoint(best, {**resumable(), "model": {"w": torch.zeros(1)}})
    assert held_step(best) == 8
    best.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"best\.pt is not an lstm-train checkpoint \(truncated or not a torch "
                                          r"file\); move it away to resume with the best restarted$"):
        held_step(best)


def test_changes_read_as_the_checkpoints_and_now():
    assert fmt_changes({"optim.lr": (0.1, 0.2), "trainer.monitor": ("val/acc", "val/loss")}) == (
        "optim.lr (checkpoint 0.1, now 0.2), trainer.monitor (checkpoint val/acc, now val/loss)")


def test_changed_values_read_as_the_config_writes_them():
    assert fmt_changes({"trainer.eval_every_n_steps": (100, None), "model.bidirectional": (False, True),
                        "optim.betas": ([0.9, 0.999], [0.8, 0.99]), "task.name": ("2", "x")}) == (
        "trainer.eval_every_n_steps (checkpoint 100, now null), model.bidirectional (checkpoint false, now true), "
        "optim.betas (checkpoint [0.9, 0.999], now [0.8, 0.99]), task.name (checkpoint '2', now x)")
