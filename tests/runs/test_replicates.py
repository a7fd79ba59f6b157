"""lstm_train.runs.replicates: groups over seeds (n, mean ± std, ranked), the baseline they are compared
with and Welch's t-test; a diverged group's values."""

from __future__ import annotations

import csv
import math
import random
import statistics

import pytest

from lstm_train.runs.replicates import incomplete_beta, welch, wide_range
from lstm_train.runs.sweep import main, write_summary
from tests.helpers import SEEDED, make_job


def stats_of(variant: str, which: int) -> tuple[float, float]:
    values = [v[which] for (name, _), v in SEEDED.items() if name == variant]
    return statistics.mean(values), statistics.stdev(values)


def test_a_sweep_over_seeds_is_also_summarised_per_group(seeded):
    paths = write_summary(seeded, baseline="model.variant=v")
    assert [p.name for p in paths] == ["sweep_summary.csv", "sweep_summary.md", "sweep_summary.png",
                                       "sweep_summary_groups.csv", "sweep_summary_groups.png"]
    assert paths[4].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(paths[3].open()))
    # ranked by the mean best val/acc, highest first: nog 0.94, v 0.91, cifg 0.90, nfg 0.75
    assert [(r["rank"], r["model.variant"], r["n"], r["jobs"], r["failed"], r["running"]) for r in rows] == [
        ("1", "nog", "2", "3", "1", "0"), ("2", "v", "3", "3", "0", "0"), ("3", "cifg", "2", "3", "0", "1"),
        ("4", "nfg", "3", "3", "0", "0")]
    assert "trainer.seed" not in rows[0] and "debug" not in rows[0]  # the replicate key, and a key all jobs share
    for r in rows:
        variant = r["model.variant"]
        assert r["monitor"] == "val/acc"
        assert (float(r["best mean"]), float(r["best std"])) == pytest.approx(stats_of(variant, 0))
        assert (float(r["test/acc mean"]), float(r["test/acc std"])) == pytest.approx(stats_of(variant, 1))
        assert float(r["test/loss mean"]) == pytest.approx(1 - stats_of(variant, 1)[0])
    by_variant = {r["model.variant"]: r for r in rows}
    assert (by_variant["v"]["t"], by_variant["v"]["p"]) == ("", "")  # the baseline itself
    # Welch's test on test/acc (the monitor's own metric), nfg against v, computed here by its formulas
    (m1, s1), (m2, s2) = stats_of("nfg", 1), stats_of("v", 1)
    se2 = s1**2 / 3 + s2**2 / 3
    t, df = (m1 - m2) / se2**0.5, se2**2 / ((s1**2 / 3) ** 2 / 2 + (s2**2 / 3) ** 2 / 2)
    assert float(by_variant["nfg"]["t"]) == pytest.approx(t) and float(by_variant["nfg"]["df"]) == pytest.approx(df)
    scipy_stats = pytest.importorskip("scipy.stats")
    for variant in ("nfg", "nog", "cifg"):
        accs = [v[1] for (name, _), v in SEEDED.items() if name == variant]
        expected = scipy_stats.ttest_ind(accs, [v[1] for (name, _), v in SEEDED.items() if name == "v"],
                                         equal_var=False)
        assert float(by_variant[variant]["t"]) == pytest.approx(expected.statistic)
        assert float(by_variant[variant]["p"]) == pytest.approx(expected.pvalue)

    md = paths[1].read_text()
    assert "## Over trainer.seed" in md
    assert "Welch's t-test of each group's test/acc against the group with model.variant=v" in md
    table = md[md.index("## Over trainer.seed"):].splitlines()
    table = [line for line in table if line.startswith("| ")]
    assert table[0] == ("| rank | model.variant | n | failed | running | best val/acc | test/acc | test/loss | t | p |")
    m, s = stats_of("nog", 0)
    assert table[1].startswith(f"| 1 | nog | 2 of 3 | 1 | 0 | {m:.4f} ± {s:.4f} |")
    assert table[2].startswith("| 2 | v | 3 of 3 | 0 | 0 |") and table[2].endswith("|  |  |")
    assert table[4].endswith(f"| {t:.2f} | {float(by_variant['nfg']['p']):.3g} |")


