"""Groups over replicates (seeds): when the sweep varies the replicate key (trainer.seed unless told otherwise),
the jobs are also grouped by their other swept overrides: n, mean and std of each group's best monitored value and
test metrics, ranked by the mean (``sweep_summary_groups.csv``, a second table in the .md,
``sweep_summary_groups.png`` with error bars); with a baseline (``model.variant=v``) each group's test metric is
compared with the baseline's by Welch's t-test, as Greff et al. compared LSTM variants."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lstm_train.runs.jobs import Job
from lstm_train.runs.summary import blank, fmt, metric_keys, short, swept_keys

REPLICATE = "trainer.seed"  # the key whose values are replicates of one configuration


@dataclass
class Group:
    """The jobs that differ only in the replicate key. Only completed jobs give values; the others are counted."""
    key: dict[str, str]  # the other swept overrides (a key some jobs lack: "")
    jobs: list[Job]

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed"]

    def count(self, *statuses: str) -> int:
        return sum(j.status in statuses for j in self.jobs)

    @property
    def monitor(self) -> str | None:
        return next((j.monitor for j in self.jobs if j.monitor), None)

    @property
    def maximize(self) -> bool:
        return bool(next((j.maximize for j in self.jobs if j.monitor), False))

    def values(self, metric: str | None = None) -> list[float]:
        """The completed jobs' best monitored values (metric None) or their test metric, finite ones only."""
        found = [j.best if metric is None else j.test.get(metric) for j in self.done]
        return [v for v in found if v is not None and math.isfinite(v)]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key.items()) or "all jobs"


def grouped(jobs: list[Job], replicate: str = REPLICATE) -> list[Group] | None:
    """The jobs grouped by their swept overrides other than ``replicate``, best mean first (as
    :func:`~lstm_train.runs.summary.ranked` orders jobs; groups without a value last); None when the sweep does
    not vary ``replicate``."""
    keys = swept_keys(jobs)
    if replicate not in keys:
        return None
    others = [k for k in keys if k != replicate]
    groups: dict[tuple[str, ...], Group] = {}
    for j in jobs:
        values = tuple(j.overrides.get(k, "") for k in others)
        groups.setdefault(values, Group(dict(zip(others, values, strict=True)), [])).jobs.append(j)

    def order(g: Group) -> tuple:
        mean = mean_std(g.values())[0]
        if mean is None:
            return (1, "", 0.0)
        return (0, g.monitor or "", -mean if g.maximize else mean)

    return sorted(groups.values(), key=order)  # stable: equal means keep the jobs' order


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator, as Welch's test uses); None where
    undefined (no value; a single value's std)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """Welch's unequal-variances t-test of mean(a) against mean(b): (t, degrees of freedom, two-sided p),
    the values of ``scipy.stats.ttest_ind(a, b, equal_var=False)``, without needing scipy at run time.

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b) with sample variances s^2; the degrees of freedom by
    Welch-Satterthwaite, (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)); the
    p-value is P(|T| >= |t|) for Student's T with those degrees of freedom, which equals the regularized
    incomplete beta function I_x(df/2, 1/2) at x = df / (df + t^2). None if either sample has fewer than 2
    values. Both samples without spread: t = ±inf and p = 0 for different means, all nan for equal ones (df
nan in both cases), as scipy has it."""
    if len(a) < 2 or len(b) < 2:
        return None
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    if va + vb == 0:
        if mean_a == mean_b:
            return math.nan, math.nan, math.nan
        return math.copysign(math.inf, mean_a - mean_b), math.nan, 0.0
    t = (mean_a - mean_b) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, incomplete_beta(df / 2, 0.5, df / (df + t * t))


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]: its continued
    fraction (evaluated by Lentz's method), which converges fast for x < (a + 1) / (a + b + 2); above that,
    through the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    # x^a (1-x)^b / (a B(a, b)) times 1 / (1 + d1 / (1 + d2 / (1 + ...)))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300  # keeps Lentz's C and D off zero
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 400):
        m = j // 2
        if j % 2:  # d_{2m+1}
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + term / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front / f


class BaselineError(ValueError):
    """A baseline that is not KEY=VALUE or names no group of replicates: the one line why."""


def parse_baseline(baseline: str) -> tuple[str, str]:
    """``key=value`` as (key, value); BaselineError if it is not of that form."""
    key, eq, value = baseline.partition("=")
    if not eq or not key or not value:
        raise BaselineError(f"--baseline {baseline}: not KEY=VALUE; give the group the others are compared with, "
                         "e.g. --baseline model.variant=v")
    return key, value


def check_baseline(groups: list[Group] | None, replicate: str, baseline: str) -> None:
    """BaselineError unless the baseline is one of the groups' overrides (it needs the replicates to compare)."""
    key, value = parse_baseline(baseline)
    if groups is None:
        raise BaselineError(f"--baseline {baseline}: the sweep does not vary {replicate}, so there are no replicates "
                         "to compare; sweep it (trainer.seed=0,1,2) or name the replicate key with --replicate")
    present = sorted({g.key[key] for g in groups if key in g.key})
    if value not in present:
        what = f"its values are {', '.join(present)}" if present else "it is not a swept key"
        raise BaselineError(f"--baseline {baseline}: no group has {key}={value} ({what}); choose one of them")


