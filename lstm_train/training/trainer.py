"""The training loop: steps, clipping, scheduling, evaluation, the best checkpoint, early stopping, resume, a
moving average of the weights (``trainer.ema_decay``) and a time budget (``trainer.max_time``).

Order of work after each optimizer step (the same in a fresh and a resumed run, which is what makes a
resumed run end with the same numbers):
1. the moving average of the weights (``trainer.ema_decay``) takes in the new weights, and the step-interval
   scheduler steps;
2. every ``log_every_n_steps`` steps and at each evaluation, the train scalars are written (the gradient
   norms of those steps are taken before clipping);
3. at an evaluation (each epoch, or every ``eval_every_n_steps``, and at the last step): val metrics,
   the eval-interval scheduler, best and early-stopping bookkeeping;
4. at the end of an epoch, the epoch-interval scheduler steps;
5. after an evaluation, checkpoints/last.pt (and best.pt if it improved) hold the state as it is now.
Between 2 and 3, every ``probe_every_n_steps`` steps, the gate probe (lstm_train/training/probe.py) logs gates, cell
states and dL/dh_t per step on a fixed val batch; it works on a copy of the model and changes nothing else.
With ``trainer.max_time``, the budget is checked at the end of every step: once it is spent, the run ends
there if the step was evaluated, else after the next step, which is evaluated and saved as at ``max_steps``.

Only the cheap part of logging runs every step: the loss and the clipping flag accumulate as tensors
(no host sync); norms per parameter, the one sync and the TensorBoard writes happen on logging steps.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import json
import logging
import math
import platform
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lstm_train.config import ConfigError, duration_seconds, to_container
from lstm_train.errors import RunError
from lstm_train.models import count_parameters
from lstm_train.nn.compiled import bf16_products
from lstm_train.runs.checkpoint import (
    RESUME_MODEL_RUNTIME,
    RESUME_REFUSED,
    RESUME_TASK_RUNTIME,
    atomic_write,
    config_changes,
    copy_checkpoint,
    evaluated_weights,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lstm_train.tasks import Batch, Metrics, Split, Task, derive_seed
from lstm_train.training import distributed, pruning
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, StopRequest, deferred_signals, signal_name
from lstm_train.training.optim import Scheduler, build_optimizer, optimizer_state_keys
from lstm_train.training.probe import Probe
from lstm_train.training.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything a checkpoint must restore besides model, its moving average, optimizer, scheduler, RNG and the
    log interval."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    batch_in_epoch: int = 0  # its batches done
    best: dict[str, Any] | None = None  # {"value", "step", "epoch", "val"}
    bad_evals: int = 0  # evaluations since the best one, for early stopping
    stopped_early: bool = False
    last_val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    # Wall time in the training loop (training, evaluation, saving) so far, including the time of the processes
    # this run was resumed from: what trainer.max_time counts.
    elapsed_s: float = 0.0
    out_of_time: bool = False  # trainer.max_time is spent: training ends at this step if evaluated, else the next
    max_time_reached: bool = False  # and it has: the budget, not the step limit or early stopping, ended training


class Trainer:
    """Trains ``model`` on ``task`` as ``cfg`` says, alone or as one rank of a data-parallel ``world``
    (see lstm_train/training/distributed.py: every rank runs the same loop on its share of each batch; rank 0 alone
    writes the run dir)."""

    def __init__(
        self, cfg: DictConfig, task: Task, model: nn.Module, out_dir: str | Path, device: torch.device,
        world: World = World(),  # noqa: B008 (frozen: one process)
    ):
        self.cfg = cfg
        self.t = t = cfg.trainer
        self.task = task
        self.model = model
        self.world = world
        # Training calls go through DDP (it all-reduces the gradients); evaluation uses the model itself.
        self.train_model = model if world.size == 1 else nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        self.device = device
        self.out_dir = Path(out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.config = to_container(cfg)
        self.num_params = count_parameters(model)

        self.steps_per_epoch = task.steps_per_epoch(t.batch_size)
        self.run_length = run_length(t, self.steps_per_epoch)
        self.total_steps = self.run_length["step"]

        self.monitor = t.monitor.removeprefix("val/")
        if self.monitor not in task.metric_names:
            names = ", ".join(f"val/{m}" for m in task.metric_names)
            raise ConfigError("trainer.monitor", f"task {task.name} has no metric {t.monitor}; it has {names}")
        self.maximize = self._maximizes(t)

        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, [p for _, p in self.params])
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # optim.lr, before any schedule
        self.scheduler = self._new_scheduler()
        # trainer.ema_decay: a copy of the model whose weights follow the trained ones as a moving average. Val,
        # test, samples and best.pt's evaluated weights are the copy's; training, the probe and resuming use the
        # weights as trained. (Not torch's AveragedModel: it moves its update count from the CPU to the weights'
        # device at every update, which on a GPU waits for the stream each step.)
        self.ema = None if t.ema_decay is None else copy.deepcopy(model).requires_grad_(False)
        self.ema_updates = 0
        self.eval_model = model if self.ema is None else self.ema
        self.clip = t.clip_grad_norm or 0.0
        # Passed only when set: a task written before label smoothing existed has loss(output, batch).
        self._loss_options = {"label_smoothing": t.label_smoothing} if t.label_smoothing else {}
        if self._loss_options and "label_smoothing" not in inspect.signature(task.loss).parameters:
            raise ConfigError("trainer.label_smoothing", f"task {task.name}'s loss takes no label_smoothing: set it "
                              "to 0, or give the task's loss a label_smoothing argument")

        self._bf16 = t.precision == "bf16"
        if self._bf16:
            self._check_bf16()

        self.progress = Progress()
        self.report = pruning.reporter(self.monitor, world.size)  # an Optuna trial's values to its study
        self.max_time = None if t.max_time is None else duration_seconds(t.max_time)
        self._clock = (time.perf_counter(), 0.0)  # (when this process's loop started, elapsed_s before it)
        self.resumed_at: int | None = None  # the step a resumed run started from
        self.last_checkpoint: Path | None = None  # the last.pt that holds the state as it is now
        self._train_metrics = task.new_metrics()  # since the last evaluation
        self._lr = self.optimizer.param_groups[0]["lr"]
        self._reset_log_interval()
        self.probe = None
        if t.probe_every_n_steps:
            try:
                self.probe = Probe(task, model, t.probe_size, device)
            except ValueError as e:
                raise ConfigError("trainer.probe_every_n_steps", str(e)) from e

    # ---- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            "ema": None if self.ema is None else {"weights": self.ema.state_dict(), "updates": self.ema_updates},
            # What the steps since the last evaluation accumulated, summed over the ranks (rank 0 carries the
            # sums on), and each rank's own carried state and RNG: a run stopped there resumes exactly.
            "interval": {
                "loss_sum": self._global_loss_sum(), "clipped": self._clipped, "steps": self._steps,
                "train_metrics": distributed.reduce_metrics(copy.deepcopy(self._train_metrics)).state_dict(),
                "ranks": distributed.gather({"rng": rng_state(), "task": self.task.train_state()}),
            },
            "rng": rng_state(),
            "config": self.config,
            "task": self.task.state_dict(),
            "num_params": self.num_params,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint, with this run's config from the step reached. The old run's best.pt is
        copied over, so 'best' keeps its meaning.

        A checkpoint that does not fit this run's config (another task, data or model, a key a resumed run cannot
        change: :data:`~lstm_train.runs.checkpoint.RESUME_REFUSED`) is a :class:`ConfigError` naming the keys, raised
        before anything is written. The other differences take effect: the optimizer's settings (another
        optimizer starts afresh), the learning-rate schedule rebuilt over this run's length from the step reached,
        the best restarted for another trainer.monitor; the rest is read anew as the run goes.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError("trainer.resume", f"no checkpoint file at {path}")
        try:
            state = load_checkpoint(path, map_location=self.device)
        except ValueError as e:
            raise ConfigError("trainer.resume", str(e)) from e
        _check_resumable(path, state)
        changes = config_changes(state["config"], self.config)
        self._check_fits(path, state, changes)
        if changes:
            log.warning("resuming with a config that differs from the checkpoint's: %s", _fmt_changes(changes))
        self.progress = Progress(**state["progress"])
        optimizer_loaded = self._resume_optimizer(state)
        self._resume_schedule(state, optimizer_loaded)
        self._resume_best(path, state)  # the last check that can refuse: it copies best.pt
        self._resume_ema(path, state.get("ema"))
        set_rng_state(state["rng"])
        interval = state.get("interval")  # checkpoints written before interruption support have none
        if interval is not None:
            self._clipped, self._steps = interval["clipped"], interval["steps"]
            if self.world.main:  # the sums over all ranks; the other ranks start theirs from zero
                self._loss_sum = interval["loss_sum"]
                self._train_metrics.load_state_dict(interval["train_metrics"])
            ranks = interval["ranks"]
            if len(ranks) == self.world.size:  # each rank goes on with its own rows' state and RNG
                set_rng_state(ranks[self.world.rank]["rng"])
                self.task.load_train_state(ranks[self.world.rank]["task"])
            elif not self.world.main:  # another world size: rank 0 goes on from rank 0's, the others afresh
                torch.manual_seed(derive_seed("rank", self.t.seed, self.progress.step, self.world.rank))
        self.resumed_at = self.progress.step
        self.last_checkpoint = path
        log.info("resumed from %s at step %d (epoch %d)", path, self.progress.step, self.progress.epoch)

    def _resume_optimizer(self, state: dict[str, Any]) -> bool:
        """The checkpoint's optimizer state under this run's optim.* settings; False when it does not fit (another
        optimizer, or one that keeps other state per parameter: Adam's amsgrad, RMSprop's momentum or centered),
        and the optimizer starts afresh: one's state is never loaded into another."""
        old, new = state["config"]["optim"].get("_target_"), self.cfg.optim._target_
        saved = state["optimizer"].get("state") or {}
        kept = set(next(iter(saved.values()), {}))
        needed = kept if old == new and not saved else optimizer_state_keys(self.cfg.optim)
        if old != new or kept != needed:
            log.warning("the optimizer starts afresh at step %d: the checkpoint's state (%s: %s per parameter) does "
                        "not fit this run's (%s: %s)", self.progress.step, old, ", ".join(sorted(kept)) or "none", new,
                        ", ".join(sorted(needed)) or "none")
            return False
        settings = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
                    for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, mine in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(mine)  # this run's betas, weight decay, momentum...; the rates are the schedule's
        return True

    def _resume_schedule(self, state: dict[str, Any], optimizer_loaded: bool) -> None:
        """The checkpoint's schedule when this run's is the same (same settings over the same length, the same
        lr and monitor, and for one stepped per evaluation the same cadence); otherwise this run's schedule,
        rebuilt from optim.lr and stepped to the step reached, where a run with it from the start would be (a
        metric-driven one, plateau, starts afresh there)."""
        old = state["config"]
        old_settings = Scheduler.resolve(old["scheduler"], run_length(old["trainer"], self.steps_per_epoch))
        cadence_changed = old["trainer"]["eval_every_n_steps"] != self.t.eval_every_n_steps  # per evaluation
        if (optimizer_loaded and old_settings == self.scheduler.settings and old["optim"].get("lr") == self._base_lrs[0]
                and not (self.scheduler.adaptive and self._monitor_changed(old["trainer"]))
                and not (self.scheduler.interval == "eval" and cadence_changed)):
            self.scheduler.load_state_dict(state["scheduler"])
            return
        for group, lr in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            group["lr"] = lr
            group.pop("initial_lr", None)  # else a new scheduler would take the checkpoint's as its base
        self.scheduler = self._new_scheduler()
        p, every = self.progress, self.t.eval_every_n_steps  # in the new length's units
        done = {"step": p.step, "epoch": p.epoch, "eval": p.epoch if every is None else p.step // every}
        self.scheduler.fast_forward(done[self.scheduler.interval])
        log.info("learning-rate schedule from step %d: %s", p.step,
                 self.scheduler.describe(self.optimizer.param_groups[0]["lr"]))

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(self.cfg.scheduler, self.optimizer, self.run_length, mode="max" if self.maximize else "min")

    def _maximizes(self, t: Mapping[str, Any]) -> bool:
        """Whether trainer settings ``t`` (this run's, or a checkpoint's) monitor a metric to maximise."""
        mode, metric = t["monitor_mode"], t["monitor"].removeprefix("val/")
        return self.task.higher_is_better.get(metric, False) if mode == "auto" else mode == "max"

    def _monitor_changed(self, old: Mapping[str, Any]) -> bool:
        return (old["monitor"], self._maximizes(old)) != (self.t.monitor, self.maximize)

    def _resume_best(self, path: Path, state: dict[str, Any]) -> None:
        """Carry the checkpoint's best over, with its best.pt; restart it for another trainer.monitor.

        Saves write last.pt, then best.pt (Trainer._save): a run stopped between the two leaves a last.pt that
        records itself as the best and an older best.pt, repaired here from last.pt. Any other best.pt than the
        one last.pt records is refused, since testing it would test weights the run's record does not name.
        """
        p, old = self.progress, state["config"]["trainer"]
        if self._monitor_changed(old):
            before = "" if p.best is None else f" (the checkpoint's, {old['monitor']} {p.best['value']:.4g} at step " \
                f"{p.best['step']}, is not comparable)"
            log.warning("trainer.monitor is %s (%s) now, %s (%s) in the checkpoint: the best restarts at step %d%s, "
                        "and best.pt will be the best from here", self.t.monitor, _direction(self.maximize),
                        old["monitor"], _direction(self._maximizes(old)), p.step, before)
            p.best, p.bad_evals = None, 0
            return
        if p.best is None:
            return
        best, recorded = path.with_name("best.pt"), p.best["step"]
        held = _held_step(best)
        source = best
        if held != recorded:
            if recorded == p.step:  # last.pt is that best
                log.warning("%s holds %s, but %s records itself as the best (a stop between the two saves): "
                            "best.pt is made from it", best, "nothing" if held is None else f"step {held}", path)
                source = path
            elif held is None:
                log.warning("no best.pt beside %s, which records its best at step %d: the best restarts at step %d",
                            path, recorded, p.step)
                p.best, p.bad_evals = None, 0
                return
            else:
                raise ConfigError("trainer.resume", f"{best} holds step {held}, but {path} records its best at step "
                                  f"{recorded}: they are not from one run's saves; resume from the last.pt saved "
                                  "with that best.pt, or move best.pt away to restart the best")
        if self.world.main and source.resolve() != (self.checkpoints / "best.pt").resolve():
            copy_checkpoint(source, self.checkpoints / "best.pt")

    def _resume_ema(self, path: Path, ema: dict[str, Any] | None) -> None:
        if self.ema is None:
            if ema is not None:
                log.warning("trainer.ema_decay is null: %s's moving average of the weights is dropped, and val, test "
                            "and best.pt evaluate the weights as trained from step %d", path, self.progress.step)
            return
        if ema is None:  # the run was trained without trainer.ema_decay: the average starts at its weights
            log.warning("%s holds no moving average of the weights: trainer.ema_decay starts one at step %d",
                        path, self.progress.step)
            self.ema.load_state_dict(self.model.state_dict())
            return
        self.ema.load_state_dict(ema["weights"])
        self.ema_updates = ema["updates"]

    def _check_fits(self, path: Path, state: dict[str, Any], changes: dict[str, tuple[Any, Any]]) -> None:
        """Load the model's weights, or raise a ConfigError naming what makes the checkpoint not fit: another task,
        data, model (a model.* key the weights depend on), or a key of RESUME_REFUSED."""
        task = state["config"]["task"].get("name")
        if task != self.task.name:
            raise ConfigError("trainer.resume", f"{path} was trained on task={task}, not task={self.task.name}; "
                              f"resume with task={task} and the checkpoint's other settings")
        data = self.task.state_dict()
        differing = [k for k in state["task"].keys() | data.keys() if state["task"].get(k) != data.get(k)]
        if differing:
            raise ConfigError(
                "trainer.resume",
                f"{path} was trained on other data: its {', '.join(sorted(differing))} differ from this data's "
                f"({_fmt_changes({k: v for k, v in changes.items() if k.startswith('task.')}) or 'same task.* keys'});"
                " resume with the data the run was trained on",
            )
        shaping = {k: v for k, v in changes.items() if k.startswith(("model.", "task."))}
        model_keys = [k for k in changes if k.startswith("model.") and k[6:] not in RESUME_MODEL_RUNTIME]
        try:
            if model_keys:  # the weights' shapes, or their initialisation, which the checkpoint's weights replace
                raise RuntimeError(", ".join(model_keys))
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ConfigError(
                "trainer.resume",
                f"{path} holds a different model: {_fmt_changes(shaping) or 'its parameters differ'}; "
                "resume with the checkpoint's values",
            ) from e
        data = {k: v for k, v in changes.items() if k.startswith("task.") and k[5:] not in RESUME_TASK_RUNTIME}
        if data:
            raise ConfigError("trainer.resume", f"{path} was trained on other data: {_fmt_changes(data)}; resume "
                              "with the data the run was trained on")
        for key, why in RESUME_REFUSED.items():
            if key in changes:
                old, new = changes[key]
                raise ConfigError("trainer.resume", f"{path} was trained with {key}={old}, not {new}, which a resumed "
                                  f"run cannot change ({why}); resume with {key}={old}, or start a new run")

    def _save(self, improved: bool, elapsed: float | None = None) -> Path:
        """last.pt (and best.pt if ``improved``); ``elapsed``: the time spent to record, if not the clock's now.

        last.pt first: a stop between the two leaves a last.pt that records itself as the best (progress.best's
        step is its own) beside the previous best.pt, which a resume repairs from last.pt (_resume_best)."""
        self.progress.elapsed_s = self._elapsed() if elapsed is None else elapsed
        state = self.state_dict()  # on every rank: it gathers what each holds
        if self.world.main:
            save_checkpoint(self.checkpoints / "last.pt", state)
            if improved:
                save_checkpoint(self.checkpoints / "best.pt", state)
        self.last_checkpoint = self.checkpoints / "last.pt"
        return self.last_checkpoint

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train, test, write metrics.json; returns its content.

        A SIGINT or SIGTERM stops the loop after the step in progress, saves last.pt at that step and raises
        :class:`Interrupted` (see lstm_train/training/interrupt.py); a resumed run then ends with the same numbers.
        """
        t, p = self.t, self.progress
        n = self.world.size
        where = f"on {self.device}" if n == 1 else f"in {n} processes on {self.device.type} (data-parallel)"
        log.info(
            "%s: %s parameters; %d steps (%d per epoch), batch %d, %s",
            type(self.model).__name__, f"{self.num_params:,}", self.total_steps, self.steps_per_epoch,
            t.batch_size, where,
        )
        if t.ema_decay is not None:
            log.info("val, test and best.pt evaluate a moving average of the weights (trainer.ema_decay=%g: about "
                     "the last %d steps)", t.ema_decay, round(1 / (1 - t.ema_decay)))
        # purge_step: a run resumed into its own dir hides the events a killed process logged after last.pt
        # (those up to the checkpoint's step were logged before it was saved).
        tracker = Tracker(self.out_dir if self.world.main else None,
                          purge_step=None if self.resumed_at is None else self.resumed_at + 1)
        metric_tags = [f"{split}/{m}" for split in ("val", "test") for m in self.task.metric_names]
        tracker.hparams({**self.config, "num_params": self.num_params}, metric_tags)
        if self.max_time is None or p.elapsed_s < self.max_time:  # no budget, or some left (maybe a larger one)
            p.out_of_time = p.max_time_reached = False
            if self.max_time is not None:
                before = f", {_fmt_seconds(p.elapsed_s)} of it before the resume" if p.elapsed_s else ""
                log.info("trainer.max_time=%s: training stops once %s of training and evaluation are spent%s (at "
                         "that step if it is evaluated, else after one more)", t.max_time,
                         _fmt_seconds(self.max_time), before)
        elif p.step < self.total_steps:  # spent before the resume (every rank read the same checkpoint)
            p.out_of_time = True
            log.info("trainer.max_time=%s was spent before the resume (%s): %s", t.max_time, _fmt_seconds(p.elapsed_s),
                     "no training, the test only" if p.max_time_reached else "one more step, evaluated")
        clock = {"train": 0.0, "eval": 0.0}
        start = time.perf_counter()
        self._clock = (start, p.elapsed_s)
        self.model.train()
        try:
            with deferred_signals() as stop, logging_redirect_tqdm(), tqdm(
                total=self.total_steps, initial=p.step, unit="step", dynamic_ncols=True,
                desc="train" if n == 1 else f"train ({n} processes, {self.device.type})",
                disable=None if t.progress_bar and self.world.main else True, mininterval=1.0,
            ) as bar:
                while ((signum := self._agreed(stop)[0]) is None and p.step < self.total_steps
                       and not (p.stopped_early or p.max_time_reached)):
                    self._run_epoch(tracker, bar, clock, stop)
                if signum is not None:
                    self._stop(signum)
                elapsed = self._elapsed()
                stop.at_once = self._interrupted_in_test  # no step to finish: a signal stops the test at once
                if stop.signum is not None and self.world.size == 1:  # it came after the last check
                    raise self._interrupted_in_test(stop.signum)
                test, tested, unusable_best = self._test(tracker)
        finally:
            tracker.close()
        total = time.perf_counter() - start
        result = {
            "train": p.last_train,
            "val": p.last_val,
            "test": test,
            "best": p.best,
            "test_checkpoint": tested,  # t.test_checkpoint, or last when there was no usable best.pt
            "step": p.step,
            "epoch": p.epoch,
            "num_params": self.num_params,
            "stopped_early": p.stopped_early,
            "max_time_reached": p.max_time_reached,
            # wall time of this process (a resumed run counts its own part only); elapsed_s: the training loop's,
            # the processes it was resumed from included (what trainer.max_time counts)
            "time": {"total_s": total, "train_s": clock["train"], "eval_s": clock["eval"],
                     "elapsed_s": elapsed},
        }
        if self.world.main:
            text = json.dumps(result, indent=2) + "\n"
            atomic_write(self.out_dir / "metrics.json", lambda f: f.write(text.encode()))
        log.info("test: %s", _fmt({f"test/{k}": v for k, v in test.items()}))
        if unusable_best:  # the training and its test are saved; best.pt, which the run was to give, is not
            raise RunError(f"{unusable_best}, so the test used the last weights (metrics.json has it, "
                           f"test_checkpoint: last); the trained run is in {self.last_checkpoint}")
        return result

    def _agreed(self, stop: StopRequest, late: bool = False) -> tuple[int | None, bool, bool]:
        """The stop signal, save request and budget end that every rank acts on now. A signal may reach one
        process first, and one stopping or saving alone would wait for the others in a collective. A request that
        comes during the agreement stays in ``stop`` for the next one (the agreed values do not replace it)."""
        if self.world.size == 1:
            return stop.signum, stop.save, late
        signum, save, late = distributed.agreed_request(stop.signum, stop.save, late)
        stop.signum, stop.save = stop.signum or signum, stop.save or save  # another rank's request is ours too
        return signum, save, late

    def _interrupted_in_test(self, signum: int) -> Interrupted:
        return Interrupted(signum, f"interrupted ({signal_name(signum)}) in the test, after training to step "
                           f"{self.progress.step}/{self.total_steps} (saved in {self.last_checkpoint}): no test, no "
                           "metrics.json", checkpoint=self.last_checkpoint)

    def _save_on_request(self, stop: StopRequest) -> None:
        """A scheduler's warning (submitit: SLURM's SIGTERM, its requeue signal): last.pt now, then what it asks."""
        path = self._save(improved=False)
        log.info("saved %s at step %d", path, self.progress.step)
        stop.save, then, stop.then = False, stop.then, None
        if then is not None:
            then()  # submitit requeues the job and exits; the requeued job resumes with trainer.resume=auto

    def _stop(self, signum: int) -> None:
        path = self._save(improved=False)
        raise Interrupted(signum, f"interrupted ({signal_name(signum)}) at step {self.progress.step}/"
                          f"{self.total_steps}: saved {path}", checkpoint=path)

    def _run_epoch(self, tracker: Tracker, bar: tqdm, clock: dict[str, float], stop: StopRequest) -> None:
        t, p = self.t, self.progress
        batches = self.task.train_batches(p.epoch, t.batch_size, t.seed)
        tic = time.perf_counter()
        for batch in itertools.islice(batches, p.batch_in_epoch, None):  # skips what a resumed run has seen
            step = p.step + 1  # the step about to run
            end_of_epoch = p.batch_in_epoch + 1 == self.steps_per_epoch
            at_limit = step >= self.total_steps
            finished = at_limit or p.out_of_time
            every = t.eval_every_n_steps
            evaluate = finished or (end_of_epoch if every is None else step % every == 0)
            log_now = evaluate or step % t.log_every_n_steps == 0
            self._train_step(batch, log_now)
            bar.update(1)
            if log_now:
                self._log_train(tracker, bar)
            if self.probe is not None and self.world.main and step % t.probe_every_n_steps == 0:
                summary = self.probe(self.model)
                tracker.histograms(summary.histograms, step)
                tracker.scalars(summary.scalars, step)
                tracker.figures(summary.figures, step)
            improved = False
            if evaluate:
                toc = time.perf_counter()
                clock["train"] += toc - tic
                improved = self._validate(tracker)
            if end_of_epoch:
                self.scheduler.step("epoch")
                p.epoch += 1
                p.batch_in_epoch = 0
            # The budget is read once, and that reading is what the checkpoint records: a run resumed from it
            # decides as this one did (its evaluated step owed, or done).
            now = self._elapsed()
            late = self.max_time is not None and not p.out_of_time and now >= self.max_time
            signum, save, late = self._agreed(stop, late)
            if late:
                p.out_of_time = True
                log.info("trainer.max_time=%s spent after step %d (%s): %s", t.max_time, step, _fmt_seconds(now),
                         "training ends" if evaluate else "one more step, evaluated")
            p.max_time_reached = p.out_of_time and evaluate and not (at_limit or p.stopped_early)
            if evaluate:
                self._save(improved, now)
                self.report(p.step, p.last_val[self.monitor], p.best)  # raises Pruned: last.pt is saved
                tic = time.perf_counter()
                clock["eval"] += tic - toc
            if save and signum is None:
                self._save_on_request(stop)
            if finished or end_of_epoch or p.stopped_early or p.max_time_reached or signum is not None:
                break
        clock["train"] += time.perf_counter() - tic

    def _elapsed(self) -> float:
        start, before = self._clock
        return before + time.perf_counter() - start

    def _update_ema(self) -> None:
        """ema = d * ema + (1 - d) * w for each parameter (the first update copies w); buffers are copied."""
        averaged, trained = list(self.ema.parameters()), [w.detach() for w in self.model.parameters()]
        with torch.no_grad():
            if self.ema_updates == 0:
                torch._foreach_copy_(averaged, trained)
            else:
                torch._foreach_lerp_(averaged, trained, 1.0 - self.t.ema_decay)
            for mine, theirs in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                mine.copy_(theirs)
        self.ema_updates += 1

    def _train_step(self, batch: Batch, log_now: bool) -> None:
        """One optimizer step on the global ``batch`` (on the CPU), of which this rank computes its share."""
        local, real = distributed.shard(batch, self.world)
        # This rank's share of the batch's loss weight (samples, or real tokens), counted on the CPU
        share = self.task.loss_weight(local) / self.task.loss_weight(batch) if real and self.world.size > 1 else 0.0
        local = local.to(self.device)
        with self._autocast():
            output = self.task.forward(self.train_model, local)
            loss = self.task.loss(output, local, **self._loss_options)
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.size == 1:
            loss.backward()
            part = loss.detach()
        else:
            # The loss times its share, times N: DDP averages the gradients over the N ranks, which makes them
            # the gradient of the global batch's mean loss (over samples, or over real tokens).
            (loss * (share * self.world.size)).backward()
            part = loss.detach() * share  # summed over the ranks when logged: the global batch's mean
        if log_now:  # before clipping: grad_norm/* are the norms clipping sees
            self._param_norms = self._grad_norms()
        if self.clip > 0:
            total = nn.utils.clip_grad_norm_([p for _, p in self.params], self.clip)
            self._clipped += total > self.clip
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.optimizer.step()
        if self.ema is not None:
            self._update_ema()
        self.scheduler.step("step")
        self.progress.step += 1
        self.progress.batch_in_epoch += 1
        self._loss_sum += part
        self._steps += 1
        if real:
            self._train_metrics.update(output, local, loss)

    def _log_train(self, tracker: Tracker, bar: tqdm) -> None:
        """train/loss and train/clipped: means since the last log; grad norms and lr: this step's."""
        names, norms = self._param_norms
        norms_t = torch.stack(norms)
        total = torch.linalg.vector_norm(norms_t)  # the same total clip_grad_norm_ computes
        values = torch.cat([(self._global_loss_sum() / self._steps).view(1), total.view(1),
                            (self._clipped / self._steps).view(1), norms_t]).tolist()  # one host sync
        loss, grad_norm, clipped = values[:3]
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: train/loss is {loss} at step {self.progress.step}; "
                "try a lower optim.lr or trainer.clip_grad_norm"
            )
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": self._lr, "train/clipped": clipped}
        scalars.update({f"grad_norm/{name}": v for name, v in zip(names, values[3:], strict=True)})
        tracker.scalars(scalars, self.progress.step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self._lr:.2e}", refresh=False)
        self._reset_log_interval()

    def _grad_norms(self) -> tuple[list[str], list[Tensor]]:
        named = [(name, p.grad) for name, p in self.params if p.grad is not None]
        return [n for n, _ in named], torch._foreach_norm([g for _, g in named])  # one fused kernel for all

    def _global_loss_sum(self) -> Tensor:
        return self._loss_sum if self.world.size == 1 else distributed.all_reduce_sum(self._loss_sum)

    def _reset_log_interval(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._clipped = torch.zeros((), device=self.device)
        self._steps = 0
        self._param_norms: tuple[list[str], list[Tensor]] | None = None

    def _validate(self, tracker: Tracker) -> bool:
        """Evaluate on val, log, update best and early stopping; True if the monitored metric improved."""
        p = self.progress
        val = self.evaluate("val").compute()
        p.last_val = val
        p.last_train = distributed.reduce_metrics(self._train_metrics).compute()
        self._train_metrics = self.task.new_metrics()
        tracker.scalars({f"val/{k}": v for k, v in val.items()}, p.step)
        # train/loss is logged per step; the other train metrics are means since the last evaluation.
        tracker.scalars({f"train/{k}": v for k, v in p.last_train.items() if k != "loss"}, p.step)
        if self.world.main:
            tracker.text(self.task.samples(self.eval_model), p.step)
        value = val[self.monitor]
        self.scheduler.step("eval", value)
        best = p.best["value"] if p.best else None
        improved = best is None or (value > best if self.maximize else value < best)
        if improved:
            p.best = {"value": value, "step": p.step, "epoch": p.epoch, "val": val}
            p.bad_evals = 0
        else:
            p.bad_evals += 1
            patience = self.t.early_stopping_patience
            if patience and p.bad_evals >= patience:
                p.stopped_early = True
                log.info("early stopping: %s has not improved for %d evaluations", self.t.monitor, patience)
        log.info(
            "epoch %d step %d/%d | %s | %s | best %s %.4f @ step %d",
            p.epoch, p.step, self.total_steps, _fmt({f"train/{k}": v for k, v in p.last_train.items()}),
            _fmt({f"val/{k}": v for k, v in val.items()}), self.t.monitor, p.best["value"], p.best["step"],
        )
        return improved

    def _check_bf16(self) -> None:
        """trainer.precision=bf16: refused where bfloat16 is missing, or emulated (an x86 CPU without AVX512-BF16:
        matrix products measured ~70x slower than float32)."""
        kind = self.device.type
        if kind not in ("cpu", "cuda"):
            raise ConfigError("trainer.precision", f"bf16 autocast runs on cpu and cuda devices, not {kind}: "
                              "set trainer.precision=fp32")
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision", f"{torch.cuda.get_device_name(self.device)} has no bfloat16: "
                              "set trainer.precision=fp32")
        if kind == "cpu" and platform.machine().lower() in ("x86_64", "amd64") and not bf16_products():
            raise ConfigError("trainer.precision", "this CPU has no AVX512-BF16, so bfloat16 products would be "
                              "emulated, far slower than float32: set trainer.precision=fp32")

    def _autocast(self) -> AbstractContextManager:
        """bfloat16 autocast for forward and loss with trainer.precision=bf16 (the LSTM's products included,
        lstm_train/nn/compiled.py); the backward follows the forward's dtypes."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self._bf16 else nullcontext()

    def evaluate(self, split: Split) -> Metrics:
        """The split's accumulated metrics: ``.compute()`` for the numbers, tables and figures for the test.
        Data-parallel, each rank evaluates its share of every batch and the sums are added up. With
        trainer.ema_decay, the moving average of the weights is evaluated."""
        metrics = self.task.new_metrics()
        model = self.eval_model
        model.eval()
        with torch.inference_mode():
            for batch in self.task.eval_batches(split, self.t.eval_batch_size):
                local, real = distributed.shard(batch, self.world)
                if real:
                    local = local.to(self.device)
                    with self._autocast():
                        output = self.task.forward(model, local)
                        loss = self.task.loss(output, local)
                    metrics.update(output, local, loss)
        self.model.train()
        return distributed.reduce_metrics(metrics)

    def _test(self, tracker: Tracker) -> tuple[dict[str, float], str, str | None]:
        """The test metrics, the weights tested (best or last), and why best.pt could not be, if it could not."""
        distributed.barrier()  # rank 0 has written best.pt
        tested, unusable = "last", None
        if self.t.test_checkpoint == "best":
            if self.progress.best is None:
                log.warning("no best yet (no evaluation since the run or its best started): testing the last weights")
            else:
                try:
                    self.eval_model.load_state_dict(self._best_weights())
                    tested = "best"
                except (ValueError, KeyError, RuntimeError) as e:
                    unusable = str(e).splitlines()[0]
                    log.error("%s: testing the last weights instead", unusable)
        metrics = self.evaluate("test")
        test = metrics.compute()
        step = self.progress.step
        tracker.scalars({f"test/{k}": v for k, v in test.items()}, step)
        tracker.text({f"test/{k}": v for k, v in metrics.tables().items()}, step, markdown=True)
        tracker.figures({f"test/{k}": v for k, v in metrics.figures().items()}, step)
        return test, tested, unusable

    def _best_weights(self) -> dict[str, Tensor]:
        """best.pt's evaluated weights, checked to be those of the best step the run records."""
        best = self.checkpoints / "best.pt"
        if not best.is_file():
            raise ValueError(f"{best} is missing")
        held = load_checkpoint(best, map_location=self.device)
        if held["progress"]["step"] != self.progress.best["step"]:
            raise ValueError(f"{best} holds step {held['progress']['step']}, not the best step "
                             f"{self.progress.best['step']}")
        return evaluated_weights(held)


