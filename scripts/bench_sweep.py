"""A 4-job sweep run serially (Hydra's basic launcher) against the same sweep on joblib, from the command line.

    python scripts/bench_sweep.py [--steps 300] [--repeats 3] [overrides ...]

Each variant runs ``lstm-train -m trainer.seed=0,1,2,3 trainer.max_steps=STEPS`` as a user would (a
subprocess, wall time from start to exit, Hydra's start-up included): serial with torch's default threads
(what ``-m`` alone does), serial with one thread, and joblib with its default n_jobs (one job per core) and
one thread per job. They alternate, so that a busy machine slows all alike; the ratios printed are of the
medians over repeats. The CPU seconds (of the sweep and all its processes, joblib's workers included) show
what the threads cost besides the wall time. Needs the `sweep` extra.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LSTM_TRAIN = str(Path(sys.executable).with_name("lstm-train"))


def cpu_seconds() -> float:
    """CPU time of this process's finished children and theirs (joblib's workers are the sweep's)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(variant: list[str], steps: int, overrides: list[str], sweep_dir: str) -> tuple[float, float]:
    """Wall and CPU seconds from start to exit of one 4-job sweep."""
    args = [LSTM_TRAIN, "-m", *variant, "trainer.seed=0,1,2,3", f"trainer.max_steps={steps}",
            "trainer.progress_bar=false", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    cpu, start = cpu_seconds(), time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_sweep.py: {' '.join(variant) or 'serial'} sweep failed:\n{proc.stderr[-2000:]}")
    return seconds, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for lstm-train")
    args = parser.parse_args()
    variants = {"serial": [], "serial, 1 thread": ["trainer.num_threads=1"], "joblib": ["hydra/launcher=joblib"]}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    print(f"{os.cpu_count()} CPUs; 4 jobs of {args.steps} steps; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (name, variant) in enumerate(variants.items()):
                wall, cpu = run_sweep(variant, args.steps, args.overrides, f"{tmp}/round{r}-variant{i}")
                times[name].append((wall, cpu))
                print(f"round {r}: {name:16s} {wall:6.1f} s wall, {cpu:6.1f} s CPU; load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
    medians = {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}
    joblib_wall = medians["joblib"][0]
    print("medians:")
    for name, (wall, cpu) in medians.items():
        print(f"  {name:16s} {wall:6.1f} s wall, {cpu:6.1f} s CPU; {wall / joblib_wall:.2f}x joblib's wall time")


if __name__ == "__main__":
    main()
