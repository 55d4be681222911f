"""Running the runtime's CLI as users do: a child process, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "registry.runtime.cli"]
# `-m` puts the working folder first on sys.path: run from this checkout, whichever it is.
PROJECT = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0


def cli(
    *args: str, timeout: float = 60, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=PROJECT,
    )