def test_groups_rank_lower_first_for_a_loss_and_keep_other_swept_keys(tmp_path):
    """bpc: lower is better. Two swept keys besides the seed: one group per pair of values."""
    values = {("0.001", "64"): [1.9, 2.1], ("0.001", "128"): [1.5, 1.6], ("0.01", "64"): [1.7, 1.8],
              ("0.01", "128"): [2.5]}  # the last group has one seed: no std
    num = 0
    for (lr, hidden), bpcs in values.items():
        for seed, bpc in enumerate(bpcs):
            make_job(tmp_path, num, [f"optim.lr={lr}", f"model.hidden_size={hidden}", f"trainer.seed={seed}"],
                     best=bpc, task="text_char", task_monitor="bpc", test={"bpc": bpc + 0.1})
            num += 1
    rows = list(csv.DictReader(write_summary(tmp_path)[3].open()))
    assert [(r["optim.lr"], r["model.hidden_size"]) for r in rows] == [
        ("0.001", "128"), ("0.01", "64"), ("0.001", "64"), ("0.01", "128")]
    assert float(rows[0]["best mean"]) == pytest.approx(1.55) and rows[0]["monitor"] == "val/bpc"
    assert float(rows[0]["best std"]) == pytest.approx(statistics.stdev([1.5, 1.6]))
    assert rows[3]["best std"] == "" and "t" not in rows[0]  # one value: no std; no baseline: no test


def test_groups_of_different_monitors_say_which(tmp_path):
    """A sweep over tasks: val/acc in some groups, val/bpc in others; each ranked in its own direction."""
    num = 0
    for task, monitor, values in [("first_last", "acc", [0.9, 0.8]), ("text_char", "bpc", [1.5, 1.7])]:
        for seed, value in enumerate(values):
            make_job(tmp_path, num, [f"task={task}", f"trainer.seed={seed}"], best=value, task=task,
                     task_monitor=monitor, test={monitor: value})
            num += 1
    md = write_summary(tmp_path, baseline="task=first_last")[1].read_text()
    table = [line for line in md[md.index("## Over"):].splitlines() if line.startswith("| ")]
    assert "each in its monitor's direction" in md and "test value" not in md
    assert table[0] == "| rank | task | n | failed | running | best (monitor) | test/acc | test/bpc | t | p |"
    assert table[1].startswith("| 1 | first_last | 2 of 2 | 0 | 0 | 0.8500 ± 0.0707 (val/acc) |")
    # text_char against first_last would be bpc against accuracy: no test
    assert table[2].startswith("| 2 | text_char | 2 of 2 | 0 | 0 | 1.6000 ± 0.1414 (val/bpc) |")
    assert table[2].endswith("|  |  |")


def test_a_sweep_without_seeds_has_no_groups_and_drops_old_ones(seeded, tmp_path):
    write_summary(seeded)
    assert (seeded / "sweep_summary_groups.csv").is_file()
    # --replicate names another key: the seeds are then groups of their own, one job each
    main([str(seeded), "--replicate", "model.variant"])
    rows = list(csv.DictReader((seeded / "sweep_summary_groups.csv").open()))
    assert sorted(r["trainer.seed"] for r in rows) == ["0", "1", "2"]
    other = tmp_path / "lr"
    for num, lr in enumerate(["0.1", "0.01"]):
        make_job(other, num, [f"optim.lr={lr}"], best=0.5 + num / 10)
    (other / "sweep_summary_groups.csv").write_text("stale")
    assert "sweep_summary_groups.csv" not in [p.name for p in write_summary(other)]
    assert not (other / "sweep_summary_groups.csv").exists()
    assert "## Over" not in (other / "sweep_summary.md").read_text()


