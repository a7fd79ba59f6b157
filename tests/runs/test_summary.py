"""lstm_train.runs.summary: a sweep's jobs ranked by their best monitored value, as sweep_summary.csv, a
Markdown table and a plot."""

from __future__ import annotations

import csv

import matplotlib
import pytest

from lstm_train.runs.jobs import collect
from lstm_train.runs.sweep import write_summary
from tests.helpers import make_job


def test_summary_ranks_jobs_and_keeps_failed_and_died_ones(sweep):
    backend = matplotlib.get_backend()
    paths = write_summary(sweep)
    assert matplotlib.get_backend() == backend  # library code must not switch the process's backend
    assert [p.name for p in paths] == ["sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader(paths[0].open()))
    # best val/acc first (higher is better), then the jobs without a value in job order
    assert [(r["job"], r["status"]) for r in rows] == [
        ("1", "completed"), ("3", "completed"), ("0", "completed"), ("2", "failed"), ("4", "died"), ("5", "running"),
    ]
    by_job = {r["job"]: r for r in rows}
    assert by_job["1"]["optim.lr"] == "0.01" and by_job["1"]["debug"] == "fast"
    assert by_job["1"]["monitor"] == "val/acc" and float(by_job["1"]["best"]) == 0.95
    assert by_job["1"]["best_step"] == "20" and float(by_job["1"]["test/acc"]) == pytest.approx(0.94)
    assert float(by_job["1"]["wall_s"]) == 4.5  # the status file's job wall time
    assert float(by_job["3"]["wall_s"]) == 3.0  # no status file: metrics.json's
    assert by_job["2"]["error"].startswith("training diverged")
    assert [(by_job[n]["steps"], by_job[n]["ended"]) for n in "0132"] == [
        ("15", "early_stopping"), ("25", ""), ("45", "max_time"), ("", "")]
    assert float(by_job["5"]["wall_s"]) > 0  # running: time since its start

    md = paths[1].read_text()
    assert "6 jobs: 3 completed, 1 failed, 1 died, 1 running." in md
    assert "Ranked by the best val/acc of each job (higher is better)." in md
    assert "Every job: `debug=fast`." in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0] == ("| job | status | optim.lr | best val/acc | best step | test/loss | test/acc | steps "
                        "| wall s | error |")
    assert table[1].startswith("| 1 | completed | 0.01 | 0.9500 | 20 |")
    assert table[2].startswith("| 3 | completed | 0.003 | 0.9000 | 40 | 0.1000 | 0.8900 | 45 (max time) |")
    assert table[3].startswith("| 0 | completed | 0.001 | 0.8000 | 10 | 0.2000 | 0.7900 | 15 (early stopping) |")
    assert table[4].startswith("| 2 | failed | 0.1 |") and "training diverged" in table[4]


def test_summary_ranks_lower_first_when_lower_is_better(tmp_path):
    for num, bpc in enumerate([1.9, 1.5, 1.7]):
        make_job(tmp_path, num, [f"model.hidden_size={64 << num}"], best=bpc, task="text_char", task_monitor="bpc")
    jobs, skipped = collect(tmp_path)
    assert [j.maximize for j in jobs] == [False] * 3 and skipped == {} and {j.status for j in jobs} == {"completed"}
    md = write_summary(tmp_path)[1].read_text()
    assert "(lower is better)" in md
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:] \
        == ["| 1", "| 2", "| 0"]
