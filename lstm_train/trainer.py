"""The training loop: steps, clipping, scheduling, evaluation, the best checkpoint, early stopping, resume.

Order of work after each optimizer step (the same in a fresh and a resumed run, which is what makes a
resumed run end with the same numbers):
1. the step-interval scheduler steps;
2. every ``log_every_n_steps`` steps and at each evaluation, the train scalars are written (the gradient
   norms of those steps are taken before clipping);
3. at an evaluation (each epoch, or every ``eval_every_n_steps``, and at the last step): val metrics,
   the eval-interval scheduler, best and early-stopping bookkeeping;
4. at the end of an epoch, the epoch-interval scheduler steps;
5. after an evaluation, checkpoints/last.pt (and best.pt if it improved) hold the state as it is now.
Between 2 and 3, every ``probe_every_n_steps`` steps, the gate probe (lstm_train/probe.py) logs gates, cell
states and dL/dh_t per step on a fixed val batch; it works on a copy of the model and changes nothing else.

Only the cheap part of logging runs every step: the loss and the clipping flag accumulate as tensors
(no host sync); norms per parameter, the one sync and the TensorBoard writes happen on logging steps.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lstm_train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lstm_train.config import ConfigError, to_container
from lstm_train.models import count_parameters
from lstm_train.optim import Scheduler, build_optimizer
from lstm_train.probe import Probe
from lstm_train.tasks import Batch, Metrics, Split, Task
from lstm_train.tracking import Tracker

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: DictConfig, task: Task, model: nn.Module, out_dir: str | Path, device: torch.device):
        self.cfg = cfg
        self.t = t = cfg.trainer
        self.task = task
        self.model = model
        self.device = device
        self.out_dir = Path(out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.config = to_container(cfg)
        self.num_params = count_parameters(model)

        self.steps_per_epoch = task.steps_per_epoch(t.batch_size)
        limits = [n for n in (t.max_steps, t.max_epochs and t.max_epochs * self.steps_per_epoch) if n]
        self.total_steps = min(limits)
        total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        evals = total_epochs if t.eval_every_n_steps is None else math.ceil(self.total_steps / t.eval_every_n_steps)

        self.monitor = t.monitor.removeprefix("val/")
        if self.monitor not in task.metric_names:
            names = ", ".join(f"val/{m}" for m in task.metric_names)
            raise ConfigError("trainer.monitor", f"task {task.name} has no metric {t.monitor}; it has {names}")
        mode = t.monitor_mode
        self.maximize = task.higher_is_better[self.monitor] if mode == "auto" else mode == "max"

        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, [p for _, p in self.params])
        self.scheduler = Scheduler(
            cfg.scheduler, self.optimizer, {"step": self.total_steps, "epoch": total_epochs, "eval": evals},
            mode="max" if self.maximize else "min",
        )
        self.clip = t.clip_grad_norm or 0.0

        # Progress: everything a checkpoint must restore besides model, optimizer, scheduler and RNG.
        self.step = 0  # optimizer steps done
        self.epoch = 0  # the epoch in progress
        self.batch_in_epoch = 0  # its batches done
        self.best: dict[str, Any] | None = None  # {"value", "step", "epoch", "val"}
        self.bad_evals = 0
        self.stopped_early = False
        self.last_val: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
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
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "best": self.best,
                "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early,
                "last_val": self.last_val,
                "last_train": self.last_train,
            },
            "rng": rng_state(),
            "config": self.config,
            "task": self.task.state_dict(),
            "num_params": self.num_params,
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint. The old run's best.pt is copied over, so 'best' keeps its meaning."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError("trainer.resume", f"no checkpoint file at {path}")
        try:
            state = load_checkpoint(path, map_location=self.device)
        except Exception as e:  # unpickling and format errors alike: report them on one line
            raise ConfigError("trainer.resume", f"cannot read {path}: {str(e).splitlines()[0]}") from e
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ConfigError(
                "trainer.resume", f"{path} holds a different model; resume with the model.* it was trained with"
            ) from e
        for group in ("model", "task", "optim", "scheduler"):
            if state["config"].get(group) != self.config.get(group):
                log.warning("resuming with %s.* different from the checkpoint's", group)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
        self.best, self.bad_evals = progress["best"], progress["bad_evals"]
        self.stopped_early = progress["stopped_early"]
        self.last_val, self.last_train = progress["last_val"], progress["last_train"]
        set_rng_state(state["rng"])
        best = path.with_name("best.pt")
        if best.is_file() and best.resolve() != (self.checkpoints / "best.pt").resolve():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            shutil.copy2(best, self.checkpoints / "best.pt")
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    def _save(self, improved: bool) -> None:
        state = self.state_dict()
        save_checkpoint(self.checkpoints / "last.pt", state)
        if improved:
            save_checkpoint(self.checkpoints / "best.pt", state)

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train, test, write metrics.json; returns its content."""
        t = self.t
        log.info(
            "%s: %s parameters; %d steps (%d per epoch), batch %d, on %s",
            type(self.model).__name__, f"{self.num_params:,}", self.total_steps, self.steps_per_epoch,
            t.batch_size, self.device,
        )
        tracker = Tracker(self.out_dir)
        metric_tags = [f"{split}/{m}" for split in ("val", "test") for m in self.task.metric_names]
        tracker.hparams({**self.config, "num_params": self.num_params}, metric_tags)
        clock = {"train": 0.0, "eval": 0.0}
        start = time.perf_counter()
        self.model.train()
        try:
            with logging_redirect_tqdm(), tqdm(
                total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                disable=None if t.progress_bar else True, mininterval=1.0,
            ) as bar:
                while self.step < self.total_steps and not self.stopped_early:
                    self._run_epoch(tracker, bar, clock)
            test = self._test(tracker)
        finally:
            tracker.close()
        total = time.perf_counter() - start
        result = {
            "train": self.last_train,
            "val": self.last_val,
            "test": test,
            "best": self.best,
            "test_checkpoint": t.test_checkpoint,
            "step": self.step,
            "epoch": self.epoch,
            "num_params": self.num_params,
            "stopped_early": self.stopped_early,
            # wall time of this process (a resumed run counts its own part only)
            "time": {"total_s": total, "train_s": clock["train"], "eval_s": clock["eval"]},
        }
        (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info("test: %s", _fmt({f"test/{k}": v for k, v in test.items()}))
        return result

    def _run_epoch(self, tracker: Tracker, bar: tqdm, clock: dict[str, float]) -> None:
        t = self.t
        batches = self.task.train_batches(self.epoch, t.batch_size, t.seed)
        tic = time.perf_counter()
        for batch in itertools.islice(batches, self.batch_in_epoch, None):  # skips what a resumed run has seen
            step = self.step + 1  # the step about to run
            end_of_epoch = self.batch_in_epoch + 1 == self.steps_per_epoch
            finished = step >= self.total_steps
            every = t.eval_every_n_steps
            evaluate = finished or (end_of_epoch if every is None else step % every == 0)
            log_now = evaluate or step % t.log_every_n_steps == 0
            self._train_step(batch.to(self.device), log_now)
            bar.update(1)
            if log_now:
                self._log_train(tracker, bar)
            if self.probe is not None and step % t.probe_every_n_steps == 0:
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
                self.epoch += 1
                self.batch_in_epoch = 0
            if evaluate:
                self._save(improved)
                tic = time.perf_counter()
                clock["eval"] += tic - toc
            if finished or end_of_epoch or self.stopped_early:
                break
        clock["train"] += time.perf_counter() - tic

    def _train_step(self, batch: Batch, log_now: bool) -> None:
        output = self.task.forward(self.model, batch)
        loss = self.task.loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if log_now:  # before clipping: grad_norm/* are the norms clipping sees
            self._param_norms = self._grad_norms()
        if self.clip > 0:
            total = nn.utils.clip_grad_norm_([p for _, p in self.params], self.clip)
            self._clipped += total > self.clip
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step("step")
        self.step += 1
        self.batch_in_epoch += 1
        self._loss_sum += loss.detach()
        self._steps += 1
        self._train_metrics.update(output, batch, loss)

    def _log_train(self, tracker: Tracker, bar: tqdm) -> None:
        """train/loss and train/clipped: means since the last log; grad norms and lr: this step's."""
        names, norms = self._param_norms
        norms_t = torch.stack(norms)
        total = torch.linalg.vector_norm(norms_t)  # the same total clip_grad_norm_ computes
        values = torch.cat([(self._loss_sum / self._steps).view(1), total.view(1),
                            (self._clipped / self._steps).view(1), norms_t]).tolist()  # one host sync
        loss, grad_norm, clipped = values[:3]
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: train/loss is {loss} at step {self.step}; "
                "try a lower optim.lr or trainer.clip_grad_norm"
            )
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": self._lr, "train/clipped": clipped}
        scalars.update({f"grad_norm/{name}": v for name, v in zip(names, values[3:], strict=True)})
        tracker.scalars(scalars, self.step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self._lr:.2e}", refresh=False)
        self._reset_log_interval()

    def _grad_norms(self) -> tuple[list[str], list[Tensor]]:
        named = [(name, p.grad) for name, p in self.params if p.grad is not None]
        return [n for n, _ in named], torch._foreach_norm([g for _, g in named])  # one fused kernel for all

    def _reset_log_interval(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._clipped = torch.zeros((), device=self.device)
        self._steps = 0
        self._param_norms: tuple[list[str], list[Tensor]] | None = None

    def _validate(self, tracker: Tracker) -> bool:
        """Evaluate on val, log, update best and early stopping; True if the monitored metric improved."""
        val = self.evaluate("val").compute()
        self.last_val = val
        self.last_train = self._train_metrics.compute()
        self._train_metrics = self.task.new_metrics()
        tracker.scalars({f"val/{k}": v for k, v in val.items()}, self.step)
        # train/loss is logged per step; the other train metrics are means since the last evaluation.
        tracker.scalars({f"train/{k}": v for k, v in self.last_train.items() if k != "loss"}, self.step)
        tracker.text(self.task.samples(self.model), self.step)
        value = val[self.monitor]
        self.scheduler.step("eval", value)
        best = self.best["value"] if self.best else None
        improved = best is None or (value > best if self.maximize else value < best)
        if improved:
            self.best = {"value": value, "step": self.step, "epoch": self.epoch, "val": val}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            patience = self.t.early_stopping_patience
            if patience and self.bad_evals >= patience:
                self.stopped_early = True
                log.info("early stopping: %s has not improved for %d evaluations", self.t.monitor, patience)
        log.info(
            "epoch %d step %d/%d | %s | %s | best %s %.4f @ step %d",
            self.epoch, self.step, self.total_steps, _fmt({f"train/{k}": v for k, v in self.last_train.items()}),
            _fmt({f"val/{k}": v for k, v in val.items()}), self.t.monitor, self.best["value"], self.best["step"],
        )
        return improved

    def evaluate(self, split: Split) -> Metrics:
        """The split's accumulated metrics: ``.compute()`` for the numbers, tables and figures for the test."""
        metrics = self.task.new_metrics()
        self.model.eval()
        with torch.inference_mode():
            for batch in self.task.eval_batches(split, self.t.eval_batch_size):
                batch = batch.to(self.device)
                output = self.task.forward(self.model, batch)
                metrics.update(output, batch, self.task.loss(output, batch))
        self.model.train()
        return metrics

    def _test(self, tracker: Tracker) -> dict[str, float]:
        best = self.checkpoints / "best.pt"
        if self.t.test_checkpoint == "best":
            if best.is_file():
                self.model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
            else:
                log.warning("no best.pt (no evaluation happened): testing the last weights")
        metrics = self.evaluate("test")
        test = metrics.compute()
        tracker.scalars({f"test/{k}": v for k, v in test.items()}, self.step)
        tracker.text({f"test/{k}": v for k, v in metrics.tables().items()}, self.step, markdown=True)
        tracker.figures({f"test/{k}": v for k, v in metrics.figures().items()}, self.step)
        return test


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())

