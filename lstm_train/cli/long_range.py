"""The long-range sweep's results: test accuracy against first_last's sequence length, one line per cell.

Reads multirun dirs of ``lstm-train -m experiment=long_range`` (and ``long_range_chrono``): every job dir
holding a metrics.json and the job's .hydra/config.yaml. Jobs with the same model and length (several seeds)
are averaged. ``python scripts/plot_long_range.py SWEEP_DIR... [--out PNG]`` prints the table and writes the
plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lstm_train.errors import UsageError, one_line_errors
from lstm_train.runs.checkpoint import migrate_config

# With two classes, the last step alone predicts sign(x0 + xT) as sign(xT) 3/4 of the time: accuracy above
# that needs a memory of the first step.
LAST_STEP_ONLY = 0.75


def collect(*sweep_dirs: str | Path) -> dict[tuple[str, int], list[float]]:
    """(model label, seq_len) -> the test accuracies of the sweeps' finished first_last jobs. The label is the
    cell, with " chrono" for an LSTM with chrono initialisation (experiment=long_range_chrono)."""
    results: dict[tuple[str, int], list[float]] = defaultdict(list)
    for sweep_dir in map(Path, sweep_dirs):
        sweep_dir = sweep_dir.expanduser()
        if not sweep_dir.is_dir():
            raise UsageError(f"no directory at {sweep_dir}")
        _collect_one(sweep_dir, results)
    if not results:
        dirs = ", ".join(map(str, sweep_dirs))
        raise UsageError(f"{dirs} holds no finished first_last job (<job>/metrics.json and <job>/.hydra/)")
    return dict(results)


def _collect_one(sweep_dir: Path, results: dict[tuple[str, int], list[float]]) -> None:
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        config_file = metrics_file.parent / ".hydra" / "config.yaml"
        if not config_file.is_file():
            continue
        cfg = OmegaConf.create(migrate_config(OmegaConf.to_container(OmegaConf.load(config_file))))
        if cfg.task.name != "first_last":
            continue
        metrics = json.loads(metrics_file.read_text())
        label = cfg.model.cell + (" chrono" if cfg.model.forget_bias == "chrono" else "")
        results[(label, int(cfg.task.seq_len))].append(float(metrics["test"]["acc"]))


def table(results: dict[tuple[str, int], list[float]]) -> str:
    """Markdown: one row per sequence length, one column per cell (mean test accuracy, n if several runs)."""
    cells = sorted({c for c, _ in results}, key=_cell_order)
    lengths = sorted({n for _, n in results})
    lines = ["| seq_len | " + " | ".join(cells) + " |", "|---:|" + "---:|" * len(cells)]
    for n in lengths:
        row = []
        for c in cells:
            accs = results.get((c, n))
            cell = "" if not accs else f"{statistics.mean(accs):.4f}"
            row.append(cell + (f" (n={len(accs)})" if accs and len(accs) > 1 else ""))
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: dict[tuple[str, int], list[float]], path: str | Path) -> None:
    """Test accuracy against sequence length (log x), one line per cell, as a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    for cell in sorted({c for c, _ in results}, key=_cell_order):
        lengths = sorted(n for c, n in results if c == cell)
        ax.plot(lengths, [statistics.mean(results[(cell, n)]) for n in lengths], marker="o", label=cell)
    ax.axhline(LAST_STEP_ONLY, color="grey", linestyle="--", linewidth=1, label="last step only (0.75)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_xscale("log")
    lengths = sorted({n for _, n in results})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (task.seq_len)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.45, 1.01)
    ax.set_title("first_last: remembering the first step across the sequence")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def _cell_order(cell: str) -> tuple[int, str]:
    order = ("lstm chrono", "lstm", "gru", "rnn")
    return (order.index(cell) if cell in order else len(order), cell)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="plot_long_range.py", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", nargs="+", help="multirun dirs of lstm-train -m experiment=long_range[_chrono]")
    p.add_argument("--out", help="the PNG to write (default: long_range.png in the first SWEEP_DIR)")
    args = p.parse_args(argv)
    with one_line_errors("plot_long_range.py", OSError):
        results = collect(*args.sweep_dir)
        out = Path(args.out) if args.out else Path(args.sweep_dir[0]) / "long_range.png"
        print(table(results))
        plot(results, out)
    print(f"wrote {out}")