def _baseline_of(group: Group, groups: list[Group], baseline: str) -> Group | None:
    """The group that differs from ``group`` only in the baseline's key, holding the baseline's value."""
    key, value = parse_baseline(baseline)
    want = {**group.key, key: value}
    return next((g for g in groups if g.key == want), None)


def _monitor(groups: list[Group]) -> str | None:
    """The monitor all groups share, or None (a sweep over tasks monitors val/acc in some, val/bpc in others)."""
    monitors = {g.monitor for g in groups if g.monitor}
    return next(iter(monitors)) if len(monitors) == 1 else None


def _compared(groups: list[Group]) -> str | None:
    """The test metric the t-test compares: the monitor's own (val/acc: test acc) when all groups share the
    monitor and every completed job has it, else None: the best monitored value."""
    monitor = _monitor(groups)
    metric = monitor.rpartition("/")[2] if monitor else None
    done = [j for g in groups for j in g.done]
    return metric if done and all(metric in j.test for j in done) else None


@dataclass
class GroupStats:
    """One row of the groups' table."""
    group: Group
    rank: int | None  # 1: the best mean; None: no completed job
    best: tuple[float | None, float | None]  # mean, std of the best monitored values
    test: dict[str, tuple[float | None, float | None]]  # test metric -> mean, std
    welch: tuple[float, float, float] | None = None  # t, df, p against the baseline group


def group_stats(groups: list[Group], baseline: str | None = None) -> list[GroupStats]:
    """The groups' means and stds, in their order; with a baseline, Welch's test against it (None for the
    baseline itself, and where a group has fewer than 2 values, no baseline group or another monitor)."""
    tests = metric_keys([j for g in groups for j in g.jobs])
    compared = _compared(groups)
    rows = []
    for g in groups:
        best = mean_std(g.values())
        row = GroupStats(g, len(rows) + 1 if best[0] is not None else None, best,
                         {t: mean_std(g.values(t)) for t in tests})
        base = _baseline_of(g, groups, baseline) if baseline is not None else None
        if base is not None and base is not g and base.monitor == g.monitor:  # never one metric against another
            row.welch = welch(g.values(compared), base.values(compared))
        rows.append(row)
    return rows


def write_groups_csv(groups: list[Group], path: Path, baseline: str | None = None) -> None:
    rows = group_stats(groups, baseline)
    keys, tests = list(groups[0].key), list(rows[0].test)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", *keys, "n", "jobs", "failed", "running", "monitor", "best mean", "best std",
                    *[f"test/{t} {s}" for t in tests for s in ("mean", "std")],
                    *(["t", "df", "p"] if baseline is not None else [])])
        for r in rows:
            g = r.group
            w.writerow([blank(r.rank), *g.key.values(), len(g.done), len(g.jobs), g.count("failed", "died"),
                        g.count("running", "unknown"), g.monitor or "", *map(blank, r.best),
                        *[blank(v) for t in tests for v in r.test[t]],
                        *([blank(v) for v in (r.welch or (None,) * 3)] if baseline is not None else [])])


