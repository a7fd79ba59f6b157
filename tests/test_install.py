"""A real install: build the wheel, install it into a fresh venv, train from an unrelated directory."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_trains_from_any_directory(tmp_path):
    # Build from a copy, so that the checkout gets no build/ and the wheel holds only what is packaged.
    source = tmp_path / "source"
    for name in ("conf", "lstm_train", "hydra_plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("lstm_train-*.whl"))
    assert "lstm_train/nn/csrc/recurrence.cpp" in zipfile.ZipFile(wheel).namelist()  # the kernel builds from it

    # A fresh venv that sees this environment's packages (torch and the rest) but not this checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run([str(venv / "bin/lstm-train"), "debug=fast", "trainer.progress_bar=false"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LSTM fast path: the compiled C++ kernel" in proc.stdout  # built from the installed source, or cached
    (run_dir,) = (work / "outputs/runs").iterdir()  # under the working directory's outputs/
    assert run_dir.name.endswith("_first_last-classifier-debug")
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 16
    hydra = (run_dir / ".hydra/hydra.yaml").read_text()
    assert "- path: lstm_train.conf\n      schema: pkg\n      provider: main" in hydra  # from the installed package
    where = subprocess.run([str(venv / "bin/python"), "-c", "import lstm_train; print(lstm_train.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(purelib)), where
