"""The entrypoint: ``lstm-train [overrides]`` or ``python -m lstm_train.train [overrides]``.

:func:`train` is the whole run as a plain function of a composed config and an output dir (tests call it
in-process); :func:`hydra_main` is the Hydra app around it; :func:`main` is what the console script runs:
the Hydra app, with every config mistake and every interruption reported on one line and a non-zero exit
instead of a traceback (lstm_train/cli/report.py). How many processes train, and on which devices:
lstm_train/cli/launch.py.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lstm_train.cli import launch, report
from lstm_train.config import CONFIG_PACKAGE, group_keys, to_container, validate
from lstm_train.errors import ConfigError, command, quiet_broken_pipe
from lstm_train.models import build_model
from lstm_train.runs import provenance, rundir
from lstm_train.runs.rundir import resume_path
from lstm_train.tasks import build_task
from lstm_train.training import distributed, pruning
from lstm_train.training.callbacks import Callback
from lstm_train.training.distributed import World
from lstm_train.training.interrupt import Interrupted, raise_on_signals
from lstm_train.training.trainer import build_trainer

log = logging.getLogger(__name__)


def train(cfg: DictConfig, out_dir: str | Path, world: World = World(),  # noqa: B008 (frozen)
          callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train, evaluate and test as ``cfg`` says, writing events, checkpoints and metrics.json to ``out_dir``;
    ``callbacks`` run at points of the loop (lstm_train/training/callbacks.py).

    ``world``: this process's rank among the processes that train the model together
    (lstm_train/training/distributed.py).
    Returns the content of metrics.json. Raises :class:`ConfigError` for a config that cannot work, and
    :class:`~lstm_train.training.interrupt.Interrupted` after saving last.pt when a SIGINT or SIGTERM stops it.
    """
    validate(cfg)
    out_dir = Path(out_dir)
    resume = resume_path(cfg.trainer.resume, out_dir)
    if cfg.trainer.resume == "auto" and resume is None:
        log.info("trainer.resume=auto: no %s yet, starting afresh", out_dir / "checkpoints" / "last.pt")
    device = distributed.rank_device(launch.resolve_device(cfg.trainer.device), world)
    distributed.init(world)
    if cfg.trainer.num_threads:
        # Small models spend most of their time in tiny ops; with more threads than free cores each parallel
        # op waits for a scheduler slice (~8 ms measured here), so parallel jobs want one thread each.
        torch.set_num_threads(cfg.trainer.num_threads)
    set_deterministic(cfg.trainer.deterministic)
    torch.manual_seed(cfg.trainer.seed)  # model init; data has its own generators (see tasks.base)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task).to(device)
    callbacks = [*callbacks, *pruning.trial_callbacks(cfg.trainer.monitor, world.size)]  # in an Optuna trial
    trainer = build_trainer(cfg, task, model, out_dir, device, world, callbacks)
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit()


def set_deterministic(on: bool) -> None:
    """Process-wide, so set it both ways: a deterministic run must not leak into the next one in-process."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """One Hydra job. Returns the best monitored value, for sweepers that optimise it (Optuna)."""
    out_dir = HydraConfig.get().runtime.output_dir
    world = World.from_env()
    if not world.main:  # a submitit task of rank > 0 ran Hydra too: it follows rank 0, writing nothing
        launch.follow(world)
        return None
    log.info("run dir: %s", out_dir)
    hydra_cfg = HydraConfig.get()
    cfg.trainer.resume = rundir.job_resume(cfg.trainer.resume, hydra_cfg, Path(out_dir))
    if cfg.trainer.resume == "auto":
        rundir.warn_if_never_resumed(hydra_cfg, Path(out_dir))
    try:
        with report.job_errors(), rundir.claim(Path(out_dir), undo_if_refused=hydra_cfg.mode == RunMode.RUN):
            provenance.record(Path(out_dir), cfg)
            if world.size > 1:  # started from outside (torchrun, srun, submitit): this is rank 0
                launch.check_devices(cfg, world)
                distributed.init(world)
                distributed.announce({"config": to_container(cfg), "out_dir": out_dir})
                metrics = train(cfg, out_dir, world)
            elif cfg.trainer.devices > 1:
                metrics = launch.spawn(cfg, out_dir)
            else:
                metrics = train(cfg, out_dir)
    finally:
        distributed.announce(None)  # if rank 0 failed before announcing, the other ranks stop too
        distributed.finish()
    log.info("done: %s/metrics.json; to watch it: %s --logdir %s", out_dir, command("tensorboard"),
             shlex.quote(out_dir))
    return metrics["best"]["value"] if metrics["best"] else None


def main() -> None:
    """The console script: :func:`hydra_main` with Hydra's composition errors reported on one line too.

    Hydra prints a composition error (wrong type, unknown key, unknown option) over several lines unless
    HYDRA_FULL_ERROR=1, which instead lets the exception through to here; if you set HYDRA_FULL_ERROR=1
    yourself, you get Hydra's full traceback as usual.
    """
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    with report.hydra_full_error():
        _main(wants_traceback)


def version() -> str:
    """What ``lstm-train --version`` prints: lstm-train's version, then Hydra's and torch's."""
    try:
        own = importlib.metadata.version("lstm-train")
    except importlib.metadata.PackageNotFoundError:  # a source tree run with python -m, not installed
        own = "(not installed)"
    return f"lstm-train {own} (Hydra {hydra.__version__}, torch {torch.__version__})"


def check_options(args: list[str]) -> None:
    """A ConfigError for an ``--option`` that Hydra's command line does not have (``--max_steps 10``), which its
    parser reports with its usage over eight lines: lstm-train's settings are key=value overrides."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses: its flags, read

    flags = list(get_args_parser()._option_string_actions)
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is overrides only
            return
        flag, equals, value = arg.partition("=")
        if not flag.startswith("--") or any(f.startswith(flag) for f in flags):  # argparse takes a unique prefix
            continue
        name = flag[2:].replace("-", "_")
        key = next((k for k in group_keys() if k.rpartition(".")[2] == name), name)
        value = value if equals else report.value_after(args, i)
        raise ConfigError(flag, f"not an option of lstm-train; settings are key=value overrides: {key}={value}")


def _main(wants_traceback: bool) -> None:
    raise_on_signals()
    world = World.from_env()
    if world.size > 1:  # torchrun / srun: only rank 0 runs Hydra; the others follow it
        distributed.init(world)
        if not world.main:
            try:
                launch.follow(world)
            except Interrupted as e:
                sys.exit(e.exit_code)
            return
    try:
        with report.console_errors(wants_traceback), quiet_broken_pipe():  # --help | head: quiet, not an OSError
            if "--version" in sys.argv[1:]:  # Hydra's own would say only "Hydra 1.3.8"
                print(version())
                return
            sys.argv = provenance.rerun_argv(sys.argv)  # lstm-train --rerun RUN_DIR [overrides]
            check_options(sys.argv[1:])
            hydra_main()
    finally:  # rank 0 of a world started from outside, stopped before it announced what to train
        distributed.announce(None)
        distributed.finish()


if __name__ == "__main__":
    # The module's own main, not this __main__ copy's: a parallel launcher (joblib) pickles the task function by
    # reference to its module, which must be importable by name (as it is for the console script).
    from lstm_train.train import main as module_main

    module_main()
