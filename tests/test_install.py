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

import pytest

from tests import ROOT


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
    names = zipfile.ZipFile(wheel).namelist()
    assert "lstm_train/nn/csrc/recurrence.cpp" in names  # the kernel builds from it
    assert "lstm_train/conf/hydra/sweeper/pruner/median.yaml" in names  # configs four levels deep too

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


def test_a_cuda_build_of_torch_without_a_gpu_builds_the_kernel_without_a_warning(tmp_path):
    """A CUDA build of torch where no GPU is (PyPI's Linux torch on a CPU machine) logs "No CUDA runtime is found"
    when cpp_extension is imported; that line would come before every one-line error. Others still show."""
    code = (
        "import logging, torch\n"
        "torch.version.cuda = '13.0'; torch.cuda._is_compiled = lambda: True; torch.cuda.is_available = lambda: False\n"
        "from lstm_train.nn import extension\n"
        "extension.build_directory('x')  # imports torch.utils.cpp_extension\n"
        "logging.getLogger('torch.utils.cpp_extension').warning('another warning')\n"
    )
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # where cpp_extension looks first
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()  # in torch's log format: W1206 01:29:43.614000 21601 <string>:5] ...
    assert len(lines) == 1 and lines[0].endswith("] another warning"), proc.stderr


FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *"import torch"*) exit {torch_rc} ;;
  *"+cpu"*) exit {local_cpu_rc} ;;
esac
"""


@pytest.mark.parametrize(("torch_rc", "local_cpu_rc", "make_args", "installs"), [
    (0, 0, [], []),  # a torch already in the venv (e.g. the user's CUDA build) is kept
    (1, 0, [], ["torch==2.13.0+cpu"]),  # the CPU build where pip finds it (this machine: on disk)
    (1, 1, [], ["torch==2.13.0+cpu", "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0"]),
    (1, 0, ["TORCH_INDEX="], ["torch==2.13.0"]),  # the user's choice: PyPI's build
])
def test_make_gives_a_new_venv_the_cpu_build_of_torch_where_no_gpu_is_visible(
        tmp_path, torch_rc, local_cpu_rc, make_args, installs):
    """PyPI's Linux torch is a CUDA build of several GB: without an NVIDIA GPU `make` installs the CPU build."""
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        pytest.skip("an NVIDIA GPU is visible: make installs PyPI's CUDA build")
    python = tmp_path / "venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.format(torch_rc=torch_rc, local_cpu_rc=local_cpu_rc))
    python.chmod(0o755)
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH", "TORCH_INDEX"}  # from `make test X=..` or the shell
    env = {k: v for k, v in os.environ.items() if k not in outer}
    subprocess.run(["make", "setup", f"VENV={tmp_path / 'venv'}", *make_args], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=60)
    calls = (tmp_path / "venv/bin/calls").read_text().splitlines()
    assert calls[0] == "-c import torch"
    assert [c.removeprefix("-m pip install --quiet ") for c in calls[1:-1]] == installs
    assert calls[-1] == "-m pip install --quiet -e .[dev]"
