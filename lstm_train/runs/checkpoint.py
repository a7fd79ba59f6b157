"""The one checkpoint format: a dict of tensors and plain containers, for torch.load(weights_only=True).

Keys (written by :meth:`lstm_train.training.trainer.Trainer.state_dict`): ``format``, ``model`` (the weights as
trained), ``ema`` (None, or with trainer.ema_decay their moving average: ``weights`` and ``updates``), ``optimizer``,
``scheduler``, ``progress`` (step, epoch, batch in epoch, best, early stopping, the time spent), ``rng``,
``config`` (the resolved config as plain dicts), ``task`` (what the task needs to rebuild itself, e.g. a
vocabulary), ``num_params``, ``interval`` (what the steps since the last evaluation accumulated: log sums, train
metrics, a task's carried state), so that a run stopped at any step resumes to the same numbers.

A checkpoint written by an older version has an older config: :func:`migrate_config` brings it up to today's
keys as it is read (the one place that knows the keys' history), so everything downstream reads one format.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickletools
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from lstm_train.config import flatten
from lstm_train.errors import ConfigError
from lstm_train.nn.variants import PLAIN_CELL

FORMAT = 1

# Keys added to the configs since the first checkpoints, with the value that does what a config without the key
# did: group -> {key: value}, or (group, option name) -> {key: value} for keys of one option.
ADDED: dict[str | tuple[str, str], dict[str, Any]] = {
    # the GRU/RNN baselines; chrono initialisation; the LSTM variants and recurrent regularisers (the plain cell)
    "model": {"cell": "lstm", "chrono_max_len": None, **PLAIN_CELL},
    ("task", "text_char"): {"bptt": False, "sample_length": 0, "eval_streams": None},  # eval from zeros per chunk
    ("model", "tagger"): {"char_dim": 0, "char_hidden": 50},  # character-aware words (off)
    ("model", "seq2seq"): {"output_dropout": 0.0},
    ("task", "brown_pos"): {"word_dropout": 0.0},
    ("task", "g2p"): {"by_length": False},  # batches of similar lengths (runs before it drew random batches)
    ("task", "conll"): {"word_dropout": 0.0},
    # data-parallel training, thread counts, the gate probe (off, so its batch size is not used), label smoothing,
    # mixed precision, weight averaging, a time budget
    "trainer": {"devices": 1, "num_threads": None, "probe_every_n_steps": None, "probe_size": 64,
                "label_smoothing": 0.0, "precision": "fp32", "ema_decay": None,
                "max_time": None},
}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """``source``'s bytes at ``path``, atomically as :func:`save_checkpoint` writes."""
    with open(source, "rb") as f:
        atomic_write(path, lambda out: shutil.copyfileobj(f, out))


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed over it: a reader sees the old file or
    the whole new one, never a part. The temporary name is this write's own (two writers never share one), and
    the data is on disk before the rename, the rename before returning (fsync of the file, then of the dir), so
    that a power cut leaves no empty or partial file under ``path`` either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600); this one gets the umask's mode, as a plain open would.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name the one it was for
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e  # PermissionError stays one
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # no directory handles to sync (Windows); its renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (FUSE, network mounts) cannot sync a directory: the rename stands
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict; a one-line ValueError for any file that is not an lstm-train checkpoint."""
    try:  # read onto the CPU, so that every failure here is the file's; moved to the device below
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": our one line says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch.load fails on foreign files with anything from KeyError('101') on a text file to a
        # 20-line "Weights only load failed" on a pickle of arbitrary objects: none of it helps the user.
        refused = "Weights only load failed" in str(e) and _is_pickle(path)
        why = "it holds arbitrary Python objects" if refused else "truncated or not a torch file"
        raise ValueError(f"{path} is not an lstm-train checkpoint ({why})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstm-train checkpoint (format {FORMAT})")
    problem = contents_problem(state)
    if problem:
        raise ValueError(f"{path} is not a complete lstm-train checkpoint: {problem}")
    state["config"] = migrate_config(state["config"])
    device = torch.device(map_location)
    # RNG states stay on the CPU: torch.set_rng_state and cuda.set_rng_state_all take CPU byte tensors.
    return {k: v if k == "rng" else _to_device(v, device) for k, v in state.items()}


def evaluated_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model weights a checkpoint's run evaluated: the moving average with trainer.ema_decay, else the weights
    as trained (``state["model"]``, what a resumed run trains on)."""
    ema = state.get("ema")
    return state["model"] if ema is None else ema["weights"]


