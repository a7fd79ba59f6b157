"""trainer.resume: continue a run from its checkpoint, with this run's config from the step reached.

A checkpoint that does not fit this run's config (another task, data or model, a key a resumed run cannot change:
:data:`~lstm_train.runs.checkpoint.RESUME_REFUSED`) is a :class:`ConfigError` naming the keys, raised before
anything is written. The other differences take effect: the optimizer's settings (another optimizer starts
afresh), the learning-rate schedule rebuilt over this run's length from the step reached, the best restarted for
another trainer.monitor; the rest is read anew as the run goes. The old run's best.pt is copied over, so 'best'
keeps its meaning.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_train.errors import ConfigError
from lstm_train.runs.checkpoint import (
    RESUME_MODEL_RUNTIME,
    RESUME_REFUSED,
    RESUME_TASK_RUNTIME,
    config_changes,
    copy_checkpoint,
    load_checkpoint,
    resume_file,
    set_rng_state,
)
from lstm_train.schema import as_yaml
from lstm_train.training.budget import TimeBudget
from lstm_train.training.monitor import Monitor, maximizes
from lstm_train.training.optim import Scheduler, optimizer_state_keys
from lstm_train.training.progress import Progress, run_length

if TYPE_CHECKING:
    from lstm_train.training.trainer import Trainer

log = logging.getLogger(__name__)


def resume(trainer: Trainer, path: str | Path) -> None:
    """Bring ``trainer`` (built from this run's config) to the state of the checkpoint at ``path`` (a run dir: its
    checkpoints/last.pt)."""
    path = resume_file(path)
    try:
        state = load_checkpoint(path, map_location=trainer.device)
    except ValueError as e:
        raise ConfigError("trainer.resume", str(e)) from e
    check_resumable(path, state)
    changes = config_changes(state["config"], trainer.config)
    check_fits(trainer, path, state, changes)
    if changes:
        log.warning("resuming with a config that differs from the checkpoint's: %s", fmt_changes(changes))
    progress = trainer.progress = Progress()
    for part in (progress, trainer.monitor, trainer.budget):
        part.load_state_dict(state["progress"])
    optimizer_loaded = resume_optimizer(trainer, state)
    resume_schedule(trainer, state, optimizer_loaded)
    resume_best(trainer, path, state)  # the last check that can refuse: it copies best.pt
    resume_ema(trainer, path, state.get("ema"))
    set_rng_state(state["rng"])
    if state.get("interval") is not None:  # checkpoints written before interruption support have none
        trainer.interval.load_state_dict(state["interval"], trainer.settings.seed, progress.step)
    trainer.resumed_at = progress.step
    trainer.checkpoints.last = path
    log.info("resumed from %s at step %d (epoch %d)", path, progress.step, progress.shown_epoch)


# What a resume needs of a checkpoint beyond what every reader does (the config with its model and task, the
# weights, the task state: checkpoint.contents_problem, run by load_checkpoint), and the types.
RESUMABLE: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict, "scheduler": (dict, type(None)), "progress": dict, "rng": dict,
}
# The keys of a checkpoint's progress: the counters', the monitor's and the time budget's
PROGRESS_KEYS = {f.name for f in dataclasses.fields(Progress)} | set(Monitor.KEYS) | set(TimeBudget.KEYS)


def check_resumable(path: Path, state: dict[str, Any]) -> None:
    """A ConfigError naming what a loaded checkpoint lacks for a resume (one written by hand, or by another tool)."""
    bad = [k for k, kind in RESUMABLE.items() if k not in state or not isinstance(state[k], kind)]
    bad += [f"config.{g}" for g in ("optim", "scheduler", "trainer") if not isinstance(state["config"].get(g), dict)]
    if isinstance(state.get("progress"), dict):
        bad += [f"progress.{k}" for k in sorted(state["progress"].keys() - PROGRESS_KEYS)]
        bad += [] if "step" in state["progress"] else ["progress.step"]
    if bad:
        raise ConfigError("trainer.resume", f"{path} cannot be resumed: {', '.join(dict.fromkeys(bad))} missing or "
                          "not as lstm-train writes them; resume from a checkpoints/last.pt written by lstm-train")


def check_fits(trainer: Trainer, path: Path, state: dict[str, Any], changes: dict[str, tuple[Any, Any]]) -> None:
    """Load the model's weights, or raise a ConfigError naming what makes the checkpoint not fit: another task,
    data, model (a model.* key the weights depend on), or a key of RESUME_REFUSED."""
    task = state["config"]["task"].get("name")
    if task != trainer.task.name:
        raise ConfigError("trainer.resume", f"{path} was trained on task={task}, not task={trainer.task.name}; "
                          f"resume with task={task} and the checkpoint's other settings")
    data = trainer.task.state_dict()
    differing = [k for k in state["task"].keys() | data.keys() if state["task"].get(k) != data.get(k)]
    if differing:
        raise ConfigError(
            "trainer.resume",
            f"{path} was trained on other data: its {', '.join(sorted(differing))} differ from this data's "
            f"({fmt_changes({k: v for k, v in changes.items() if k.startswith('task.')}) or 'same task.* keys'});"
            " resume with the data the run was trained on",
        )
    shaping = {k: v for k, v in changes.items() if k.startswith(("model.", "task."))}
    model_keys = [k for k in changes if k.startswith("model.") and k[6:] not in RESUME_MODEL_RUNTIME]
    try:
        if model_keys:  # the weights' shapes, or their initialisation, which the checkpoint's weights replace
            raise RuntimeError(", ".join(model_keys))
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ConfigError(
            "trainer.resume",
            f"{path} holds a different model: {fmt_changes(shaping) or 'its parameters differ'}; "
            "resume with the checkpoint's values",
        ) from e
    data = {k: v for k, v in changes.items() if k.startswith("task.") and k[5:] not in RESUME_TASK_RUNTIME}
    if data:
        raise ConfigError("trainer.resume", f"{path} was trained on other data: {fmt_changes(data)}; resume "
                          "with the data the run was trained on")
    for key, why in RESUME_REFUSED.items():
        if key in changes:
            old, new = changes[key]
            raise ConfigError("trainer.resume", f"{path} was trained with {key}={old}, not {new}, which a resumed "
                              f"run cannot change ({why}); resume with {key}={old}, or start a new run")


def resume_optimizer(trainer: Trainer, state: dict[str, Any]) -> bool:
    """The checkpoint's optimizer state under this run's optim.* settings; False when it does not fit (another
    optimizer, or one that keeps other state per parameter: Adam's amsgrad, RMSprop's momentum or centered),
    and the optimizer starts afresh: one's state is never loaded into another."""
    optim, optimizer = trainer.config["optim"], trainer.optimizer
    old, new = state["config"]["optim"].get("_target_"), optim["_target_"]
    saved = state["optimizer"].get("state") or {}
    kept = set(next(iter(saved.values()), {}))
    needed = kept if old == new and not saved else optimizer_state_keys(optim)
    if old != new or kept != needed:
        log.warning("the optimizer starts afresh at step %d: the checkpoint's state (%s: %s per parameter) does "
                    "not fit this run's (%s: %s)", trainer.progress.step, old, ", ".join(sorted(kept)) or "none", new,
                    ", ".join(sorted(needed)) or "none")
        return False
    settings = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
                for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, mine in zip(optimizer.param_groups, settings, strict=True):
        group.update(mine)  # this run's betas, weight decay, momentum...; the rates are the schedule's
    return True


