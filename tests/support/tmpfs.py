"""A small tmpfs: a real disk that fills up, for tests of what a full disk does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.ci import require


@contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    require(os.geteuid() == 0, "mounting a tmpfs (the full-disk tests) needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)