def run_length(t: Mapping[str, Any], steps_per_epoch: int) -> dict[str, int]:
    """The steps, epochs and evaluations of a run with trainer settings ``t`` (a config, or a checkpoint's)."""
    limits = [n for n in (t["max_steps"], t["max_epochs"] and t["max_epochs"] * steps_per_epoch) if n]
    steps = min(limits)
    epochs = math.ceil(steps / steps_per_epoch)
    every = t["eval_every_n_steps"]
    return {"step": steps, "epoch": epochs, "eval": epochs if every is None else math.ceil(steps / every)}


# What trainer.resume needs of a checkpoint beyond what every reader does (the config with its model and task,
# the weights, the task state: checkpoint.contents_problem, run by load_checkpoint), and the types.
RESUMABLE: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict, "scheduler": (dict, type(None)), "progress": dict, "rng": dict,
}


def _check_resumable(path: Path, state: dict[str, Any]) -> None:
    """A ConfigError naming what a loaded checkpoint lacks for a resume (one written by hand, or by another tool)."""
    bad = [k for k, kind in RESUMABLE.items() if k not in state or not isinstance(state[k], kind)]
    bad += [f"config.{g}" for g in ("optim", "scheduler", "trainer") if not isinstance(state["config"].get(g), dict)]
    if isinstance(state.get("progress"), dict):
        fields = {f.name for f in dataclasses.fields(Progress)}
        bad += [f"progress.{k}" for k in sorted(state["progress"].keys() - fields)]
        bad += [] if "step" in state["progress"] else ["progress.step"]
    if bad:
        raise ConfigError("trainer.resume", f"{path} cannot be resumed: {', '.join(dict.fromkeys(bad))} missing or "
                          "not as lstm-train writes them; resume from a checkpoints/last.pt written by lstm-train")


def _held_step(best: Path) -> int | None:
    """The step best.pt holds; None if there is none; a ConfigError if it cannot be read."""
    if not best.is_file():
        return None
    try:
        return load_checkpoint(best)["progress"]["step"]
    except (ValueError, KeyError, TypeError) as e:
        problem = str(e) if isinstance(e, ValueError) else f"{best} has no progress.step"
        raise ConfigError("trainer.resume", f"{problem}; move it away to resume with the best restarted") from e


def _direction(maximize: bool) -> str:
    return "max" if maximize else "min"


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _fmt_seconds(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{s:02d}s" if minutes >= 60 else f"{minutes}m{s:02d}s"


def _fmt_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} (checkpoint {old!r}, now {new!r})" for key, (old, new) in changes.items())
