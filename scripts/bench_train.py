"""Training throughput of lstm-train against a bare loop over the same model and batches.

    python scripts/bench_train.py [--steps 300] [--repeats 3] [overrides ...]

The bare loop is the least a training script must do: forward, cross-entropy, backward, clip_grad_norm_,
optimizer and scheduler steps, over the task's own batches. lstm-train adds its logging (train/*,
grad_norm/* every trainer.log_every_n_steps), the progress bar and its bookkeeping; its time here is the
trainer's own train_s (evaluation and checkpoints excluded, as they are not training). The two alternate,
so that a busy machine slows both alike; the ratio printed is the median over repeats (target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from lstm_train.config import CONF_DIR, validate
from lstm_train.models import build_model
from lstm_train.optim import Scheduler, build_optimizer
from lstm_train.tasks import build_task
from lstm_train.train import train


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for lstm-train")
    args = parser.parse_args()

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
