"""The summary of a sweep's jobs: one row per job, ranked by its best monitored value, as
``sweep_summary.csv``, a Markdown table and ``sweep_summary.png`` (the monitored value against each swept key)."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from lstm_train.runs.jobs import Job
from lstm_train.tasks import metric_text


def ranked(jobs: list[Job]) -> list[Job]:
    """Jobs with a monitored value first, best first (per monitor), then the others in job order."""
    def key(j: Job) -> tuple:
        if j.best is None or not math.isfinite(j.best):
            return (1, "", 0.0, j.num)
        return (0, j.monitor or "", -j.best if j.maximize else j.best, j.num)

    return sorted(jobs, key=key)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (or that some jobs lack), in first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def metric_keys(jobs: list[Job]) -> list[str]:
    """The names of the jobs' test metrics, in first-seen order (not test_keys: pytest would collect a function
    of that name wherever a test imports it)."""
    return list(dict.fromkeys(k for j in jobs for k in j.test))


def write_csv(jobs: list[Job], path: Path) -> None:
    """Every override key (swept or not) gets a column: the CSV holds each job's whole command line."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    tests = metric_keys(jobs)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "status", *keys, "monitor", "best", "best_step", *[f"test/{t}" for t in tests],
                    "steps", "ended", "wall_s", "host", "error", "dir"])
        for j in jobs:
            w.writerow([j.num, j.status, *[j.overrides.get(k, "") for k in keys], j.monitor or "", blank(j.best),
                        blank(j.best_step), *[blank(j.test.get(t)) for t in tests], blank(j.steps), j.ended,
                        blank(j.wall_s), j.host or "", j.error or "", j.dir.name])


def markdown(jobs: list[Job], title: str, skipped: dict[str, str] | None = None) -> str:
    """A Markdown table of the ranked jobs; overrides all jobs share are listed once above it, the job dirs that
    could not be read (dir name -> why) below it."""
    keys = swept_keys(jobs)
    common = [f"{k}={v}" for k, v in jobs[0].overrides.items() if k not in keys]
    monitors = {j.monitor for j in jobs if j.monitor}
    counts = Counter(j.status for j in jobs)
    plural = "s" if len(jobs) > 1 else ""
    lines = [f"# Sweep {title}", "", f"{len(jobs)} job{plural}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + "."]
    if len(monitors) == 1:
        (monitor,) = monitors
        better = "higher" if next(j.maximize for j in jobs if j.monitor) else "lower"
        lines.append(f"Ranked by the best {monitor} of each job ({better} is better).")
        value_header = f"best {monitor}"
    else:
        value_header = "best (monitor)"
    if common:
        lines.append("Every job: " + " ".join(f"`{c}`" for c in common) + ".")
    tests = metric_keys(jobs)
    header = ["job", "status", *keys, value_header, "best step", *[f"test/{t}" for t in tests], "steps", "wall s",
              "error"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for j in jobs:
        value = fmt(j.best) + (f" ({j.monitor})" if len(monitors) > 1 and j.best is not None else "")
        row = [str(j.num), j.status, *[short(j.overrides.get(k, "")) for k in keys], value, str(blank(j.best_step)),
               *[fmt(j.test.get(t)) for t in tests], _steps(j), fmt(j.wall_s, ".1f"),
               (j.error or "").replace("|", "\\|")]
        lines.append("| " + " | ".join(row) + " |")
    if skipped:
        lines += ["", f"Skipped {len(skipped)} job dir{'s' if len(skipped) > 1 else ''} that could not be read:"]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def _steps(job: Job) -> str:
    """Steps done, and what ended training if not its step limit: a trial cut short by trainer.max_time shows."""
    return str(blank(job.steps)) + (f" ({job.ended.replace('_', ' ')})" if job.ended else "")


def plot(jobs: list[Job], path: Path, title: str = "sweep") -> bool:
    """The monitored value against each swept key, one panel per key; failed and died jobs as red x at the
    bottom. False (and no file) when there is nothing to plot."""
    keys = swept_keys(jobs)
    scored = [j for j in jobs if j.best is not None and math.isfinite(j.best)]
    monitors = {j.monitor for j in scored}
    if not keys or not scored:
        return False
    from matplotlib.figure import Figure  # a Figure of its own: never touches pyplot's backend
    from matplotlib.ticker import NullFormatter

    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    figure = Figure(figsize=(max(4.2 * cols, 6.4), 3.4 * rows + 0.4), dpi=100, layout="constrained")
    lost = [j for j in jobs if j.status in ("failed", "died")]
    ylabel = f"best {next(iter(monitors))}" if len(monitors) == 1 else "best monitored value"
    for i, key in enumerate(keys):
        ax = figure.add_subplot(rows, cols, i + 1)
        values = [j.overrides.get(key) for j in jobs]
        numbers = _numbers(values)
        if numbers is not None:
            x = dict(zip((j.num for j in jobs), numbers, strict=True))
            written = dict(zip(numbers, values, strict=True))  # as on the command line: 0.003, not 3e-3 ticks
            present = sorted(v for v in written if v is not None)
            if present[0] > 0 and present[-1] / present[0] >= 10:
                ax.set_xscale("log")
            if len(present) <= 6 and all(len(written[v]) <= 6 for v in present):  # a list or choice: a tick each
                ax.set_xticks(present, [written[v] for v in present])
                ax.minorticks_off()
            else:
                ax.xaxis.set_minor_formatter(NullFormatter())  # log axes label minor ticks too: they overlap
        else:
            labels = sorted({v for v in values if v is not None}, key=str)
            x = {j.num: labels.index(j.overrides[key]) if key in j.overrides else None for j in jobs}
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        points = [(x[j.num], j.best) for j in scored if x[j.num] is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=28, alpha=0.8)
        best = scored[0]  # ranked: the best job first
        if x[best.num] is not None:
            ax.scatter([x[best.num]], [best.best], s=120, facecolors="none", edgecolors="tab:green", label="best")
        dead = [x[j.num] for j in lost if x[j.num] is not None]
        if dead:  # on the bottom edge (y in axes units); their x still widens the axis
            ax.scatter(dead, [0.03] * len(dead), marker="x", color="tab:red", transform=ax.get_xaxis_transform(),
                       label="failed / died")
            ax.update_datalim([(v, scored[-1].best) for v in dead])
            ax.autoscale_view()
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    figure.suptitle(f"{title}\n{ylabel} of each job ({len(scored)} of {len(jobs)} jobs have one)", fontsize=10)
    figure.savefig(path)
    return True


def _numbers(values: list[str | None]) -> list[float | None] | None:
    """The values as floats (None where a job lacks the key), or None if any is not a number."""
    try:
        return [None if v is None else float(v) for v in values]
    except ValueError:
        return None


# ---- table cells (the groups' too) ----------------------------------------------------------------------
def short(value: str) -> str:
    """An override's value for the table: long floats (Optuna's 0.0025408565668819686) to 4 digits."""
    try:
        return value if len(value) <= 8 else format(float(value), ".4g")
    except ValueError:
        return value


def fmt(v: float | None, spec: str = ".4f") -> str:
    """A metric's value for a table cell; None: empty."""
    return "" if v is None else metric_text(v, spec)


def blank(v: Any) -> Any:
    """None as an empty cell; any other value as it is."""
    return "" if v is None else v
