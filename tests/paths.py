"""Our LSTM's code paths, so that its tests run on each: backend fast on the compiled kernel ("compiled") or on the
pure-PyTorch loop ("fast"), and backend reference. conftest's ``backend`` fixture takes one of them as its parameter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from lstm_train.nn.compiled import ENV

PATHS = ("compiled", "fast", "reference")
FAST_PATHS = ("compiled", "fast")
_SETTING = {"compiled": "compiled", "fast": "pytorch", "reference": "auto"}


@contextmanager
def on_path(path: str) -> Iterator[str]:
    """Run the block with ``LSTM_TRAIN_FAST_PATH`` set for ``path``; yields the LSTM backend that takes it."""
    before = os.environ.get(ENV)
    os.environ[ENV] = _SETTING[path]
    try:
        yield "reference" if path == "reference" else "fast"
    finally:
        if before is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = before
