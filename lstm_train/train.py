"""The entrypoint: ``lstm-train [overrides]`` or ``python -m lstm_train.train [overrides]``.

:func:`train` is the whole run as a plain function of a composed config and an output dir (tests call it
in-process); :func:`hydra_main` is the Hydra app around it; :func:`main` is what the console script runs:
the Hydra app, with every config mistake and every interruption reported on one line and a non-zero exit
instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lstm_train.config import CONF_DIR, CONFIG_PACKAGE, ConfigError, describe_config_error, to_container, validate
from lstm_train.errors import RunError
from lstm_train.models import build_model
from lstm_train.runs import rundir
from lstm_train.runs.rundir import resume_path
from lstm_train.schema import escaped
from lstm_train.tasks import build_task
from lstm_train.training import distributed
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
    device = distributed.rank_device(resolve_device(cfg.trainer.device), world)
    distributed.init(world)
    if cfg.trainer.num_threads:
        # Small models spend most of their time in tiny ops; with more threads than free cores each parallel
        # op waits for a scheduler slice (~8 ms measured here), so parallel jobs want one thread each.
        torch.set_num_threads(cfg.trainer.num_threads)
    set_deterministic(cfg.trainer.deterministic)
    torch.manual_seed(cfg.trainer.seed)  # model init; data has its own generators (see tasks.base)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task).to(device)
    trainer = build_trainer(cfg, task, model, out_dir, device, world, callbacks)
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", f"{name} requested but this torch sees no CUDA device")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError("trainer.device", f"{name} requested but this machine has {count} CUDA device(s): "
                              f"use cuda:0 to cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", "mps requested but not available")
    return torch.device(name)


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
        follow(world)
        return None
    log.info("run dir: %s", out_dir)
    hydra_cfg = HydraConfig.get()
    if cfg.trainer.resume == "auto":
        rundir.warn_if_never_resumed(hydra_cfg, Path(out_dir))
    try:
        with rundir.claim(Path(out_dir), undo_if_refused=hydra_cfg.mode == RunMode.RUN):
            if world.size > 1:  # started from outside (torchrun, srun, submitit): this is rank 0
                check_devices(cfg, world)
                distributed.init(world)
                distributed.announce({"config": to_container(cfg), "out_dir": out_dir})
                metrics = train(cfg, out_dir, world)
            elif cfg.trainer.devices > 1:
                metrics = spawn(cfg, out_dir)
            else:
                metrics = train(cfg, out_dir)
    except (ConfigError, FloatingPointError, RunError) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep: Hydra records it as failed and the sweep goes on (a SystemExit would end the
            # whole sweep, and kill the jobs running beside it); main() reports it when the sweep is over.
            log_to_file(f"lstm-train: error: {e}")
            raise
        # SystemExit passes through Hydra's job runner, which would add a line of its own to an Exception.
        fail(f"lstm-train: error: {e}", 2 if isinstance(e, ConfigError) else 1)
    except OSError as e:  # a full disk or a run dir gone read-only: the checkpoints saved so far are intact
        fail(f"lstm-train: error: {describe_os_error(e)}", 1)
    except RuntimeError as e:
        if not distributed.peer_gone(e):
            raise
        fail(f"lstm-train: error: {distributed.PEER_GONE}", 1)
    except Interrupted as e:
        if e.checkpoint is None:
            log_to_file(str(e))
            raise
        # Stopped cleanly at a step: say how to go on from there.
        message = f"{e}; resume with: {resume_command(e.checkpoint)}"
        log_to_file(message)
        raise Interrupted(e.signum, message, e.checkpoint) from None
    finally:
        distributed.announce(None)  # if rank 0 failed before announcing, the other ranks stop too
        distributed.finish()
    log.info("done: %s/metrics.json; to watch it: %s --logdir %s", out_dir, command("tensorboard"),
             shlex.quote(out_dir))
    return metrics["best"]["value"] if metrics["best"] else None


def resume_command(checkpoint: Path) -> str:
    """The command line that continues this job: its own overrides, with trainer.resume pointing at ``checkpoint``."""
    overrides = HydraConfig.get().overrides
    kept = [o for o in overrides.task if not o.startswith("trainer.resume=")]
    kept += [o for o in overrides.hydra if o.startswith("hydra.run.dir=")]  # the same dir, if the user chose it
    program = command("lstm-train") if World.from_env().size == 1 else "<your torchrun/srun command> lstm_train.train"
    return f"{program} {shlex.join([*kept, f'trainer.resume={checkpoint.resolve()}'])}"


def command(name: str) -> str:
    """How to run the console script ``name`` installed beside this Python: by name if that is what the shell
    finds on PATH, else by its full path (a venv that is not activated)."""
    script = Path(sys.executable).with_name(name)
    found = shutil.which(name)
    if not script.is_file() or (found is not None and os.path.samefile(found, script)):
        return name
    return shlex.quote(str(script))


def check_devices(cfg: DictConfig, world: World) -> None:
    if cfg.trainer.devices not in (1, world.size):
        raise ConfigError("trainer.devices", f"{cfg.trainer.devices}, but the launcher started {world.size} "
                          "processes (WORLD_SIZE); leave trainer.devices at 1 when torchrun or srun starts them")


# ---- data-parallel processes ----------------------------------------------------------------------------
def spawn(cfg: DictConfig, out_dir: str) -> dict[str, Any]:
    """trainer.devices=N: start N workers on this machine with torch's elastic launcher (torchrun's engine),
    wait for them and return rank 0's metrics. The workers report their own errors; their exit status is ours."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    validate(cfg)  # before starting N processes that would each report the same mistake
    resume_path(cfg.trainer.resume, Path(out_dir))
    if resolve_device(cfg.trainer.device).type == "cuda" and torch.cuda.device_count() < cfg.trainer.devices:
        raise ConfigError("trainer.devices", f"{cfg.trainer.devices} processes on CUDA need as many GPUs; this "
                          f"machine has {torch.cuda.device_count()}")
    launch = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=cfg.trainer.devices, run_id=f"lstm-train-{os.getpid()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
        shutdown_timeout=300,  # a stopped worker finishes its step and saves before it exits
    )
    payload = {"config": to_container(cfg), "out_dir": out_dir,
               "resume": resume_command(Path(out_dir) / "checkpoints" / "last.pt")}
    # The launcher's own progress notes, and its multi-line report of a worker that failed: the worker said why.
    for name in ("torch.distributed", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return elastic_launch(launch, spawned_worker)(payload)[0]
    except SignalException as e:  # the workers got the signal too, stopped cleanly and said so
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:  # rank 0 printed why, unless a signal killed a worker
        rank, failure = min(e.failures.items())
        code = failure.exitcode
        if code < 0:  # killed by a signal (the OOM killer, say): nothing of ours said so
            last = Path(out_dir) / "checkpoints" / "last.pt"
            saved = f"; {last} holds the last evaluation: resume with: {payload['resume']}" if last.is_file() else ""
            print(f"lstm-train: error: rank {rank}'s process was killed by signal {-code}{saved}", file=sys.stderr)
        sys.exit(128 - code if code < 0 else code)


def spawned_worker(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A process started by :func:`spawn` (its rank and the rendezvous are in the environment)."""
    world = World.from_env()
    raise_on_signals()
    distributed.setup_worker_logging(world, payload["out_dir"])
    cfg = OmegaConf.create(escaped(payload["config"]))
    if cfg.trainer.num_threads is None:  # the cores shared out, as torchrun's OMP_NUM_THREADS=1 does for 2
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return run_worker(cfg, payload["out_dir"], world, payload["resume"])


def follow(world: World) -> None:
    """A rank > 0 started from outside: train what rank 0 announces, into rank 0's run dir."""
    distributed.init(world)
    distributed.setup_worker_logging(world, None)
    payload = distributed.receive()
    if payload is None:  # rank 0 stopped before training, and said why
        distributed.finish()
        sys.exit(1)
    run_worker(OmegaConf.create(escaped(payload["config"])), payload["out_dir"], world, None)


def run_worker(cfg: DictConfig, out_dir: str, world: World, resume: str | None) -> dict[str, Any] | None:
    """Train as one rank; rank 0 reports an error or an interruption on one line, every rank exits with it."""
    try:
        return train(cfg, out_dir, world)
    except (ConfigError, FloatingPointError, RunError) as e:
        if world.main:
            fail(f"lstm-train: error: {e}", 2 if isinstance(e, ConfigError) else 1)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except OSError as e:
        if world.main:
            fail(f"lstm-train: error: {describe_os_error(e)}", 1)
        sys.exit(1)
    except RuntimeError as e:  # rank 0 failed to write, say, and ended while this rank waited for it
        if not distributed.peer_gone(e):
            raise
        fail(f"lstm-train: {'error' if world.main else f'rank {world.rank}'}: {distributed.PEER_GONE}", 1)
    except Interrupted as e:
        if world.main:
            message = f"lstm-train: {e}" + (f"; resume with: {resume}" if e.checkpoint and resume else "")
            print(message, file=sys.stderr)
            log_to_file(message)
        sys.exit(e.exit_code)
    finally:
        distributed.finish()


def fail(message: str, status: int) -> None:
    """Print the one-line error, keep it in the run's train.log too, and exit."""
    print(message, file=sys.stderr)
    log_to_file(message)
    sys.exit(status)


def log_to_file(message: str) -> None:
    """Write a line to the run's train.log only (the console gets its own line on stderr)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main() -> None:
    """The console script: :func:`hydra_main` with Hydra's composition errors reported on one line too.

    Hydra prints a composition error (wrong type, unknown key, unknown option) over several lines unless
    HYDRA_FULL_ERROR=1, which instead lets the exception through to here; if you set HYDRA_FULL_ERROR=1
    yourself, you get Hydra's full traceback as usual.
    """
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    with _hydra_full_error():
        _main(wants_traceback)


@contextlib.contextmanager
def _hydra_full_error() -> Iterator[None]:
    """HYDRA_FULL_ERROR=1 while Hydra runs, so that its errors reach us as exceptions; put back afterwards."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _main(wants_traceback: bool) -> None:
    raise_on_signals()
    world = World.from_env()
    if world.size > 1:  # torchrun / srun: only rank 0 runs Hydra; the others follow it
        distributed.init(world)
        if not world.main:
            try:
                follow(world)
            except Interrupted as e:
                sys.exit(e.exit_code)
            return
    try:
        hydra_main()
    except Interrupted as e:
        print(f"lstm-train: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except rundir.Refused as e:  # before Hydra made or touched the run dir
        if wants_traceback:
            raise e.error from None
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (ConfigError, FloatingPointError, RunError) as e:  # a sweep's failed job: Hydra re-raises it after the sweep
        if wants_traceback:
            raise
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except Exception as e:
        message = None if wants_traceback else describe_override_error(e, sys.argv[1:]) or describe_config_error(e)
        status = 2
        if message is None and not wants_traceback and isinstance(e, OSError):  # Hydra could not make the run dir
            message, status = describe_os_error(e), 1
        if message is None:
            raise
        print(f"lstm-train: error: {message}", file=sys.stderr)
        sys.exit(status)
    finally:  # rank 0 of a world started from outside, stopped before it announced what to train
        distributed.announce(None)
        distributed.finish()


def describe_os_error(error: OSError) -> str:
    """One line for a file the run could not write (or make), saying what to check."""
    where = f"{error.filename}: " if error.filename else ""
    return (f"{where}{error.strerror or error}; the run dir must be writable with free space: free some, or "
            "choose another with hydra.run.dir=DIR (checkpoints already saved are intact)")


def describe_override_error(error: BaseException, args: list[str]) -> str | None:
    """One line for the command-line mistakes Hydra reports over many lines: a group given a value such as
    ``debug=true``, and a comma list (a sweep) without ``-m``."""
    text = str(error)
    if "Config group override must be a string or a list" in text:
        groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}
        for arg in args:
            group, _, value = arg.partition("=")
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if group in groups else []
            if options and value not in (*options, "null"):
                return (f"{arg}: {group} is a config group, not a value; choose one of its options: "
                        f"{', '.join(f'{group}={o}' for o in options)}")
    if text.startswith("Ambiguous value for argument"):
        arg = text.split("'")[1] if "'" in text else text
        key = arg.partition("=")[0]
        return f"{arg}: a comma list is a sweep: add -m (--multirun); for a list value write {key}=[a,b]"
    return None


if __name__ == "__main__":
    # The module's own main, not this __main__ copy's: a parallel launcher (joblib) pickles the task function by
    # reference to its module, which must be importable by name (as it is for the console script).
    from lstm_train.train import main as module_main

    module_main()