def checkpoint_file(path: str | Path, latest: bool = False, note: Callable[[str], None] | None = None) -> Path:
    """The checkpoint file ``path`` names: a file as it is, or one of a run dir's (every run prints its dir), or of
    its checkpoints/. With ``latest``, last.pt (the state a resume continues); else the weights the run tested:
    best.pt, or last.pt for a run whose metrics.json says it tested its last weights, or that saved no best.pt,
    which ``note`` is told in one line. Nothing is read but names and metrics.json; a one-line ValueError says
    what is missing and what to give instead."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    want = "last.pt" if latest else "best.pt"
    if not path.is_dir():
        raise ValueError(f"no checkpoint file at {path} (nothing there); give a run dir or a checkpoint in one "
                         f"(RUN/checkpoints/{want})")
    folder = path / "checkpoints"
    if not folder.is_dir() and path.name == "checkpoints":  # the run's checkpoints/ itself
        folder = path
    if not folder.is_dir():
        jobs = sorted(p.parent for p in path.glob("*/checkpoints"))  # lstm-train -m prints its sweep dir
        if jobs:
            raise ValueError(f"{path} is a sweep dir, not a run dir; give one of its job dirs, such as {jobs[0]}")
        raise ValueError(f"{path} holds no checkpoints/ (not a run dir?); give a run dir or a .pt file")
    last, best = folder / "last.pt", folder / "best.pt"
    usable = (last,) if latest else (best, last)
    if not any(p.is_file() for p in usable):
        raise ValueError(f"{folder} holds no {' or '.join(p.name for p in usable)} (the run stopped before saving "
                         "one); give a run dir that saved one, or a .pt file")
    if latest:
        return last
    if _tested(folder.parent) == "last" and last.is_file():
        why = "tested its last weights (metrics.json: test_checkpoint last)"
    elif best.is_file():
        return best
    else:
        why = "saved no best.pt"
    if note is not None:
        note(f"{folder.parent} {why}: using its checkpoints/last.pt")
    return last


def resume_file(path: str | Path) -> Path:
    """The checkpoint trainer.resume names: a file, or a run dir's last.pt (the latest state, which a resume
    continues); a ConfigError saying what to give instead."""
    try:
        return checkpoint_file(path, latest=True)
    except ValueError as e:
        raise ConfigError("trainer.resume", str(e)) from None


def _tested(run_dir: Path) -> str | None:
    """Which weights a finished run tested, best or last, as its metrics.json records; None if it has none."""
    try:
        tested = json.loads((run_dir / "metrics.json").read_text()).get("test_checkpoint")
    except (OSError, ValueError, AttributeError):  # no metrics.json (a run not finished), or not one we wrote
        return None
    return tested if isinstance(tested, str) else None


# Classes a config names by ``_target_`` that have moved since it was written: old path -> today's.
MOVED = {"lstm_train.optim.WarmupCosineLR": "lstm_train.training.optim.WarmupCosineLR"}


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (plain dicts) with the keys added since it was written (:data:`ADDED`) filled in and
    the classes it names where they are today (:data:`MOVED`)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for node in config.values():
        if isinstance(node, dict) and node.get("_target_") in MOVED:
            node["_target_"] = MOVED[node["_target_"]]
    for where, added in ADDED.items():
        group, option = (where, None) if isinstance(where, str) else where
        node = config.get(group)
        if isinstance(node, dict) and (option is None or node.get("name") == option):
            node.update({k: v for k, v in added.items() if k not in node})
    return config


def _is_pickle(path: str | Path) -> bool:
    """A whole torch file (a zip) or a whole pickle stream: what torch's safe loader refuses for what it holds,
    not for how it is cut. Reading the opcodes runs nothing."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            return True
        f.seek(0)
        try:
            pickletools.dis(f, out=io.StringIO())
        except Exception:
            return False
    return True


