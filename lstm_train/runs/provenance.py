"""What a run dir records to be made again, and ``lstm-train --rerun RUN_DIR [overrides]``, which makes it again.

- :func:`record`: at a run's start, the Hydra job (never a data-parallel rank > 0) writes ``provenance.yaml``: the
  command line, the code (version; commit, branch and dirty state of its git checkout, the uncommitted changes in
  ``provenance.diff`` beside it, untracked files listed), the versions that shape the numbers, the machine. YAML,
  as Hydra's own records in ``.hydra/`` are: read by eye, loaded by any YAML reader. A later start in the same dir
  (a resume) appends itself under ``resumes:`` and never rewrites what is above it.
- :func:`rerun_argv`: ``--rerun RUN_DIR`` becomes the Hydra command line of a new run with the recorded config
  (see its docstring for why the checkpoint's); the job then warns, one line each, where the code or the versions
  differ from the record.

Gathering never fails a run: what cannot be known (no git, not a checkout, a detached HEAD's branch) is recorded
as ``unknown``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.singleton import Singleton
from omegaconf import DictConfig, OmegaConf

from lstm_train.config import CONFIG_PACKAGE
from lstm_train.errors import ConfigError, command
from lstm_train.runs.checkpoint import load_checkpoint, migrate_config
from lstm_train.schema import escaped

log = logging.getLogger(__name__)

FILE = "provenance.yaml"
DIFF = "provenance.diff"
UNKNOWN = "unknown"
ROOT = Path(__file__).resolve().parents[2]  # the checkout, when lstm_train is run from one
DISTRIBUTIONS = ("lstm-train", "torch", "hydra-core", "omegaconf",  # then Hydra's plugins, those installed
                 "hydra-joblib-launcher", "hydra-submitit-launcher", "optuna")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")  # the ones torch and our kernel dispatch on
MAX_UNTRACKED = 50
HEADER = ("# How this run was made (docs/training.md#reproducing-a-run). `lstm-train --rerun <this dir>` makes it "
          "again.\n")


class _Session(metaclass=Singleton):
    """What the lstm-train process was started with, for its jobs: a Hydra launcher hands its singletons to the
    job processes it starts (joblib, submitit), where sys.argv is the launcher's own."""

    def __init__(self) -> None:
        self.argv: list[str] | None = None
        self.rerun: Path | None = None


# ---- gathering ------------------------------------------------------------------------------------------------
def gather(argv: list[str], threads: int, rerun_of: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """This process's record, and the uncommitted changes of its checkout (None if none, or unknown)."""
    git, diff = _git()
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([_program(argv[0]), *argv[1:]]),
        "cwd": os.getcwd(),
        **({"rerun_of": str(rerun_of.resolve())} if rerun_of is not None else {}),
        "git": git,
        "versions": {"python": platform.python_version(), **_versions()},
        "machine": _machine(threads),
    }, diff


def _program(argv0: str) -> str:
    """How the user started lstm-train, as they could start it again."""
    if Path(argv0).name in ("train.py", "-m"):  # python -m lstm_train.train
        return f"{shlex.quote(sys.executable)} -m lstm_train.train"
    return command("lstm-train")


def _run_git(*args: str) -> str | None:
    try:  # GIT_OPTIONAL_LOCKS=0: a status never takes the index lock (the jobs of a sweep all ask at once)
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=10,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def _git() -> tuple[dict[str, Any], str | None]:
    unknown = {"commit": UNKNOWN, "branch": UNKNOWN, "dirty": UNKNOWN}
    head = (_run_git("rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD") or "").split("\n")
    # lstm_train installed into a venv inside some checkout is not that checkout's code
    if len(head) < 3 or not head[0] or Path(head[0]).resolve() != ROOT:
        return unknown, None
    status = _run_git("status", "--porcelain", "-z", "--untracked-files=all")
    if status is None:
        return {**unknown, "commit": head[1]}, None
    entries, changed, untracked = iter(status.split("\0")), False, []
    for entry in entries:
        if entry.startswith("??"):
            untracked.append(entry[3:])
        elif entry:
            changed = True
            if entry[0] in "RC":  # a rename or copy: the next entry is its source
                next(entries, None)
    git = {"commit": head[1], "branch": UNKNOWN if head[2] == "HEAD" else head[2], "dirty": changed}
    diff = _run_git("diff", "HEAD", "--binary") if changed else None
    if diff is not None:
        git["diff"] = DIFF  # the file it is written to (a resume's has its own name)
    if untracked:
        more = len(untracked) - MAX_UNTRACKED
        git["untracked"] = untracked[:MAX_UNTRACKED] + ([f"... and {more} more"] if more > 0 else [])
    return git, diff


