"""The long-range sweep plot (cli/long_range.py): test accuracy by cell and sequence length, as a table and a PNG."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from lstm_train.cli import long_range
from tests.helpers import png_size


@pytest.fixture
def sweep_dir(tmp_path, compose_cfg):
    """A long_range sweep dir of finished jobs (two at one point), and one unfinished job."""
    accs = {("lstm", 10): [0.99, 0.97], ("lstm", 100): [0.95], ("rnn", 10): [0.9], ("rnn", 100): [0.74]}
    job = 0
    for (cell, n), values in accs.items():
        for acc in values:
            cfg = compose_cfg("experiment=long_range", f"model.cell={cell}", f"task.seq_len={n}")
            (tmp_path / f"{job}/.hydra").mkdir(parents=True)
            OmegaConf.save(cfg, tmp_path / f"{job}/.hydra/config.yaml")
            (tmp_path / f"{job}/metrics.json").write_text(json.dumps({"test": {"acc": acc, "loss": 0.1}}))
            job += 1
    (tmp_path / "unfinished/.hydra").mkdir(parents=True)  # a job without metrics.json is left out
    return tmp_path


def test_plot_long_range_reads_a_sweep_dir(sweep_dir, capsys):
    long_range.main([str(sweep_dir), "--out", str(sweep_dir / "plot.png")])
    out = capsys.readouterr().out
    assert "| 10 | 0.9800 (n=2) | 0.9000 |" in out and "| 100 | 0.9500 | 0.7400 |" in out
    assert png_size(sweep_dir / "plot.png") == (650, 420)


def test_a_dir_without_a_finished_job_is_refused(tmp_path, capsys):
    (tmp_path / "unfinished/.hydra").mkdir(parents=True)
    with pytest.raises(SystemExit):
        long_range.main([str(tmp_path / "unfinished")])
    assert "holds no finished first_last job" in capsys.readouterr().err