def _to_device(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_device(v, device) for v in tree)
    return tree


def rng_state() -> dict[str, Any]:
    """Torch's global generators (init, dropout); the data has its own, derived from seed and epoch."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every value that differs between two resolved configs (resume itself aside)."""
    flat_old, flat_new = flatten(old), flatten(new)
    keys = sorted((flat_old.keys() | flat_new.keys()) - {"trainer.resume"})
    return {k: (flat_old.get(k), flat_new.get(k)) for k in keys if flat_old.get(k) != flat_new.get(k)}


# What a resumed run does with a config value that differs from its checkpoint's
# (docs/training.md#stopping-and-resuming).
# Every key takes effect from the step reached, except those refused below. The trainer applies what the
# checkpoint's state would override (training/resume.py): optim.* (another optimizer starts afresh), the schedule
# (scheduler.*, optim.lr, and trainer.max_steps, max_epochs, eval_every_n_steps: its length), trainer.monitor and
# monitor_mode (the best restarts), ema_decay and max_time; the rest it reads anew at every step, evaluation, save
# and test, and the model and task are built from this run's config.
# model.* keys the weights do not depend on; any other shapes the weights or sets their initial values, which the
# checkpoint's replace: refused ("holds a different model").
RESUME_MODEL_RUNTIME = frozenset({"backend", "dropout", "output_dropout", "teacher_forcing_ratio", "beam_size",
                                  "length_penalty", "max_length_ratio", "max_length_offset",
                                  # the recurrent regularisers: masks drawn each step, no weights of their own
                                  "zoneout_c", "zoneout_h", "recurrent_dropout", "weight_drop"})
# task.* keys that use the same data otherwise, or name where it is (data moved: the vocabulary check compares what
# the files hold); any other makes other data: refused ("was trained on other data").
RESUME_TASK_RUNTIME = frozenset({"word_dropout", "sample_length", "monitor", "path", "train", "val", "test"})
# Other keys a resumed run cannot change, and why.
RESUME_REFUSED = {
    "trainer.seed": "the order of the epoch in progress derives from it",
    "trainer.batch_size": "the checkpoint's place in its epoch counts batches of its size",
}



def contents_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's contents for every reader (the tools, a resume, the test phase), or None:
    the config with its model and task groups, the model weights, the task's state, the moving average if any.
    A file edited by hand or written by something else fails here, on one line, not deep inside a reader."""
    config = state.get("config")
    if not isinstance(config, dict):
        return _wrong("config", config, "a mapping")
    for group in ("model", "task"):
        node = config.get(group)
        if not isinstance(node, dict):
            return _wrong(f"config.{group}", node, "a mapping")
        if not isinstance(node.get("name"), str):
            return _wrong(f"config.{group}.name", node.get("name"), "a string")
    weights = {"model": state.get("model")}
    if state.get("ema") is not None:
        ema = state["ema"]
        weights["ema.weights"] = ema.get("weights") if isinstance(ema, dict) else ema
    for key, value in weights.items():
        if not isinstance(value, dict) or not all(_is_weight(k, t) for k, t in value.items()):
            return _wrong(key, value, "a mapping of names to tensors")
    if not isinstance(state.get("task"), dict):
        return _wrong("task", state.get("task"), "a mapping")
    return None


def _is_weight(name: Any, value: Any) -> bool:
    """A state_dict entry: a tensor, or an LSTM's ``cell`` tag (a variant's description, lstm_train/nn/lstm.py)."""
    return isinstance(value, torch.Tensor) or (isinstance(value, str) and (name == "cell" or
                                                                          str(name).endswith(".cell")))


def _wrong(key: str, value: Any, expected: str) -> str:
    if value is None:
        return f"it has no {key}"
    kind = type(value).__name__
    shown = f"{'an' if kind[0] in 'AEIOUaeiou' else 'a'} {kind}" if isinstance(value, dict | list) else \
        f"{kind} {value!r:.40}"
    return f"its {key} is {shown}, not {expected}"
