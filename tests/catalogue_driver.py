"""Run many command lines in one process (imports are paid once): read a JSON list of [program, args...]
from stdin, run each program's main() as its console script would, print one JSON result per command.

Used by tests/test_catalogue.py and tests/models/test_toy_model.py; each result is {"code": exit status, "stderr": what
it printed there, "traceback": an uncaught exception's traceback or null}.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import traceback

from hydra.core.global_hydra import GlobalHydra

from lstm_train import train
from lstm_train.cli import generate, predict, visualize

PROGRAMS = {"lstm-train": train.main, "lstm-generate": generate.main, "lstm-predict": predict.main,
            "lstm-visualize": visualize.main}


def run(program: str, args: list[str]) -> dict:
    sys.argv = [program, *args]
    stderr = io.StringIO()
    code, trace = 0, None
    with contextlib.redirect_stderr(stderr):
        try:
            PROGRAMS[program]()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code, trace = None, traceback.format_exc()
    GlobalHydra.instance().clear()
    logging.getLogger().handlers.clear()  # Hydra's run logging, which points at the last run dir
    return {"code": code, "stderr": stderr.getvalue(), "traceback": trace}


if __name__ == "__main__":
    for program, *args in json.load(sys.stdin):
        print(json.dumps(run(program, args)), flush=True)
