"""Reading the data files of tasks: UTF-8 text (or .bz2), its lines and fields, and values shown in messages.

A file that cannot be read as text is a one-line ConfigError naming the key, the file and the fix.
"""

from __future__ import annotations

import bz2
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lstm_train.errors import ConfigError

NEWLINE = re.compile(r"\r\n|\r|\n")
# What a file that is not text starts with, and what to do about it.
FOREIGN = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it (gunzip), or recompress it with bzip2: .bz2 files are read"),
    (b"PK\x03\x04", "a zip archive", "unzip it and give the file inside"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (unxz), or recompress it with bzip2: .bz2 files are read"),
    (b"\xff\xfe", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
)


def read_text(path: str | Path, key: str = "task.path") -> str:
    """A UTF-8 file's text (bz2-compressed if its name ends in .bz2), without a byte-order mark. Anything
    else is a one-line :class:`ConfigError` ``key: ...`` naming the file and the fix: missing, a directory,
    unreadable, empty, compressed or UTF-16, not UTF-8 (with the line), binary (a NUL byte)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(key, f"{path} is a directory; give a file")
    if not path.is_file():
        raise ConfigError(key, f"no file at {path}")
    limit = max_text_bytes()
    compressed = path.suffix.lower() == ".bz2"
    try:
        size = path.stat().st_size
        if not compressed and size > limit:
            raise ConfigError(key, f"{path} is {_size(size)}, {too_large(limit)}")
        if compressed:
            with path.open("rb") as file:
                data = _decompressed(file, path, key, limit)
        else:
            data = path.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
    if not compressed and data[:3] == b"BZh" and data[4:10] == b"1AY&SY":
        raise ConfigError(key, f"{path} is bz2-compressed; name it {path.name}.bz2 to have it read")
    for magic, what, fix in FOREIGN:
        if data.startswith(magic):
            raise ConfigError(key, f"{path} is {what}, not UTF-8 text; {fix}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            key, f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save the file "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(key, f"{path}:{line}: a NUL byte: this is a binary file, not text; give a UTF-8 text file")
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def _decompressed(file: BinaryIO, path: Path, key: str, limit: int) -> bytes:
    """A .bz2 file's content, decompressed a block at a time up to ``limit`` bytes: a small file can hold far
    more than memory (a GB of one character compresses to under a kB)."""
    try:
        data = bz2.BZ2File(file).read(limit + 1)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # reading failed, not decompressing
            raise
        raise ConfigError(key, f"{path} is not bz2-compressed ({e}); if it is plain text, drop the .bz2 from its "
                          "name") from None
    if len(data) > limit:
        raise ConfigError(key, f"{path} decompresses to more than {_size(limit)}, {too_large(limit)}")
    return data


def max_text_bytes() -> int:
    """The largest data file read: a quarter of the memory available now (the task holds the text, its lines
    and its token ids at once, several times the file's size)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:  # not Linux
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def too_large(limit: int) -> str:
    return (f"more than this machine can read into memory now (a quarter of its available memory, {_size(limit)}); "
            "give a part of it (head -c, or bzcat FILE | head -c 500M > part.txt), or free memory")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a huge field keeps the message readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_all(values: Sequence[object], limit: int = 8) -> str:
    """The first ``limit`` values, :func:`shown`, comma-separated; how many there are if that is not all."""
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(shown(v) for v in values[:limit]) + more


def text_lines(text: str) -> list[str]:
    """The lines of a file's text, split at \\n, \\r\\n or \\r (as ``open`` reads them), and nowhere else:
    ``str.splitlines`` also breaks at \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and U+2029, which a field may hold."""
    return NEWLINE.split(text) if "\r" in text else text.split("\n")  # the common case, 5x faster


def split_fields(line: str) -> list[str]:
    """The space- or tab-separated fields of a line; other whitespace (a no-break space) stays in its field."""
    return [field for field in line.replace("\t", " ").split(" ") if field]  # 2x faster than a regex split
