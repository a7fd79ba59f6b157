# Two commands for a newcomer: `make train` and `make test`. Each builds .venv first if needed.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# The CPU build of torch. On a GPU machine, install your own CUDA build into .venv first
# (or pass TORCH="torch==X.Y.Z" with your index options): an existing torch is kept.
TORCH ?= torch==2.13.0
ARGS  ?=

.PHONY: setup train test test-all bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
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