def resume_schedule(trainer: Trainer, state: dict[str, Any], optimizer_loaded: bool) -> None:
    """The checkpoint's schedule when this run's is the same (same settings over the same length, the same
    lr and monitor, and for one stepped per evaluation the same cadence); otherwise this run's schedule,
    rebuilt from optim.lr and stepped to the step reached, where a run with it from the start would be (a
    metric-driven one, plateau, starts afresh there)."""
    old, t = state["config"], trainer.settings
    length = run_length(old["trainer"]["max_steps"], old["trainer"]["max_epochs"],
                        old["trainer"]["eval_every_n_steps"], trainer.steps_per_epoch)
    old_settings = Scheduler.resolve(old["scheduler"], length)
    cadence_changed = old["trainer"]["eval_every_n_steps"] != t.eval_every_n_steps  # per evaluation
    scheduler = trainer.scheduler
    if (optimizer_loaded and old_settings == scheduler.settings and old["optim"].get("lr") == trainer.base_lrs[0]
            and not (scheduler.adaptive and monitor_changed(trainer, old["trainer"]))
            and not (scheduler.interval == "eval" and cadence_changed)):
        scheduler.load_state_dict(state["scheduler"])
        return
    for group, lr in zip(trainer.optimizer.param_groups, trainer.base_lrs, strict=True):
        group["lr"] = lr
        group.pop("initial_lr", None)  # else a new scheduler would take the checkpoint's as its base
    scheduler = trainer.scheduler = trainer.new_scheduler()
    p, every = trainer.progress, t.eval_every_n_steps  # in the new length's units
    done = {"step": p.step, "epoch": p.epoch, "eval": p.epoch if every is None else p.step // every}
    scheduler.fast_forward(done[scheduler.interval])
    log.info("learning-rate schedule from step %d: %s", p.step,
             scheduler.describe(trainer.optimizer.param_groups[0]["lr"]))


def old_maximizes(trainer: Trainer, old: dict[str, Any]) -> bool:
    """Whether a checkpoint's trainer settings ``old`` monitor a metric to maximise."""
    return maximizes(old["monitor"], old["monitor_mode"], trainer.task.higher_is_better)


def monitor_changed(trainer: Trainer, old: dict[str, Any]) -> bool:
    monitor = trainer.monitor
    return (old["monitor"], old_maximizes(trainer, old)) != (monitor.name, monitor.maximize)


def resume_best(trainer: Trainer, path: Path, state: dict[str, Any]) -> None:
    """Carry the checkpoint's best over, with its best.pt; restart it for another trainer.monitor.

    Saves write last.pt, then best.pt (Checkpoints.save): a run stopped between the two leaves a last.pt that
    records itself as the best and an older best.pt, repaired here from last.pt. Any other best.pt than the
    one last.pt records is refused, since testing it would test weights the run's record does not name.
    """
    monitor, step, old = trainer.monitor, trainer.progress.step, state["config"]["trainer"]
    if monitor_changed(trainer, old):
        best = monitor.best
        before = "" if best is None else f" (the checkpoint's, {old['monitor']} {best['value']:.4g} at step " \
            f"{best['step']}, is not comparable)"
        log.warning("trainer.monitor is %s (%s) now, %s (%s) in the checkpoint: the best restarts at step %d%s, "
                    "and best.pt will be the best from here", monitor.name, monitor.direction, old["monitor"],
                    "max" if old_maximizes(trainer, old) else "min", step, before)
        monitor.restart()
        return
    if monitor.best is None:
        return
    best, recorded = path.with_name("best.pt"), monitor.best["step"]
    held = held_step(best)
    source = best
    if held != recorded:
        if recorded == step:  # last.pt is that best
            log.warning("%s holds %s, but %s records itself as the best (a stop between the two saves): "
                        "best.pt is made from it", best, "nothing" if held is None else f"step {held}", path)
            source = path
        elif held is None:
            log.warning("no best.pt beside %s, which records its best at step %d: the best restarts at step %d",
                        path, recorded, step)
            monitor.restart()
            return
        else:
            raise ConfigError("trainer.resume", f"{best} holds step {held}, but {path} records its best at step "
                              f"{recorded}: they are not from one run's saves; resume from the last.pt saved "
                              "with that best.pt, or move best.pt away to restart the best")
    mine = trainer.checkpoints.dir / "best.pt"
    if trainer.world.main and source.resolve() != mine.resolve():
        copy_checkpoint(source, mine)


def resume_ema(trainer: Trainer, path: Path, ema: dict[str, Any] | None) -> None:
    if trainer.ema is None:
        if ema is not None:
            log.warning("trainer.ema_decay is null: %s's moving average of the weights is dropped, and val, test "
                        "and best.pt evaluate the weights as trained from step %d", path, trainer.progress.step)
        return
    if ema is None:  # the run was trained without trainer.ema_decay: the average starts at its weights
        log.warning("%s holds no moving average of the weights: trainer.ema_decay starts one at step %d",
                    path, trainer.progress.step)
        trainer.ema.start_from(trainer.model)
        return
    trainer.ema.load_state_dict(ema)


def held_step(best: Path) -> int | None:
    """The step best.pt holds; None if there is none; a ConfigError if it cannot be read."""
    if not best.is_file():
        return None
    try:
        return load_checkpoint(best)["progress"]["step"]
    except (ValueError, KeyError, TypeError) as e:
        problem = str(e) if isinstance(e, ValueError) else f"{best} has no progress.step"
        raise ConfigError("trainer.resume", f"{problem}; move it away to resume with the best restarted") from e


def fmt_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} (checkpoint {as_yaml(old)}, now {as_yaml(new)})" for key, (old, new) in changes.items())
