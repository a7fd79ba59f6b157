"""A trained run from its checkpoint, for the command-line tools: its config, its task (no data) and its model.

A checkpoint is data, and reading one runs no code of its own: its model and task are found by name among the
registered options (:meth:`lstm_train.registry.Registry.named`), and a class from outside the package only once
the user has imported its module (the tools' ``--import MODULE``, :func:`lstm_train.registry.import_named`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lstm_train.errors import ConfigError
from lstm_train.models import MODELS, Model, build_model
from lstm_train.registry import import_named
from lstm_train.runs.checkpoint import checkpoint_file, evaluated_weights, load_checkpoint
from lstm_train.schema import escaped
from lstm_train.tasks import TASKS, Task, build_task


def load_trained(
    path: str | Path, device: str = "cpu", check: Callable[[DictConfig], None] | None = None,
    imports: Iterable[str] = (), note: Callable[[str], None] | None = None,
) -> tuple[DictConfig, Task, Model]:
    """A run's config (brought up to today's keys), task and model (eval mode, on ``device``) from its checkpoint:
    the weights the run evaluated (with trainer.ema_decay, their moving average). ``path``: a checkpoint file, or
    a run dir for the checkpoint it tested (:func:`~lstm_train.runs.checkpoint.checkpoint_file`, which tells
    ``note`` when that is last.pt).

    ``imports``: modules the user names (``--import``), imported first, so that the models and tasks they define
    are registered. ``check`` sees the run's config before anything is built, to refuse a model the caller cannot
    use. The task is rebuilt from its checkpoint state (a vocabulary, say), without its data. Any problem with the
    file, the device or an import is a one-line ValueError (a ConfigError for an import).
    """
    checked_device(device)
    import_named(imports)
    path = checkpoint_file(path, note=note)
    state = load_checkpoint(path, map_location=device)
    config = escaped(state["config"])  # a saved ${ is text, never an interpolation
    try:
        for group, registry in (("task", TASKS), ("model", MODELS)):
            registry.named(config[group])
            # what building would import, were it left in: the class is registered by now, or refused above
            config[group] = {k: v for k, v in config[group].items() if k != "_target_"}
        cfg = OmegaConf.create(config)
        if check is not None:
            check(cfg)
        try:  # plain dicts: read once, escapes kept
            task = build_task(config["task"], state=state["task"])
        except (KeyError, TypeError, IndexError) as e:  # a task state edited or written by something else
            raise ValueError(f"{path}: its task state does not fit task {config['task']['name']} ({e!r})") from None
        model = build_model(config["model"], task)
    except ConfigError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        model.load_state_dict(evaluated_weights(state))
    except RuntimeError as e:  # torch lists every missing and unexpected weight, over many lines
        first = str(e).strip().splitlines()[1:2] or [""]
        raise ValueError(f"{path}: its weights do not fit its model ({first[0].strip().rstrip('.')})") from None
    return cfg, task, model.to(device).eval()


def told(prog: str) -> Callable[[str], None]:
    """A tool's ``note`` for :func:`load_trained`: the line on stderr, after the tool's name."""
    return lambda line: print(f"{prog}: note: {line}", file=sys.stderr)


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """The options every tool that reads a checkpoint has: the device, and the user's own modules to import."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): one that defines a model or task of your own which "
                        "the checkpoint names (its directory on PYTHONPATH); a checkpoint imports nothing itself")


def checked_device(name: str) -> torch.device:
    """A tool's ``--device``, if this machine has it; a one-line ValueError saying what to use instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: not a device; use cpu, cuda, cuda:N or mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        fix = f"use cuda:0 to cuda:{count - 1}" if count else "use --device cpu"
        raise ValueError(f"--device {name}: this torch sees {count} CUDA device(s); {fix}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


class UnknownTokens:
    """Counts the tokens of a tool's inputs that the model's vocabulary lacks, to warn once when they are many:
    a model given input unlike its training data reads it as unknown tokens, and would say nothing."""

    SHARE = 0.2  # from a fifth of the tokens unknown, the input is unlike what the model was trained on

    def __init__(self, cfg: DictConfig, task: Task, share: float = SHARE) -> None:
        self.cfg, self.task, self.share = cfg, task, share  # share: from what share of unknown tokens to warn
        self.examples: dict[str, None] = {}  # the first few unknown tokens, in order, without repeats
        self.unknown = self.total = 0

    def add(self, text: str) -> None:
        unknown, total = self.task.unknown_tokens(text)
        self.unknown, self.total = self.unknown + len(unknown), self.total + total
        for token in unknown[:5]:
            if len(self.examples) < 5:
                self.examples.setdefault(token)

    def warning(self) -> str | None:
        """One line naming the share and what the model was trained on, or None when the share is small."""
        if not self.unknown or self.unknown / self.total < self.share:
            return None
        task = self.cfg.task
        data = next((str(task[k]) for k in ("path", "train", "dataset") if isinstance(task.get(k), str)), None)
        return (f"{self.unknown} of the input's {self.total} tokens ({self.unknown / self.total:.0%}) are not in the "
                f"model's vocabulary and read as unknown ({', '.join(map(repr, self.examples))}); it was trained "
                f"on task={task.name}" + (f" ({data})" if data else ""))
