# Two commands for a newcomer: `make train` and `make test`. Each builds .venv first if needed.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of torch: this project's machines serve it from a CPU-only index. Elsewhere PyPI's Linux
# torch is the CUDA build (several GB): on a CPU-only machine pass PyTorch's CPU index,
#   make train TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
# On a GPU machine install your own CUDA build into .venv first (or pass TORCH and TORCH_INDEX for it):
# an existing torch is kept.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
ARGS  ?=

.PHONY: setup train test test-all bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

train: setup
	$(VENV)/bin/lstm-train $(ARGS)

test: setup
	$(PY) -m pytest -q

test-all: setup  # the default suite plus the slow tests
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) scripts/bench_lstm.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check lstm_train scripts tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
