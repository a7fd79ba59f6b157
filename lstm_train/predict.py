"""``lstm-predict``: run a checkpoint on new input, from arguments or stdin (one input per line).

``lstm-predict CKPT "The jury said ." "It rained ."`` or ``... CKPT < sentences.txt``. The checkpoint
carries everything: the resolved config rebuilds the task's vocabulary (no data needed) and the model.

Dispatch. :data:`PREDICTORS` maps the checkpoint's model name (``model.name`` in its config) to a
function ``predictor(model, task, line, args) -> str`` that turns one input line into the text to print
for it (the model is in eval mode, gradients off). Supporting another model is one function and one
entry; options it needs go into :func:`parse_args`. A checkpoint of a model without an entry is a
one-line error, as are a missing or unreadable checkpoint; every user mistake exits with status 2.

Tagger: a line is whitespace-tokenised into words (lowercased if the task was trained so; unknown
words read as ``<unk>``), tagged in one pass of any length, and printed per ``--format``: ``slash``
(``word/TAG`` on one line), ``columns`` (``word<TAB>TAG`` per line, a blank line after each sentence,
as CoNLL files) or ``tags`` (the tags only). An empty line gives an empty output line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lstm_train.errors import ConfigError, UsageError
from lstm_train.models import load_trained
from lstm_train.tasks import Task
from lstm_train.tasks.seq2seq import transduce_line


def tag_line(model: nn.Module, task: Task, line: str, args: argparse.Namespace) -> str:
    """A tagger's tags for the words of ``line``, formatted per ``args.format``."""
    words = line.split()
    if not words:
        return ""
    device = next(model.parameters()).device
    logits = model(task.encode(words)[None].to(device), torch.tensor([len(words)]))
    tags = [task.tags[i] for i in logits[0].argmax(-1).tolist()]
    if args.format == "tags":
        return " ".join(tags)
    if args.format == "columns":
        return "".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
    return " ".join(f"{w}/{t}" for w, t in zip(words, tags, strict=True))


Predictor = Callable[[nn.Module, Task, str, argparse.Namespace], str]
PREDICTORS: dict[str, Predictor] = {"tagger": tag_line, "seq2seq": transduce_line}


def load(path: str | Path, device: str = "cpu") -> tuple[nn.Module, Task, str]:
    """The model (eval mode), its task (vocabulary only, no data) and the model's name, from a checkpoint."""

    def check(cfg: DictConfig) -> None:
        if cfg.model.name not in PREDICTORS:
            raise UsageError(
                f"{Path(path).expanduser()} holds a {cfg.model.name} model; lstm-predict handles "
                f"{', '.join(PREDICTORS)} models (char models: lstm-generate)"
            )

    try:
        cfg, task, model = load_trained(path, device, check)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return model, task, cfg.model.name


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lstm-predict",
        description="Tag sentences (or transduce inputs) with a "
        "checkpoint: from the arguments, or one per line from stdin.",
    )
    p.add_argument("checkpoint", help="a checkpoints/best.pt or last.pt written by lstm-train")
    p.add_argument("inputs", nargs="*", help="inputs, one per argument (none: read stdin, one per line)")
    p.add_argument(
        "--format",
        choices=("slash", "columns", "tags"),
        default="slash",
        help="tagger output: word/TAG (default), word<TAB>TAG lines, or the tags only",
    )
    p.add_argument(
        "--beam-size",
        type=int,
        default=None,
        help="seq2seq decoding: 1 greedy, > 1 beam search (default: the checkpoint's model.beam_size)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    return p.parse_intermixed_args(argv)  # options may come after the inputs


def run(args: argparse.Namespace, lines: Iterable[str]) -> None:
    model, task, name = load(args.checkpoint, args.device)
    predictor = PREDICTORS[name]
    with torch.no_grad():
        for line in lines:
            print(predictor(model, task, line.rstrip("\n"), args), flush=True)  # as they come, for pipes


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args, args.inputs or sys.stdin)
    except (UsageError, ConfigError, RuntimeError) as e:  # RuntimeError: a device torch lacks
        print(f"lstm-predict: error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
