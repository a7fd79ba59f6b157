# Two commands for a newcomer: `make train` and `make test`. Each builds .venv first if needed.
PYTHON ?= python3
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip install --quiet
# The torch a new venv gets; one already in it is kept, so on a GPU machine you may install your own build first.
# PyPI's Linux torch is a CUDA build (several GB with its nvidia-* packages). Without a visible NVIDIA GPU the CPU
# build is meant: the one pip finds where it is configured to look (this project's machines hold it on disk), else
# PyTorch's CPU index. With a GPU, PyPI's CUDA build. TORCH_INDEX overrides the choice (empty: PyPI's build), e.g.
#   make train TORCH_INDEX="--index-url https://download.pytorch.org/whl/<cuda tag>"
TORCH ?= torch==2.13.0
ifneq ($(origin TORCH_INDEX),undefined)
INSTALL_TORCH = $(PIP) $(TORCH_INDEX) "$(TORCH)"
else ifneq ($(wildcard /proc/driver/nvidia)$(shell command -v nvidia-smi),)
INSTALL_TORCH = $(PIP) "$(TORCH)"
else
INSTALL_TORCH = $(PIP) "$(TORCH)+cpu" 2>/dev/null || $(PIP) --index-url https://download.pytorch.org/whl/cpu "$(TORCH)"
endif
ARGS  ?=

.PHONY: setup train test test-all bench lint docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(INSTALL_TORCH)
	$(PIP) -e ".[dev]"
	touch $@

train: setup
	$(VENV)/bin/lstm-train $(ARGS)

# The suite on up to 4 cores (pytest-xdist), a test file per worker: its module-scoped runs are trained once.
PYTEST := $(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile

test: setup
	$(PYTEST)

test-all: setup  # the default suite plus the slow tests
	$(PYTEST) -m ""

bench: setup
	$(PY) scripts/bench_lstm.py $(ARGS)

# The documentation site, built strictly (a broken link or anchor fails) into site/, which also opens from disk.
# Live preview while writing: .venv/bin/mkdocs serve (http://127.0.0.1:8000).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: setup
	$(VENV)/bin/ruff check lstm_train scripts tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache site
