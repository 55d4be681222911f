"""`--profile DIR`: py-spy records our server during each measured run; a summary ranks frames.

Modes (`--profile-mode`): `cpu` samples threads the OS sees running; `gil` only the thread
holding the GIL (what bounds one Python process); `wall` every thread, waiting ones too.

py-spy writes collapsed stacks (`--format raw`: `frame;frame;...;leaf COUNT`, each frame
`function (file:line)`), and `summarize` turns them into the top frames by own samples
(where the CPU went) and by inclusive samples (what called it).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    from bench.servers import REPO_ROOT

    local = REPO_ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Recording:
    """py-spy attached to one process tree until `stop()`."""

    def __init__(self, pid: int, out: Path, mode: str = "cpu", rate: int = 200) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self.out = out
        command = [
            binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
            "--output", str(out), "--subprocesses", "--nonblocking",
        ]  # fmt: skip
        if mode == "wall":
            command.append("--idle")  # waiting threads too: where the wall time goes
        elif mode == "gil":
            command.append("--gil")  # only the thread holding the GIL: Python's one core
        elif mode != "cpu":
            raise ValueError(f"unknown profile mode {mode!r}")
        self.log = out.with_suffix(".log").open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # attach before the measured part starts

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        with contextlib.suppress(OSError):
            summary = summarize(self.out.read_text())
            self.out.with_suffix(".top.txt").write_text(summary)


def _frames(stack: str) -> list[str]:
    # With --subprocesses the first element names the process: `process PID:"cmdline"`.
    return [
        f
        for f in stack.split(";")
        if " (" in f and f.endswith(")") and not f.startswith(("process ", "thread "))
    ]


def _function(frame: str) -> str:
    """`name (file:line)` without the line: a function's samples over all its lines."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if name else frame


def summarize(collapsed: str, top: int = 25) -> str:
    own_lines: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        own_lines[frames[-1]] += count
        own[_function(frames[-1])] += count
        for function in {_function(f) for f in frames}:
            inclusive[function] += count
    if not total:
        return "no samples\n"

    def ranked(counter: Counter[str]) -> list[str]:
        return [f"  {n / total * 100:5.1f}%  {frame}" for frame, n in counter.most_common(top)]

    lines = [f"{total} samples", ""]
    lines += ["by own samples, per function (where the CPU went):", *ranked(own), ""]
    lines += ["by own samples, per line:", *ranked(own_lines), ""]
    lines += ["by inclusive samples, per function:", *ranked(inclusive)]
    return "\n".join(lines) + "\n"