def groups_markdown(groups: list[Group], replicate: str, baseline: str | None = None) -> str:
    """The groups' table: mean ± std per group, best mean first; with a baseline, Welch's t-test of each
    group's test metric against the baseline group's."""
    rows = group_stats(groups, baseline)
    keys, tests = list(groups[0].key), list(rows[0].test)
    monitor = _monitor(groups)
    better = f"{monitor} ({'higher' if groups[0].maximize else 'lower'} is better)" if monitor else \
        "monitored value (each in its monitor's direction)"
    lines = [f"## Over {replicate}", "",
             f"{len(groups)} group{'s' if len(groups) > 1 else ''} of jobs that differ only in {replicate}, ranked "
             f"by the mean of their best {better}. n: completed jobs of the group's jobs, "
             "whose values give the mean ± sample std; failed counts failed and died jobs, running the running "
             "and unknown ones."]
    header = ["rank", *keys, "n", "failed", "running", f"best {monitor or '(monitor)'}", *[f"test/{t}" for t in tests]]
    if baseline is not None:
        compared = _compared(groups)
        what = f"test/{compared}" if compared else "best monitored value"
        lines.append(f"Welch's t-test of each group's {what} against the group with {baseline} (and the same "
                     "other overrides): t > 0 is a higher mean, p two-sided.")
        header += ["t", "p"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        g = r.group
        cells = [str(blank(r.rank)), *[short(v) for v in g.key.values()], f"{len(g.done)} of {len(g.jobs)}",
                 str(g.count("failed", "died")), str(g.count("running", "unknown")),
                 _pm(*r.best) + (f" ({g.monitor})" if monitor is None and g.monitor else ""),
                 *[_pm(*r.test[t]) for t in tests]]
        if baseline is not None:
            cells += [fmt(r.welch[0], ".2f"), fmt(r.welch[2], ".3g")] if r.welch else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean: float | None, std: float | None) -> str:
    return "" if mean is None else fmt(mean) + ("" if std is None else f" ± {fmt(std)}")


def plot_groups(groups: list[Group], path: Path, title: str = "sweep", baseline: str | None = None) -> bool:
    """Each group's mean ± std (error bars) of the best monitored value and, beside it, of the compared test
    metric, in the table's order; each completed job a dot, the baseline's mean a dashed line. False (and no
    file) when no group has a value."""
    if not any(g.values() for g in groups):
        return False
    from matplotlib.figure import Figure

    compared = _compared(groups)
    panels = [(None, f"best {_monitor(groups) or 'monitored value'}")]
    if compared:
        panels.append((compared, f"test/{compared}"))
    keys = list(groups[0].key)
    labels = [(g.key[keys[0]] if len(keys) == 1 else g.label)  # one key: its name on the axis
              + ("" if len(g.done) == len(g.jobs) else f"\n({len(g.done)} of {len(g.jobs)})") for g in groups]
    wide = max(len(line) for label in labels for line in label.splitlines()) > 8
    figure = Figure(figsize=(max(6.4, 0.45 * len(groups) + 2) * len(panels), 4.2 + (1.0 if wide else 0)), dpi=100,
                    layout="constrained")
    base = parse_baseline(baseline) if baseline else None
    for i, (metric, ylabel) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        for x, g in enumerate(groups):
            values = g.values(metric)
            mean, std = mean_std(values)
            if mean is None:
                continue
            ax.scatter([x] * len(values), values, s=12, alpha=0.5, color="tab:gray")
            is_base = base is not None and g.key.get(base[0]) == base[1]
            ax.errorbar([x], [mean], yerr=[std or 0.0], fmt="o", capsize=4,
                        color="tab:orange" if is_base else "tab:blue")
            if is_base:  # one label for the legend, however many baseline groups
                ax.axhline(mean, color="tab:orange", linestyle="--", linewidth=1,
                           label="_" if ax.get_legend_handles_labels()[0] else f"{baseline} (mean)")
        ax.set_xticks(range(len(groups)), labels, rotation=45 if wide else 0, ha="right" if wide else "center")
        if wide_range([v for g in groups for v in g.values(metric)]):
            ax.set_yscale("log")
            ylabel += " (log scale)"
        ax.set_ylabel(ylabel)
        if len(keys) == 1:
            ax.set_xlabel(keys[0])
        ax.grid(True, axis="y", alpha=0.3)
        if base is not None and i == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    n = sum(len(g.done) for g in groups)
    figure.suptitle(f"{title}: mean ± std of {len(groups)} groups ({n} completed jobs)", fontsize=10)
    figure.savefig(path)
    return True


def wide_range(values: Sequence[float]) -> bool:
    """Whether positive values span so much (a diverged group beside the others: 300 bpc against 1.7) that only a
    log scale shows the differences among the rest."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 30