def _versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["torch"] = str(torch.__version__)  # a local build's own version (+cpu, +cu130), which pip may not record
    return found


def _machine(threads: int) -> dict[str, Any]:
    machine = {"host": socket.gethostname(), "os": platform.platform(), **cpu(),
               "torch_cpu_capability": UNKNOWN, "cores": os.cpu_count(), "torch_threads": threads, "gpus": []}
    try:
        machine["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        elif torch.backends.mps.is_available():
            machine["gpus"] = ["mps"]
    except Exception:  # a broken driver: the run itself will say more
        pass
    return machine


def cpu() -> dict[str, str]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux: /proc/cpuinfo); benchmarks print it too."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return {"cpu": platform.processor() or UNKNOWN, "cpu_flags": UNKNOWN}
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in reversed(lines))}
    flags = set(field.get("flags", "").split())
    return {"cpu": field.get("model name", platform.processor() or UNKNOWN),
            "cpu_flags": " ".join(f for f in CPU_FLAGS if f in flags)}


# ---- recording --------------------------------------------------------------------------------------------------
def cpu_line(machine: dict[str, str]) -> str:
    """The line every benchmark names its CPU with (``machine``: :func:`cpu`'s keys)."""
    return f"CPU: {machine['cpu']}; flags: {machine['cpu_flags'] or 'none of ' + ', '.join(CPU_FLAGS)}"


def record(out_dir: Path, cfg: DictConfig) -> None:
    """Write ``out_dir``'s provenance.yaml (with provenance.diff if the checkout is dirty), or append this start
    to it as a resume; for a rerun, warn where the code and versions differ from the rerun dir's record."""
    session = _Session.instance()
    now, diff = gather(session.argv or sys.argv, cfg.trainer.num_threads or torch.get_num_threads(), session.rerun)
    if session.rerun is not None:
        for line in differences(session.rerun, now, diff):
            log.warning(line)
    path = out_dir / FILE
    n = len(load(out_dir).get("resumes") or []) + 1 if path.is_file() else 0
    if diff is not None:
        now["git"]["diff"] = f"provenance.resume{n}.diff" if n else DIFF
        (out_dir / now["git"]["diff"]).write_text(diff)
    if not n:
        path.write_text(HEADER + _yaml(now))
        return
    with path.open("a") as f:
        f.write(("resumes:\n" if n == 1 else "") + _yaml([now]))


def _yaml(data: Any) -> str:  # wide, so that a long command stays on one line to copy
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=2**20)


