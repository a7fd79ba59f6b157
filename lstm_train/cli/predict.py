"""``lstm-predict``: run a checkpoint on new input, from arguments or stdin (one input per line).

``lstm-predict CKPT "The jury said ." "It rained ."`` or ``... CKPT < sentences.txt``. The checkpoint
carries everything: the resolved config rebuilds the task's vocabulary (no data needed) and the model.

The checkpoint's task does the work: :meth:`~lstm_train.tasks.Task.predict_line` turns one input line into the
text to print for it, with the options the task declares in ``predict_options`` (a tagging task's ``--format``,
a seq2seq task's ``--beam-size``, a classification task's ``--top`` and ``--json``); this module knows no task
and no model by name. A checkpoint whose task has no ``predict_line`` is a one-line error naming the models that
work, as are a missing or unreadable checkpoint and an input the task cannot read; every user mistake exits with
status 2. When a large share of the input is outside the model's vocabulary, one warning line says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from lstm_train.errors import UsageError, one_line_errors
from lstm_train.models import models_for
from lstm_train.registry import implements
from lstm_train.runs.trained import UnknownTokens, add_checkpoint_options, load_trained, told
from lstm_train.tasks import TASKS, Task


def load(path: str | Path, device: str = "cpu", imports: Sequence[str] = ()) -> tuple[nn.Module, Task, DictConfig]:
    """The model (eval mode), its task (vocabulary only, no data) and the run's config, from a checkpoint."""

    def check(cfg: DictConfig) -> None:
        handled = models_for(TASKS.supporting("predict_line"))
        if cfg.model.name not in handled or not implements(TASKS.named(cfg.task), "predict_line"):
            samplers = ", ".join(models_for(TASKS.supporting("generate")))
            elsewhere = f" ({samplers} models: lstm-generate)" if samplers else ""
            raise UsageError(f"{Path(path).expanduser()} holds a {cfg.model.name} model; lstm-predict handles "
                             f"{', '.join(handled)} models{elsewhere}")

    try:
        cfg, task, model = load_trained(path, device, check, imports, told("lstm-predict"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return model, task, cfg


def task_options() -> dict[str, dict[str, Any]]:
    """Every option a task that lstm-predict can use declares: flag -> argparse keywords."""
    options: dict[str, dict[str, Any]] = {}
    for task in TASKS.supporting("predict_line"):
        options.update(task.predict_options)
    return options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lstm-predict",
        description="Classify texts or sequences, tag sentences, or transduce inputs with a checkpoint: from the "
        "arguments, or one per line from stdin.",
    )
    p.add_argument("checkpoint", help="a run dir (its checkpoints/best.pt) or a checkpoint file written by lstm-train")
    # default=[]: optional (a "*" positional without a default is listed as required when the others are missing)
    p.add_argument("inputs", nargs="*", default=[], help="inputs, one per argument (none: read stdin, one per line)")
    for flag, keywords in task_options().items():
        p.add_argument(flag, **keywords)
    add_checkpoint_options(p)
    return p.parse_intermixed_args(argv)  # options may come after the inputs


def run(args: argparse.Namespace, lines: Iterable[str]) -> None:
    model, task, cfg = load(args.checkpoint, args.device, args.imports)
    for flag, keywords in task_options().items():  # given, but for another kind of model: say so, not ignore it
        default = keywords.get("default", False if keywords.get("action") == "store_true" else None)
        if flag not in task.predict_options and getattr(args, _dest(flag)) != default:
            users = models_for(t for t in TASKS.supporting("predict_line") if flag in t.predict_options)
            raise UsageError(f"{flag} is for {', '.join(users)} models, and {args.checkpoint} holds a "
                             f"{cfg.model.name} model: leave it out")
    options = {_dest(flag): getattr(args, _dest(flag)) for flag in task.predict_options}
    unknown = UnknownTokens(cfg, task)
    with torch.no_grad():
        for n, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            unknown.add(line)
            try:
                output = task.predict_line(model, line, **options)
            except UsageError as e:  # an input the task cannot read is named; a bad option (--top 0) is not one
                raise UsageError(str(e) if str(e).startswith("--") else f"input {n}: {e}") from None
            print(output, flush=True)  # as they come, for pipes
    warning = unknown.warning()
    if warning:
        print(f"lstm-predict: warning: {warning}", file=sys.stderr)


def stdin_lines() -> Iterator[str]:
    """The lines of stdin; at a terminal, first a line saying how to give them (else the tool seems to hang)."""
    if sys.stdin.isatty():
        print("lstm-predict: reading inputs from the terminal, one per line, until Ctrl-D; or give them as "
              "arguments after the checkpoint, or from a file: lstm-predict CKPT < inputs.txt", file=sys.stderr)
    yield from sys.stdin


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors("lstm-predict", RuntimeError):  # RuntimeError: a device torch lacks
        run(args, args.inputs or stdin_lines())


if __name__ == "__main__":
    main()
