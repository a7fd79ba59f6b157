"""Training throughput: lstm-train against a bare loop, or whole lstm-train runs of several LSTM backends.

    python scripts/bench_train.py [--steps 300] [--repeats 3] [overrides ...]
    python scripts/bench_train.py --backends torch compiled fast [--repeats 3] [overrides ...]

The bare loop is the least a training script must do: forward, cross-entropy, backward, clip_grad_norm_,
optimizer and scheduler steps, over the task's own batches. lstm-train adds its logging (train/*,
grad_norm/* every trainer.log_every_n_steps), the progress bar and its bookkeeping; its time here is the
trainer's own train_s (evaluation and checkpoints excluded, as they are not training). The two alternate,
so that a busy machine slows both alike; the ratio printed is the median over repeats (target >= 0.95).

With --backends, each repeat runs lstm-train once per backend, in turn, with the config as given (by default
the default run, nothing shortened) and model.backend set; the times are train_s from each run's
metrics.json, and the ratios are medians against the first backend. Backends: torch (torch.nn.LSTM),
compiled and fast (ours on the compiled kernel and on the pure-PyTorch loop), reference; each may add
:bf16 (trainer.precision=bf16) and then :kernel, :onednn or :fp32 (our LSTM's bfloat16 products,
LSTM_TRAIN_BF16_PRODUCTS):

    python scripts/bench_train.py --backends compiled compiled:bf16 torch:bf16 --repeats 3 trainer.max_steps=600
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from lstm_train.config import CONF_DIR, validate
from lstm_train.models import build_model
from lstm_train.nn.compiled import BF16_ENV, BF16_SETTINGS, ENV
from lstm_train.runs.provenance import cpu, cpu_line
from lstm_train.tasks import build_task
from lstm_train.train import train
from lstm_train.training.optim import Scheduler, build_optimizer


def bare_loop(cfg, steps: int) -> float:
    """Seconds for ``steps`` training steps of the plainest loop."""
    torch.manual_seed(cfg.trainer.seed)
    task = build_task(cfg.task)
    model = build_model(cfg.model, task)
    params = list(model.parameters())
    optimizer = build_optimizer(cfg.optim, params)
    scheduler = Scheduler(cfg.scheduler, optimizer, {"step": steps, "epoch": 1, "eval": 1})
    batches = task.train_batches(0, cfg.trainer.batch_size, cfg.trainer.seed)
    start = time.perf_counter()
    for _, batch in zip(range(steps), batches, strict=False):
        loss = F.cross_entropy(model(batch.x), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.clip_grad_norm)
        optimizer.step()
        scheduler.step("step")
    return time.perf_counter() - start


def trainer_loop(cfg) -> float:
    with tempfile.TemporaryDirectory() as out:
        return train(cfg, out)["time"]["train_s"]


# --backends names: (model.backend, LSTM_TRAIN_FAST_PATH), as in scripts/bench_lstm.py
BACKENDS = {"torch": ("torch", "auto"), "compiled": ("fast", "compiled"), "fast": ("fast", "pytorch"),
            "reference": ("reference", "auto")}


def parse_backend(name: str) -> tuple[str, str, str] | None:
    """--backends' ``backend[:precision[:products]]`` -> (BACKENDS key, trainer.precision, bfloat16 products), or
    None if it is not one."""
    parts = name.split(":")
    if len(parts) > 3:
        return None
    backend, precision, products = parts + [""] * (3 - len(parts))
    if backend not in BACKENDS or precision not in ("", "fp32", "bf16"):
        return None
    if products and (precision != "bf16" or products not in BF16_SETTINGS):
        return None
    return backend, precision or "fp32", products or "auto"


def compare_backends(backends: list[str], repeats: int, overrides: list[str]) -> None:
    """Whole lstm-train runs, one per backend in turn each repeat; train_s and total_s from metrics.json."""
    print(cpu_line(cpu()))
    times: dict[str, list[float]] = {b: [] for b in backends}
    for i in range(repeats):
        for name in backends:
            key, precision, products = parse_backend(name)
            backend, path = BACKENDS[key]
            os.environ[ENV] = path
            os.environ[BF16_ENV] = products
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                run = [*overrides, f"model.backend={backend}", f"trainer.precision={precision}",
                       "trainer.progress_bar=false"]
                cfg = compose("config", overrides=run)
            with tempfile.TemporaryDirectory() as out:
                metrics = train(cfg, out)
            times[name].append(metrics["time"]["train_s"])
            print(f"  repeat {i + 1}, {name}: train_s {metrics['time']['train_s']:.1f}, "
                  f"total_s {metrics['time']['total_s']:.1f}, test {metrics['test']}", flush=True)
    first = backends[0]
    print(f"median train_s over {repeats} repeats, {torch.get_num_threads()} threads:")
    for name in backends:
        ratios = [t / t0 for t, t0 in zip(times[name], times[first], strict=True)]
        print(f"  {name}: {statistics.median(times[name]):.1f} s, ratio to {first} {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", metavar="BACKEND[:bf16[:PRODUCTS]]",
                        help=f"compare whole runs of these; backends {', '.join(BACKENDS)}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for lstm-train")
    args = parser.parse_args()
    wrong = [b for b in args.backends or [] if parse_backend(b) is None]
    if wrong:
        parser.error(f"--backends {wrong[0]}: give backend[:precision[:products]], a backend of "
                     f"{', '.join(BACKENDS)}, precision fp32 or bf16, products of {', '.join(BF16_SETTINGS)}")
    if args.backends and any(o.startswith(("trainer.precision=", "model.backend=")) for o in args.overrides):
        parser.error("--backends sets model.backend and trainer.precision of each run: give them there (compiled:bf16)")
    if args.backends:
        compare_backends(args.backends, args.repeats, args.overrides)
        return

    # One epoch holds all the steps, so the trainer evaluates once, at the end (outside its train_s).
    bench = [f"trainer.max_steps={args.steps}", "trainer.max_epochs=null", "trainer.eval_every_n_steps=null",
             "task.val_size=1000", "task.test_size=1000", "trainer.progress_bar=false"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*args.overrides, *bench])
        cfg.task.train_size = args.steps * cfg.trainer.batch_size
    validate(cfg)

    print(f"{args.steps} steps, batch {cfg.trainer.batch_size}, model {cfg.model.name} "
          f"({cfg.model.backend}, {cfg.model.num_layers}x{cfg.model.hidden_size}), "
          f"log_every_n_steps={cfg.trainer.log_every_n_steps}, {torch.get_num_threads()} threads")
    bare_loop(cfg, min(20, args.steps))  # warm-up: first-call costs belong to neither
    ratios = []
    for i in range(args.repeats):
        bare = bare_loop(cfg, args.steps)
        ours = trainer_loop(cfg)
        ratios.append(bare / ours)
        print(f"  repeat {i + 1}: bare {args.steps / bare:.1f} steps/s, lstm-train {args.steps / ours:.1f} steps/s, "
              f"ratio {bare / ours:.3f}")
    print(f"throughput ratio lstm-train / bare loop: {statistics.median(ratios):.3f} (median of {args.repeats})")


if __name__ == "__main__":
    main()