def load(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s provenance.yaml ({} if it has none, or one no longer readable)."""
    try:
        data = yaml.safe_load((run_dir / FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def differences(run_dir: Path, now: dict[str, Any], diff: str | None) -> list[str]:
    """One line for each difference between ``run_dir``'s record and ``now`` that may change the numbers."""
    then = load(run_dir)
    if not then:
        return [f"{run_dir} has no {FILE} (a run from before lstm-train recorded one): the code and versions it "
                "ran with are unknown, so this rerun may differ"]
    lines = []
    old, new = then.get("versions") or {}, now["versions"]
    for name in [*new, *(n for n in old if n not in new)]:
        if old.get(name) != new.get(name):
            lines.append(f"{run_dir} ran with {name} {old.get(name, 'not installed')}, this rerun with "
                         f"{new.get(name, 'not installed')}")
    old, new = then.get("git") or {}, now["git"]
    if old.get("commit") != new["commit"]:
        lines.append(f"{run_dir} ran the code at commit {old.get('commit', UNKNOWN)}, this rerun at {new['commit']}")
    if old.get("dirty") is True and new["dirty"] is False:
        lines.append(f"{run_dir} ran with uncommitted changes ({run_dir / DIFF}), this rerun with none "
                     f"(git apply {run_dir / DIFF} to have them)")
    elif old.get("dirty") is False and new["dirty"] is True:
        lines.append(f"{run_dir} ran with no uncommitted changes, this rerun with some (git diff HEAD)")
    elif old.get("dirty") is True and new["dirty"] is True and _read(run_dir / DIFF) != diff:
        lines.append(f"{run_dir} ran with other uncommitted changes ({run_dir / DIFF}) than this rerun's "
                     "(git diff HEAD)")
    old, new = then.get("machine") or {}, now["machine"]
    for key, what in (("torch_cpu_capability", "torch's CPU kernels for"), ("torch_threads", "torch threads:"),
                      ("gpus", "GPUs:")):  # trainer.device=auto picks a GPU where there is one
        if old.get(key, UNKNOWN) != new[key]:
            lines.append(f"{run_dir} ran with {what} {_shown(old.get(key, UNKNOWN))}, this rerun with "
                         f"{_shown(new[key])} (floating-point results may differ)")
    if then.get("resumes"):
        lines.append(f"{run_dir} was resumed {len(then['resumes'])} time(s) (its {FILE} lists each start); this "
                     "rerun trains it in one go, with its last start's config")
    return lines


def _shown(value: Any) -> str:
    return ", ".join(map(str, value)) or "none" if isinstance(value, list) else str(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# ---- rerun --------------------------------------------------------------------------------------------------
RERUN = "rerun"  # the config group whose one option, recorded, is the rerun dir's config (package _global_)


def rerun_argv(argv: list[str]) -> list[str]:
    """``argv`` for Hydra: as given, or for ``--rerun RUN_DIR [args]`` the args plus RUN_DIR's recorded overrides
    and ``+rerun=recorded``, a config option that holds RUN_DIR's config, merged over the composed one.

    The config is the checkpoint's (checkpoints/last.pt): resolved values, as the run trained with them (a
    ``${threads_per_job:}`` of a parallel sweep's job stays the 1 it was), and brought up to today's keys by the
    one reader of old checkpoints; a run with no checkpoint yet gets its .hydra/config.yaml. The recorded
    overrides are composed too, so that each group is the option whose schema the values fit. The user's
    overrides go on top: every key whose value they change, in a composition of the recorded overrides with and
    without them (a group option swapped, an experiment applied), is taken from today's conf/, the rest as
    recorded."""
    session = _Session.instance()
    session.argv, session.rerun = list(argv), None
    args = argv[1:]
    where = next((i for i, a in enumerate(args) if a == "--rerun" or a.startswith("--rerun=")), None)
    if where is None:
        return argv
    flag = args.pop(where)
    value = flag.partition("=")[2] if "=" in flag else (args.pop(where) if where < len(args) else "")
    source = _run_dir(value)
    config, recorded = _recorded(source)
    user = OverridesParser.create().parse_overrides(_hydra_overrides(args))
    base = _on_top(config, recorded, user)
    ConfigStore.instance().store(group=RERUN, name="recorded", node=config, package="_global_")
    session.rerun = source
    # Hydra reads its overrides as one run of arguments: the recorded ones go just before the user's (after the
    # flags before them), or first if the user gave none (a flag may take the argument after it).
    first = next((i for i, a in enumerate(args) if user and a == user[0].input_line), len(args) if user else 0)
    return [argv[0], *args[:first], *base, f"+{RERUN}=recorded", *args[first:]]


def _on_top(config: dict[str, Any], recorded: list[str], user: list[Override]) -> list[str]:
    """The recorded overrides the user's leave standing; ``config`` without the keys the user's change."""
    keys = {o.key_or_group for o in user}
    parser = OverridesParser.create()
    base = [o for o in recorded if parser.parse_override(o).key_or_group not in keys]
    for path in _changed_by(base, [o for o in user if not o.is_hydra_override() and not o.is_sweep_override()]):
        _remove(config, path)
    for o in user:  # a sweep's keys (lstm-train --rerun DIR -m trainer.seed=1,2): each job has its own value
        if o.is_sweep_override():
            _remove(config, tuple(o.key_or_group.split(".")))
    return base


EXAMPLE = "lstm-train --rerun outputs/runs/<run> [key=value ...]"


def _run_dir(value: str) -> Path:
    if not value or (not Path(value).exists() and "=" in value):
        raise ConfigError("--rerun", f"needs the run dir to train again; give one, as {EXAMPLE}")
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"--rerun {value}", f"{'not a directory' if path.exists() else 'no such directory'}; "
                          f"give a run dir, as {EXAMPLE}")
    if not (path / ".hydra" / "overrides.yaml").is_file():
        if (path / "multirun.yaml").is_file():
            jobs = sorted(p.name for p in path.iterdir() if (p / ".hydra").is_dir())
            example = f" such as {path / jobs[0]}" if jobs else ""
            raise ConfigError(f"--rerun {value}", f"a sweep dir; give one of its job dirs{example}")
        raise ConfigError(f"--rerun {value}", "not a run dir of lstm-train (it has no .hydra/overrides.yaml); "
                          f"give a run dir, as {EXAMPLE}")
    return path


def _recorded(source: Path) -> tuple[dict[str, Any], list[str]]:
    """``source``'s config (plain dicts, as the rerun starts it) and its own task overrides."""
    try:
        overrides = [str(o) for o in OmegaConf.load(source / ".hydra" / "overrides.yaml")]
        config = OmegaConf.to_container(OmegaConf.load(source / ".hydra" / "config.yaml"))
        problem = None if isinstance(config, dict) and isinstance(config.get("trainer"), dict) else "no trainer"
        config = migrate_config(config) if problem is None else config
    except Exception as e:
        problem = str(e).splitlines()[0]
    if problem is not None:
        raise ConfigError(f"--rerun {source}", f"cannot read its .hydra/ ({problem}); give a run dir lstm-train "
                          "wrote")
    last = source / "checkpoints" / "last.pt"
    if last.is_file():
        try:
            config = escaped(load_checkpoint(last)["config"])
        except ValueError as e:
            log.warning("%s; rerunning from %s instead", e, source / ".hydra" / "config.yaml")
    dropped = {RERUN}
    resume = config["trainer"].get("resume")
    # A run that continued its own last.pt is rerun from the start; one that started from another run's
    # checkpoint starts from it again.
    if resume in (None, "auto") or Path(resume).expanduser().resolve() == last.resolve():
        config["trainer"]["resume"] = None
        dropped.add("trainer.resume")
    parser = OverridesParser.create()
    return config, [o for o in overrides if parser.parse_override(o).key_or_group not in dropped]


def _hydra_overrides(args: list[str]) -> list[str]:
    """The overrides among Hydra's command-line arguments (its flags left out)."""
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_known_args(args)[0].overrides
    except SystemExit:  # a flag Hydra does not know: it says so itself when it parses them
        return [a for a in args if not a.startswith("-")]


def _changed_by(base: list[str], user: list[Override]) -> list[tuple[str, ...]]:
    """The config paths whose values ``user``'s overrides change, composed after ``base``'s, under today's conf/."""
    if not user:
        return []
    from hydra import compose, initialize_config_module

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        before, after = (_plain(compose("config", overrides)) for overrides in (base, [*base, *(
            o.input_line for o in user)]))
    return list(_paths_changed(before, after))


def _plain(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs a run (${hydra:...}): compared as written
        return OmegaConf.to_container(cfg)


def _paths_changed(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    changed = []
    for key in [*a, *(k for k in b if k not in a)]:
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            changed += _paths_changed(a[key], b[key], (*prefix, key))
        elif key not in a or key not in b or a[key] != b[key]:
            changed.append((*prefix, key))
    return changed


def _remove(config: dict[str, Any], path: tuple[str, ...]) -> None:
    node = config
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)
