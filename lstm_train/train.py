"""The entrypoint: ``lstm-train [overrides]`` or ``python -m lstm_train.train [overrides]``.

:func:`train` is the whole run as a plain function of a composed config and an output dir (tests call it
in-process); :func:`hydra_main` is the Hydra app around it; :func:`main` is what the console script runs:
the Hydra app, with every config mistake reported on one line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lstm_train.config import PROJECT_ROOT, ConfigError, describe_config_error, validate
from lstm_train.models import build_model
from lstm_train.tasks import build_task
from lstm_train.trainer import Trainer


def train(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train, evaluate and test as ``cfg`` says, writing events, checkpoints and metrics.json to ``out_dir``.

    Returns the content of metrics.json. Raises :class:`ConfigError` for a config that cannot work.
    """
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    if cfg.trainer.num_threads:
        # Small models spend most of their time in tiny ops; with more threads than free cores each parallel
        # op waits for a scheduler slice (~8 ms measured here), so parallel jobs want one thread each.
        torch.set_num_threads(cfg.trainer.num_threads)
    set_deterministic(cfg.trainer.deterministic)
    torch.manual_seed(cfg.trainer.seed)  # model init; data has its own generators (see tasks.base)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task).to(device)
    trainer = Trainer(cfg, task, model, out_dir, device)
    if cfg.trainer.resume:
        trainer.resume(cfg.trainer.resume)
    return trainer.fit()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"{name} requested but this torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", "mps requested but not available")
    return torch.device(name)


def set_deterministic(on: bool) -> None:
    """Process-wide, so set it both ways: a deterministic run must not leak into the next one in-process."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)


# An absolute path: Hydra reads a relative one as a Python package when lstm_train.train is imported.
@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """One Hydra job. Returns the best monitored value, for sweepers that optimise it (Optuna)."""
    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FloatingPointError) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep: Hydra records it as failed and the sweep goes on (a SystemExit would end the
            # whole sweep, and kill the jobs running beside it); main() reports it when the sweep is over.
            raise
        # SystemExit passes through Hydra's job runner, which would add a line of its own to an Exception.
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    return metrics["best"]["value"] if metrics["best"] else None


def main() -> None:
    """The console script: :func:`hydra_main` with Hydra's composition errors reported on one line too.

    Hydra prints a composition error (wrong type, unknown key, unknown option) over several lines unless
    HYDRA_FULL_ERROR=1, which instead lets the exception through to here; if you set HYDRA_FULL_ERROR=1
    yourself, you get Hydra's full traceback as usual.
    """
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (ConfigError, FloatingPointError) as e:  # a sweep's failed job: Hydra re-raises it after the sweep
        if wants_traceback:
            raise
        print(f"lstm-train: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except Exception as e:
        message = None if wants_traceback else describe_config_error(e)
        if message is None:
            raise
        print(f"lstm-train: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
