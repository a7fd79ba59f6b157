"""The training loop: steps, clipping, scheduling, evaluation, checkpoints, the test. The concerns beside it are
collaborators in lstm_train/training/: monitor, interval_log, budget, averaging, precision, evaluation, checkpoints,
data_parallel, stopping, resume (and callbacks: code from outside run at points of the loop).

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
Between 2 and 3, every ``probe_every_n_steps`` steps, the gate probe (probe.py) logs what the gates do on a fixed
val batch; it works on a copy of the model and changes nothing else.
With ``trainer.max_time``, the budget is read at the end of every step (budget.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lstm_train.config import TrainerConfig, duration_seconds, to_container
from lstm_train.errors import ConfigError, RunError
from lstm_train.models import count_parameters
from lstm_train.runs.checkpoint import atomic_write, rng_state
from lstm_train.schema import to_schema
from lstm_train.tasks import Batch, Metrics, Split, Task, metric_text
from lstm_train.training import data_parallel, distributed, resume, stopping
from lstm_train.training.averaging import WeightAverage
from lstm_train.training.budget import Stopwatch, TimeBudget
from lstm_train.training.callbacks import Callback
from lstm_train.training.checkpoints import Checkpoints
from lstm_train.training.distributed import World
from lstm_train.training.evaluation import Evaluator
from lstm_train.training.interrupt import StopRequest, deferred_signals
from lstm_train.training.interval_log import IntervalLog
from lstm_train.training.monitor import Monitor
from lstm_train.training.optim import Scheduler, build_optimizer
from lstm_train.training.precision import Precision
from lstm_train.training.probe import Probe
from lstm_train.training.progress import Progress, epochs_end_first, run_length
from lstm_train.training.tracking import Tracker

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, task: Task, model: nn.Module, out_dir: str | Path, device: torch.device,
                  world: World = World(), callbacks: Sequence[Callback] = ()) -> Trainer:  # noqa: B008 (frozen)
    """The Trainer ``cfg`` (a composed config) describes: the one place its settings leave the config."""
    return Trainer(to_schema(TrainerConfig, cfg.trainer, "trainer"), to_container(cfg), task, model, out_dir, device,
                   world, callbacks)


class Trainer:
    """Trains ``model`` on ``task`` with the ``settings`` of trainer.*, alone or as one rank of a data-parallel
    ``world`` (lstm_train/training/distributed.py: every rank runs the same loop on its share of each batch; rank
    0 alone writes the run dir). ``config``: the run's resolved config as plain dicts, which checkpoints keep and
    its optim and scheduler are built from."""

    def __init__(
        self, settings: TrainerConfig, config: dict[str, Any], task: Task, model: nn.Module, out_dir: str | Path,
        device: torch.device, world: World = World(), callbacks: Sequence[Callback] = (),  # noqa: B008 (frozen)
    ):
        self.settings = t = settings
        self.config, self.task, self.model, self.device, self.world = config, task, model, device, world
        self.train_model = data_parallel.wrap(model, device, world)  # training's; evaluation uses the model itself
        self.out_dir = Path(out_dir)
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", world)
        self.callbacks = list(callbacks)
        self.num_params = count_parameters(model)
        self.steps_per_epoch = task.steps_per_epoch(t.batch_size)
        self.run_length = run_length(t.max_steps, t.max_epochs, t.eval_every_n_steps, self.steps_per_epoch)
        self.total_steps = self.run_length["step"]
        self.monitor = Monitor.for_task(t.monitor, t.monitor_mode, t.early_stopping_patience, task)
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config["optim"], [p for _, p in self.params])
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]  # optim.lr, before any schedule
        self.scheduler = self.new_scheduler()
        self.ema = None if t.ema_decay is None else WeightAverage(model, t.ema_decay)
        self.eval_model = model if self.ema is None else self.ema.model  # what val, test and samples evaluate
        # Passed only when set: a task written before label smoothing existed has loss(output, batch).
        self.loss_options = {"label_smoothing": t.label_smoothing} if t.label_smoothing else {}
        if self.loss_options and "label_smoothing" not in inspect.signature(task.loss).parameters:
            raise ConfigError("trainer.label_smoothing", f"task {task.name}'s loss takes no label_smoothing: set it "
                              "to 0, or give the task's loss a label_smoothing argument")
        self.precision = Precision(t.precision, device)
        self.evaluator = Evaluator(task, t.eval_batch_size, self.precision, world)
        self.progress = Progress()
        self.budget = TimeBudget(None if t.max_time is None else duration_seconds(t.max_time), t.max_time)
        self.resumed_at: int | None = None  # the step a resumed run started from
        self.interval = IntervalLog(self.params, task, device, world)  # since the last log and evaluation
        self.probe = None
        if t.probe_every_n_steps:
            try:
                self.probe = Probe(task, model, t.probe_size, device)
            except ValueError as e:
                raise ConfigError("trainer.probe_every_n_steps", str(e)) from e

    def new_scheduler(self) -> Scheduler:
        return Scheduler(self.config["scheduler"], self.optimizer, self.run_length, mode=self.monitor.direction)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": {**dataclasses.asdict(self.progress), **self.monitor.state_dict(), **self.budget.state_dict()},
            "ema": None if self.ema is None else self.ema.state_dict(),
            "interval": self.interval.state_dict(),  # what the steps since the last evaluation accumulated
            "rng": rng_state(), "config": self.config, "task": self.task.state_dict(), "num_params": self.num_params,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from the checkpoint at ``path`` (lstm_train/training/resume.py)."""
        resume.resume(self, path)

    def _save(self, improved: bool, elapsed: float | None = None) -> Path:
        """last.pt (and best.pt if ``improved``); ``elapsed``: the time spent to record, if not the clock's now."""
        self.budget.elapsed_s = self.budget.elapsed() if elapsed is None else elapsed
        return self.checkpoints.save(self.state_dict(), improved)  # on every rank: it gathers what each holds

    def fit(self) -> dict[str, Any]:
        """Train, test, write metrics.json; returns its content. A SIGINT or SIGTERM stops the loop after the step in
        progress, saves last.pt at that step and raises :class:`~lstm_train.training.interrupt.Interrupted`
        (interrupt.py); a resumed run then ends with the same numbers."""
        t, p, n = self.settings, self.progress, self.world.size
        where = f"on {self.device}" if n == 1 else f"in {n} processes on {self.device.type} (data-parallel)"
        log.info("%s: %s parameters; %d steps (%d per epoch), batch %d, %s", type(self.model).__name__,
                 f"{self.num_params:,}", self.total_steps, self.steps_per_epoch, t.batch_size, where)
        if note := epochs_end_first(t.max_steps, t.max_epochs, self.steps_per_epoch):
            log.info(note)
        if self.ema is not None:
            self.ema.announce()
        # purge_step: a run resumed into its own dir hides the events a killed process logged after last.pt
        # (those up to the checkpoint's step were logged before it was saved).
        tracker = Tracker(self.out_dir if self.world.main else None,
                          purge_step=None if self.resumed_at is None else self.resumed_at + 1)
        metric_tags = [f"{split}/{m}" for split in ("val", "test") for m in self.task.metric_names]
        tracker.hparams({**self.config, "num_params": self.num_params}, metric_tags)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        self.budget.start(p.step, self.total_steps)
        watch = Stopwatch()
        self.model.train()
        try:
            with deferred_signals() as stop, logging_redirect_tqdm(), tqdm(
                total=self.total_steps, initial=p.step, unit="step", dynamic_ncols=True,
                desc="train" if n == 1 else f"train ({n} processes, {self.device.type})",
                disable=None if t.progress_bar and self.world.main else True, mininterval=1.0,
            ) as bar:
                while ((signum := data_parallel.agreed(stop, self.world)[0]) is None and p.step < self.total_steps
                       and not (self.monitor.stopped_early or self.budget.max_time_reached)):
                    self._run_epoch(tracker, bar, watch, stop)
                if signum is not None:
                    raise stopping.stopped(signum, self._save(improved=False), p.step, self.total_steps)
                elapsed = self.budget.elapsed()
                stopping.at_once_from_now(stop, self.world, lambda signum: stopping.stopped_in_test(
                    signum, p.step, self.total_steps, self.checkpoints.last))
                test, tested, unusable_best = self._test(tracker)
        finally:
            tracker.close()
        result = {
            "train": p.last_train, "val": p.last_val, "test": test, "best": self.monitor.best,
            "test_checkpoint": tested,  # t.test_checkpoint, or last when there was no usable best.pt
            "step": p.step, "epoch": p.shown_epoch, "num_params": self.num_params,
            "stopped_early": self.monitor.stopped_early, "max_time_reached": self.budget.max_time_reached,
            # wall time of this process (a resumed run counts its own part only); elapsed_s: the training loop's,
            # the processes it was resumed from included (what trainer.max_time counts)
            "time": {"total_s": watch.total(), "train_s": watch.spent["train"], "eval_s": watch.spent["eval"],
                     "elapsed_s": elapsed},
        }
        if self.world.main:
            text = json.dumps(result, indent=2) + "\n"
            atomic_write(self.out_dir / "metrics.json", lambda f: f.write(text.encode()))
        log.info("test: %s", _fmt({f"test/{k}": v for k, v in test.items()}))
        if unusable_best:  # the training and its test are saved; best.pt, which the run was to give, is not
            raise RunError(f"{unusable_best}, so the test used the last weights (metrics.json has it, "
                           f"test_checkpoint: last); the trained run is in {self.checkpoints.last}")
        return result

    def _run_epoch(self, tracker: Tracker, bar: tqdm, watch: Stopwatch, stop: StopRequest) -> None:
        t, p, budget = self.settings, self.progress, self.budget
        batches = self.task.train_batches(p.epoch, t.batch_size, t.seed)
        watch.lap()
        for batch in itertools.islice(batches, p.batch_in_epoch, None):  # skips what a resumed run has seen
            step = p.step + 1  # the step about to run
            end_of_epoch = p.batch_in_epoch + 1 == self.steps_per_epoch
            at_limit = step >= self.total_steps
            finished = at_limit or budget.out_of_time
            evaluate = finished or (end_of_epoch if t.eval_every_n_steps is None else step % t.eval_every_n_steps == 0)
            log_now = evaluate or step % t.log_every_n_steps == 0
            self._train_step(batch, log_now)
            bar.update(1)
            if log_now:
                self.interval.write(tracker, bar, p.step)
            if self.probe is not None and self.world.main and step % t.probe_every_n_steps == 0:
                self.probe(self.model).write(tracker, step)
            improved = False
            if evaluate:
                watch.lap("train")
                improved = self._validate(tracker)
            if end_of_epoch:
                self.scheduler.step("epoch")
                p.epoch += 1
                p.batch_in_epoch = 0
            # The budget is read once, and that reading is what the checkpoint records: a run resumed from it
            # decides as this one did (its evaluated step owed, or done).
            now = budget.elapsed()
            signum, save, late = data_parallel.agreed(stop, self.world, budget.runs_out(now))
            budget.after_step(step, now, late, evaluate, at_limit or self.monitor.stopped_early)
            if evaluate:
                self._save(improved, now)
                for callback in self.callbacks:
                    callback.on_evaluated(self, finished)  # after the save: a pruned trial keeps last.pt
                watch.lap("eval")
            if save and signum is None:
                stopping.save_on_request(stop, lambda: self._save(improved=False), p.step)
            if finished or end_of_epoch or self.monitor.stopped_early or budget.max_time_reached or signum is not None:
                break
        watch.lap("train")

    def _train_step(self, batch: Batch, log_now: bool) -> None:
        """One optimizer step on the global ``batch`` (on the CPU), of which this rank computes its share."""
        local, real = distributed.shard(batch, self.world)
        share = data_parallel.loss_share(self.task, local, batch, real, self.world)
        local = local.to(self.device)
        with self.precision.autocast():
            output = self.task.forward(self.train_model, local)
            loss = self.task.loss(output, local, **self.loss_options)
        self.optimizer.zero_grad(set_to_none=True)
        part = data_parallel.backward(loss, share, self.world)  # this rank's part of the batch's mean loss
        if log_now:
            self.interval.take_norms()  # before clipping
        clip = self.settings.clip_grad_norm  # 0 or None: no clipping
        clipped = nn.utils.clip_grad_norm_([p for _, p in self.params], clip) > clip if clip else None
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.scheduler.step("step")
        self.progress.step += 1
        self.progress.batch_in_epoch += 1
        self.interval.add(part, clipped, lr)
        if real:
            self.interval.metrics.update(output, local, loss)
        for callback in self.callbacks:
            callback.on_step_end(self)

    def _validate(self, tracker: Tracker) -> bool:
        """Evaluate on val, log, update best and early stopping; True if the monitored metric improved."""
        p, monitor = self.progress, self.monitor
        p.last_val = val = self.evaluate("val").compute()
        p.last_train = self.interval.take_metrics()
        tracker.scalars({f"val/{k}": v for k, v in val.items()}, p.step)
        # train/loss is logged per step; the other train metrics are means since the last evaluation.
        tracker.scalars({f"train/{k}": v for k, v in p.last_train.items() if k != "loss"}, p.step)
        if self.world.main:
            tracker.text(self.task.samples(self.eval_model), p.step)
        self.scheduler.step("eval", val[monitor.metric])
        improved = monitor.update(val, p.step, p.shown_epoch)
        log.info(
            "epoch %d step %d/%d | %s | %s | best %s %s @ step %d",
            p.shown_epoch, p.step, self.total_steps, _fmt({f"train/{k}": v for k, v in p.last_train.items()}),
            _fmt({f"val/{k}": v for k, v in val.items()}), monitor.name, metric_text(monitor.best["value"]),
            monitor.best["step"],
        )
        return improved

    def evaluate(self, split: Split) -> Metrics:
        """The split's accumulated metrics: ``.compute()`` for the numbers, tables and figures for the test. With
        trainer.ema_decay, the moving average of the weights is evaluated."""
        metrics = self.evaluator.evaluate(self.eval_model, split)
        self.model.train()
        return metrics

    def _test(self, tracker: Tracker) -> tuple[dict[str, float], str, str | None]:
        """The test metrics, the weights tested (best or last), and why best.pt could not be, if it could not."""
        distributed.barrier()  # rank 0 has written best.pt
        tested, unusable = "last", None
        if self.settings.test_checkpoint == "best":
            tested, unusable = self.checkpoints.load_best(self.eval_model, self.monitor.best, self.device)
        return self.evaluator.test(self.eval_model, tracker, self.progress.step), tested, unusable


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {metric_text(v)}" for k, v in metrics.items())
