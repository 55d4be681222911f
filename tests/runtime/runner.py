"""Running the runtime's CLI as users do: a child process, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "registry.runtime.cli"]
ROOT = os.geteuid() == 0


def cli(*args: str, timeout: float = 60, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          input=stdin, env={**os.environ, **(env or {})}, check=False,
                          cwd="/work/main" if os.path.isdir("/work/main") else None)
