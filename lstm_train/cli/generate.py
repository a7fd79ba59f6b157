"""``lstm-generate``: sample text from a checkpoint of a language model, streaming it as it comes.

The checkpoint carries everything needed: the resolved config rebuilds the model, the task state holds the
vocabulary, so the training text need not be present. The checkpoint's task does the sampling
(:meth:`~lstm_train.tasks.Task.generate`); a task without it is refused. Mistakes are one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lstm_train.errors import ConfigError, UsageError, one_line_errors
from lstm_train.models import models_for
from lstm_train.registry import implements
from lstm_train.runs.trained import UnknownTokens, add_checkpoint_options, load_trained, told
from lstm_train.tasks import TASKS, Task
from lstm_train.tasks.files import read_text


def load_model(
    path: str | Path, device: str = "cpu", imports: Sequence[str] = ()
) -> tuple[nn.Module, Task, DictConfig]:
    """The model, its task (vocabulary only, no data) and the run's config from a checkpoint written by lstm-train."""

    def check(cfg: DictConfig) -> None:
        tasks = TASKS.supporting("generate")
        if cfg.model.name not in models_for(tasks) or not implements(TASKS.named(cfg.task), "generate"):
            needs = " or ".join(f"model={m}" for m in models_for(tasks)) + " " + " or ".join(
                f"task={t.name}" for t in tasks)
            raise UsageError(f"{path} is a {cfg.model.name} model on {cfg.task.name}; sampling needs {needs}")

    try:
        cfg, task, model = load_trained(path, device, check, imports, told("lstm-generate"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return model, task, cfg


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-generate", description="Sample text from a char-model checkpoint.")
    p.add_argument("checkpoint", help="a model=char task=text_char run's dir (its checkpoints/best.pt) or checkpoint")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n", help="text to start from, fed through once (default: a newline)")
    prompt.add_argument("--prompt-file", help="a UTF-8 file whose text is the prompt")
    p.add_argument("--length", type=int, default=500, help="characters to generate per sample (default 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy argmax; < 1 surer, > 1 wilder")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely characters only")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="makes the samples reproducible (default: random)")
    add_checkpoint_options(p)
    return p.parse_args(argv)


def check_numbers(args: argparse.Namespace) -> None:
    """A UsageError naming the first numeric argument out of range, as argparse names an argument."""
    for flag, strict in (("--length", False), ("--num-samples", True), ("--temperature", False), ("--top-k", True)):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not (value > 0 if strict else value >= 0):  # not: nan is refused too
            raise UsageError(f"argument {flag}: must be {'>' if strict else '>='} 0, got {value}")


def run(args: argparse.Namespace) -> None:
    check_numbers(args)
    try:
        prompt = read_text(args.prompt_file, "--prompt-file") if args.prompt_file else args.prompt
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not prompt:
        raise UsageError("--prompt is empty; give at least one character")
    model, task, cfg = load_model(args.checkpoint, args.device, args.imports)
    unknown = UnknownTokens(cfg, task, share=0)  # a prompt is short: every character the model lacks is worth a word
    unknown.add(prompt)
    warning = unknown.warning()
    if warning:
        print(f"lstm-generate: warning: {warning}", file=sys.stderr)
    generator = torch.Generator()
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    for n in range(args.num_samples):
        if n:
            sys.stdout.write("\n---\n")
        sys.stdout.write(prompt)
        for piece in task.generate(model, prompt, args.length, args.temperature, args.top_k, generator):
            sys.stdout.write(piece)
            sys.stdout.flush()  # stream: one piece at a time, as it is sampled
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors("lstm-generate", ValueError, RuntimeError):  # RuntimeError: a device torch lacks
        run(args)


if __name__ == "__main__":
    main()
