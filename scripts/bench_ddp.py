"""Data-parallel throughput: N processes x 1 thread against 1 process x N threads, the same model and batches.

    .venv/bin/python scripts/bench_ddp.py [--steps 200] [--repeats 3] [--processes 2]

Each variant is a real `lstm-train` run (trainer.devices=N with one thread per process, or trainer.devices=1
with N threads); they alternate round by round, so a busy machine slows both alike. Throughput is steps
over the trainer's own train_s (metrics.json: evaluation, checkpoints and process start excluded); wall is
the whole command, start-up included. Printed: medians, and the ratio of throughputs (data-parallel / threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LSTM_TRAIN = str(Path(sys.executable).with_name("lstm-train"))
MODELS = {
    "default (classifier 2x64, first_last)": [],
    "char LM 2x256 (KJV, batch 64 x 128)": ["model=char", "task=text_char", "trainer.batch_size=64",
                                            "task.sample_length=0", "task.val_size=20", "task.test_size=20"],
}


def run(args: list[str], out: Path) -> tuple[float, float]:
    """(steps per second of training, wall seconds of the whole command)."""
    start = time.perf_counter()
    subprocess.run([LSTM_TRAIN, *args, f"hydra.run.dir={out}", "trainer.progress_bar=false"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["step"] / metrics["time"]["train_s"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args()
    n = args.processes
    common = [f"trainer.max_steps={args.steps}", f"trainer.eval_every_n_steps={args.steps}"]
    variants = {
        f"{n} processes x 1 thread": [f"trainer.devices={n}", "trainer.num_threads=1"],
        f"1 process x {n} threads": ["trainer.devices=1", f"trainer.num_threads={n}"],
    }
    dp, threads = variants
    print(f"| model | {dp}: steps/s (wall s) | {threads}: steps/s (wall s) | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model, overrides in MODELS.items():
            rates: dict[str, list[float]] = {v: [] for v in variants}
            walls: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(args.repeats):
                for k, (name, extra) in enumerate(variants.items()):
                    rate, wall = run([*overrides, *common, *extra], Path(tmp) / f"{model[:4]}{r}{k}")
                    rates[name].append(rate)
                    walls[name].append(wall)
            rate, wall = ({v: statistics.median(x[v]) for v in variants} for x in (rates, walls))
            print(f"| {model} | {rate[dp]:.2f} ({wall[dp]:.0f}) | {rate[threads]:.2f} ({wall[threads]:.0f}) | "
                  f"{rate[dp] / rate[threads]:.2f} |", flush=True)

if __name__ == "__main__":
    main()