@pytest.mark.parametrize(("args", "error"), [
    (["--baseline", "model.variant"], "--baseline model.variant: not KEY=VALUE; give the group the others are "
                                      "compared with, e.g. --baseline model.variant=v"),
    (["--baseline", "model.variant=lstm"], "--baseline model.variant=lstm: no group has model.variant=lstm (its "
                                           "values are cifg, nfg, nog, v); choose one of them"),
    (["--baseline", "optim.lr=0.1"], "--baseline optim.lr=0.1: no group has optim.lr=0.1 (it is not a swept key); "
                                     "choose one of them"),
    (["--replicate", "optim.lr"], "--replicate optim.lr: the jobs of {d} do not differ in it; name a key the sweep "
                                  "varies"),
])
def test_a_baseline_or_replicate_that_names_nothing_is_one_line(seeded, capsys, args, error):
    with pytest.raises(SystemExit) as exit_info:
        main([str(seeded), *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"lstm-sweep-summary: error: {error.format(d=seeded)}"]
    assert not (seeded / "sweep_summary.md").exists()  # refused before writing anything


def test_welch_against_hand_computed_values():
    # n = 2 each, equal variances: df = 2, and Student's t with 2 df has P(|T| >= t) = 1 - t / sqrt(t^2 + 2)
    t, df, p = welch([1.0, 3.0], [0.0, 2.0])
    assert (t, df) == pytest.approx((2**-0.5, 2.0)) and p == pytest.approx(1 - 5**-0.5, rel=1e-12)
    # unequal variances: t = (2 - 4) / sqrt(1/3 + 4/3), df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    t, df, p = welch([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert t == pytest.approx(-2 / (5 / 3) ** 0.5) and df == pytest.approx(50 / 17)
    assert welch([1.0, 2.0], [3.0]) is None  # one value has no variance
    assert welch([1.0, 1.0], [2.0, 2.0])[::2] == (-float("inf"), 0.0)
    # I_x(1/2, 1/2) = 2/pi asin(sqrt x); I_x(a, 1) = x^a; the symmetry branch too
    assert incomplete_beta(0.5, 0.5, 0.3) == pytest.approx(2 / math.pi * math.asin(0.3**0.5), rel=1e-12)
    assert incomplete_beta(0.5, 0.5, 0.9) == pytest.approx(2 / math.pi * math.asin(0.9**0.5), rel=1e-12)
    assert incomplete_beta(2.5, 1.0, 0.9) == pytest.approx(0.9**2.5, rel=1e-12)
    assert incomplete_beta(1.0, 3.0, 0.2) == pytest.approx(1 - 0.8**3, rel=1e-12)


def test_welch_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.gauss(0, rng.uniform(0.01, 3)) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(1, rng.uniform(0.01, 3)) for _ in range(rng.randint(2, 8))]
        expected = scipy_stats.ttest_ind(a, b, equal_var=False)
        t, df, p = welch(a, b)
        assert (t, df, p) == pytest.approx((expected.statistic, expected.df, expected.pvalue), rel=1e-9, abs=1e-12)


def test_a_diverged_groups_huge_values_are_written_short(tmp_path):
    """A diverged run's perplexity (2 ** 300) fills a table cell in scientific notation, not in 91 digits."""
    for seed, ppl in enumerate((2.0 ** 300, 2.0 ** 310)):
        make_job(tmp_path, seed, [f"trainer.seed={seed}"], best=300.0 + seed, task="text_char",
                 task_monitor="bpc", test={"ppl": ppl})
    summary = write_summary(tmp_path)[1].read_text()
    assert "2.086e+93" in summary and "1.044e+93" in summary  # the second job's value, and the group's mean
    assert max(len(line) for line in summary.splitlines() if line.startswith("|")) < 100


@pytest.mark.parametrize(("values", "log"), [([1.64, 1.70, 2.55, 306.6], True), ([1.64, 1.70, 2.55], False),
                                             ([0.97, 0.99], False), ([-1.0, 100.0], False), ([], False)])
def test_a_group_far_from_the_others_puts_the_plot_on_a_log_scale(values, log):
    assert wide_range(values) is log
