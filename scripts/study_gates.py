"""What each variant's gates do, for the variants study: ``python scripts/study_gates.py SWEEP_DIR [--size N]``.

For every finished job of a sweep (a study: experiment=odyssey_<task>), the weights its run evaluated (best.pt)
read the same ``--size`` sequences of the task's val split, recorded (lstm_train.training.probe.record: gates,
cell states and dL/dh_t). Printed per variant, averaged over seeds and over the first layer's units and real
steps: the mean input, forget and output gates (a removed gate is its constant), the share of forget gates
above 0.9, the cell state's mean |c| at the first and the last step, the share of |c| > 3 at the last (there
tanh(c) > 0.995: h reads little of c), and log10 of ||dL/dh|| at the first step over that at the last (0: the
gradient reaches the start undiminished). On first_last also the memory unit: the
unit (any layer) whose c_t correlates most with x[0, 0], the value the label needs, at the step before the last:
that |correlation|, its mean input and forget gates after the first step, and how much more it writes (|i g|) at
the first step than after; and a plot of these against t per variant (gate_memory.png in SWEEP_DIR).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from lstm_train.nn import Recording
from lstm_train.runs.trained import load_trained
from lstm_train.tasks import build_task
from lstm_train.training.probe import grad_norms_per_step, real_steps, record, valid_mask

COLUMNS = ("i", "f", "o", "f>0.9", "abs(c) first", "abs(c) last", "abs(c)>3 last", "log10 dh first/last", "memory",
           "unit i, t>0", "unit f, t>0", "unit write t=0 / t>0")


def correlation_with(cells: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|corr| of each unit's c_t with ``target`` over the batch: (T, H) from cells (T, B, H), target (B,)."""
    c = cells - cells.mean(dim=1, keepdim=True)
    y = (target - target.mean())[None, :, None]
    denominator = c.pow(2).sum(1).sqrt() * y.pow(2).sum().sqrt()
    return ((c * y).sum(1) / denominator.clamp_min(1e-12)).abs()


def memory_unit(rec: Recording, first: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """first_last: the unit (any layer) whose c_t correlates most with x[0, 0] at the step before the last, and
    against t: that |correlation|, its input and forget gates and its write |i * g| (means over the batch)."""
    layers = [c if not rec.batch_first else c.transpose(0, 1) for c in rec.cells]  # (T, B, H) each
    corr = torch.stack([correlation_with(c, first) for c in layers])  # (layers, T, H)
    k, u = divmod(int(corr[:, -2].argmax()), corr.shape[-1])
    gates = rec.gates[k] if not rec.batch_first else rec.gates[k].transpose(0, 1)  # (T, B, 4, H)
    i, f, g = gates[:, :, 0, u], gates[:, :, 1, u], gates[:, :, 2, u]
    return corr[k, :, u], i.mean(1), f.mean(1), (i * g).abs().mean(1)


def job_stats(job: Path, size: int) -> tuple[str, dict[str, float], tuple[torch.Tensor, ...] | None]:
    """A job's variant, its first layer's statistics and (first_last) its memory unit's curves against t."""
    config, _, model = load_trained(job / "checkpoints" / "best.pt")
    task = build_task(config.task)  # with its data, which the probe batch comes from
    batch = task.probe_batch(size)
    calls = record(task, model, batch)
    rec = next(iter(calls.values()))[0]  # the model's LSTM, its one forward call
    mask = valid_mask(rec)
    gates = rec.gates[0]
    stats = {name: real_steps(gates[..., j, :], mask).mean().item() for name, j in (("i", 0), ("f", 1), ("o", 3))}
    stats["f>0.9"] = (real_steps(gates[..., 1, :], mask) > 0.9).float().mean().item()
    cells = rec.cells[0] if not rec.batch_first else rec.cells[0].transpose(0, 1)  # (T, B, H)
    stats["abs(c) first"] = cells[0].abs().mean().item()
    last = cells[-1] if rec.lengths is None else cells[rec.lengths - 1, torch.arange(cells.shape[1])]
    stats["abs(c) last"] = last.abs().mean().item()
    stats["abs(c)>3 last"] = (last.abs() > 3).float().mean().item()  # tanh(c) > 0.995: h reads little of c
    norms = grad_norms_per_step(rec)[0]
    stats["log10 dh first/last"] = math.log10(norms[0] / norms[-1]) if norms[0] > 0 and norms[-1] > 0 else math.nan
    memory = None
    if config.task.name == "first_last":
        memory = memory_unit(rec, batch.x[:, 0, 0])
        stats["memory"] = memory[0][-2].item()
        stats["unit i, t>0"], stats["unit f, t>0"] = memory[1][1:].mean().item(), memory[2][1:].mean().item()
        stats["unit write t=0 / t>0"] = (memory[3][0] / memory[3][1:].mean()).item()
    variant = config.model.get("variant", "lstm")
    return variant, stats, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--size", type=int, default=1000, help="val sequences read per job (default 1000)")
    args = parser.parse_args()
    torch.manual_seed(0)
    by_variant: dict[str, list[dict[str, float]]] = defaultdict(list)
    memories: dict[str, list[torch.Tensor]] = defaultdict(list)
    order = yaml.safe_load((args.sweep_dir / "multirun.yaml").read_text())["hydra"]["sweeper"]["params"]
    variants = order["model.variant"].split(",")
    for job in sorted(p for p in args.sweep_dir.iterdir() if (p / "checkpoints" / "best.pt").is_file()):
        variant, stats, memory = job_stats(job, args.size)
        by_variant[variant].append(stats)
        if memory is not None:
            memories[variant].append(memory)
    columns = [c for c in COLUMNS if any(c in s for runs in by_variant.values() for s in runs)]
    print(f"| variant | n | {' | '.join(columns)} |")
    print(f"|---|---:|{'---:|' * len(columns)}")
    for variant in (v for v in variants if v in by_variant):
        runs = by_variant[variant]
        cells = [f"{statistics.fmean(s[c] for s in runs):.3g}" for c in columns]
        print(f"| `{variant}` | {len(runs)} | {' | '.join(cells)} |")
    if memories:
        plot_memory(memories, variants, args.sweep_dir / "gate_memory.png")


def plot_memory(memories: dict[str, list[tuple[torch.Tensor, ...]]], variants: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), dpi=100, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).flatten()
    titles = ("|corr(c_t, x[0, 0])| of the memory unit", "its input gate i_t", "its forget gate f_t",
              "its write |i_t g_t| (log scale)")
    for n, (ax, title) in enumerate(zip(axes, titles, strict=True)):
        for variant in (v for v in variants if v in memories):
            mean = torch.stack([m[n] for m in memories[variant]]).mean(0)
            style = "--" if variant in ("nig", "nfg", "nog") else ":" if variant in ("niaf", "noaf", "cifg") else "-"
            ax.plot(range(len(mean)), mean.numpy(), label=variant, linestyle=style)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[3].set_yscale("log")
    for ax in axes[2:]:
        ax.set_xlabel("time step t")
    axes[0].legend(ncols=3, fontsize=8)
    figure.suptitle("first_last: the unit that carries x[0, 0] to the end, per variant (mean over seeds; a removed "
                    "gate is its constant)", fontsize=10)
    figure.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
