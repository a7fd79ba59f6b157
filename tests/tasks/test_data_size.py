"""Data files larger than memory allows: one line up front, and a .bz2 never decompressed whole to find out."""

from __future__ import annotations

import bz2
import tracemalloc

import pytest

from lstm_train.errors import ConfigError
from lstm_train.tasks import files
from lstm_train.tasks.files import read_text

MiB = 2**20


@pytest.fixture
def one_mib_limit(monkeypatch):
    monkeypatch.setattr(files, "max_text_bytes", lambda: MiB)


def test_a_bz2_that_decompresses_past_the_limit_is_refused_without_decompressing_it_whole(tmp_path, one_mib_limit):
    bomb = tmp_path / "bomb.txt.bz2"
    bomb.write_bytes(bz2.compress(b"a" * (32 * MiB)))  # 32 MiB of text in a few hundred bytes
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as error:
            read_text(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == (
        f"task.path: {bomb} decompresses to more than 1.0 MiB, more than this machine can read into memory now (a "
        "quarter of its available memory, 1.0 MiB); give a part of it (head -c, or bzcat FILE | head -c 500M > "
        "part.txt), or free memory")
    assert peak < 4 * MiB  # a block at a time, not the 32 MiB


def test_a_plain_file_past_the_limit_is_refused_before_it_is_read(tmp_path, one_mib_limit):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a\n" * (3 * MiB // 2))
    with pytest.raises(ConfigError, match=rf"^task.path: {big} is 3.0 MiB, more than this machine can read"):
        read_text(big)


def test_files_within_the_limit_are_read_whole(tmp_path, one_mib_limit):
    text = "line\n" * (MiB // 5 - 1)
    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(text.encode()))
    (tmp_path / "a.txt").write_text(text)
    assert read_text(tmp_path / "a.txt.bz2") == read_text(tmp_path / "a.txt") == text


def test_the_limit_is_a_share_of_this_machines_memory():
    assert 0 < files.max_text_bytes() < 2**50
