"""The runtime's subcommands, one module per group: `images` (login, pull, images, rmi),
`run`, `containers` (ps, logs, stop, rm, inspect), `build`, `push` (push, tag); `common`
holds what they share.

Each command takes the parsed args and returns the exit code. Every `RuntimeFailure`
becomes one line on stderr (`Error: ...`) and its exit code; `run` returns the
container's exit code.
"""

from __future__ import annotations

import argparse

from registry.runtime.commands import build, containers, images, push, run


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add every runtime command to the `registry` CLI's subparsers."""
    for group in (images, run, containers, build, push):
        group.add_parsers(subparsers)
