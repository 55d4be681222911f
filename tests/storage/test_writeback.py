"""Write-behind of appended blocks (`registry.storage.writeback`), on a real file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from registry.storage.writeback import WriteBehind


def test_write_behind_waits_for_lagging_ranges(tmp_path: Path) -> None:
    # A lag smaller than a block makes every block wait for the previous ones to settle.
    block = os.urandom(256 * 1024)
    path = tmp_path / "blob"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        behind = WriteBehind(fd, 0, lag=64 * 1024)
        for i in range(8):
            os.write(fd, block)
            behind.wrote(i * len(block), len(block))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == block * 8


def test_write_behind_reports_a_bad_descriptor() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    behind = WriteBehind(fd, 0)
    with pytest.raises(OSError):
        behind.wrote(0, 4096)


def test_write_behind_takes_blocks_out_of_order(tmp_path: Path) -> None:
    blocks = [os.urandom(128 * 1024) for _ in range(6)]
    path = tmp_path / "blob"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        behind = WriteBehind(fd, 0, lag=256 * 1024)
        for i in (1, 0, 3, 2, 5, 4):
            os.pwrite(fd, blocks[i], i * len(blocks[i]))
            behind.wrote(i * len(blocks[i]), len(blocks[i]))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(blocks)
