"""What every runtime command shares: the error guard, the store, and table formatting."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from registry.runtime.errors import RuntimeFailure
from registry.runtime.references import parse_reference
from registry.runtime.store import Store

if TYPE_CHECKING:
    from rich.console import Console

Command = Callable[[argparse.Namespace], int]


def guard(func: Command) -> Command:
    """Turn every failure a user can act on into one `Error: ...` line and its exit code.
    (Ctrl-C goes up to `main`, which leaves with 130 without waiting for threads.)"""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            return exc.exit_code
        except PermissionError as exc:
            print(f"Error: permission denied: {exc.filename or exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
            )
            return 1

    return wrapper


def open_store() -> Store:
    return Store()


def console() -> Console:
    from rich.console import Console  # loaded by the commands that print progress only

    return Console(stderr=True, highlight=False)


def ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def canonical(ref: str) -> str:
    """The canonical text of an image reference, or `ref` itself when it is an id."""
    try:
        return str(parse_reference(ref))
    except RuntimeFailure:
        return ref
