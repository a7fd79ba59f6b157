"""An Optuna search with and without pruning, from the command line: wall time and the best value found.

    python scripts/bench_search.py [--trials 16] [--search first_last] [--pruner median] [--pruner-option KEY=VALUE]
                                   [--seed 0] [overrides ...]

Each variant runs ``lstm-train -m hparams_search=SEARCH hydra.sweeper.n_trials=TRIALS`` as a user would (a
subprocess, wall time from start to exit, Hydra's start-up included), the second with
``hydra/sweeper/pruner=PRUNER``; both with the sampler seeded alike, so that their first trials are the same.
The table gives the wall time, the best value of the search's monitor, the trials completed and pruned, and the
optimizer steps trained in all (a pruned trial's last reported step). The CPU's model and the flags that decide
the LSTM kernel's speed (AVX2, AVX-512, bfloat16) are printed beside it, and the load average, since a busy
machine slows both variants alike only roughly. Needs the `sweep` extra.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lstm_train.runs.provenance import cpu, cpu_line

LSTM_TRAIN = str(Path(sys.executable).with_name("lstm-train"))


def search(sweep_dir: Path, args: argparse.Namespace, pruner: str | None) -> dict:
    """Run one search; its wall time and what its study holds."""
    import optuna

    command = [LSTM_TRAIN, "-m", f"hparams_search={args.search}", f"hydra.sweeper.n_trials={args.trials}",
               f"hydra.sweeper.sampler.seed={args.seed}", "trainer.progress_bar=false",
               "hydra.sweeper.study_name=bench",
               *args.overrides, f"hydra.sweep.dir={sweep_dir}"]
    if pruner:
        command += [f"hydra/sweeper/pruner={pruner}", *(f"hydra.sweeper.pruner.{o}" for o in args.pruner_option)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_search.py: the search {'with ' + pruner if pruner else 'without pruning'} failed:\n"
                 f"{proc.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{sweep_dir}/optuna.db")
    states = [t.state.name for t in study.trials]
    return {"wall": wall, "best": study.best_value, "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "steps": sum(t.last_step or 0 for t in study.trials),
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--search", default="first_last", help="a config of conf/hparams_search/")
    parser.add_argument("--pruner", default="median", help="a config of conf/hydra/sweeper/pruner/")
    parser.add_argument("--pruner-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the pruner, e.g. n_startup_trials=4 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed, the same in both searches")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for lstm-train")
    args = parser.parse_args()
    print(f"{cpu_line(cpu())}; {os.cpu_count()} CPUs")
    what, pruning = (" ".join([head, *tail]) for head, tail in ((f"hparams_search={args.search}", args.overrides),
                                                                 (args.pruner, args.pruner_option)))
    print(f"{args.trials} trials of {what}; pruner {pruning}; sampler seed {args.seed}; load average at the start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in (None, args.pruner):
            result = search(Path(tmp) / (pruner or "none"), args, pruner)
            rows.append((pruner or "none", result))
            print(f"  pruner {pruner or 'none'}: {result['wall']:.0f} s; load average {result['load']:.1f}", flush=True)
    print()
    print("| pruner | wall time (s) | best value | completed | pruned | steps trained |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.0f} | {r['best']:.4f} | {r['complete']} | {r['pruned']} | {r['steps']} |")


if __name__ == "__main__":
    main()
