"""The runtime's subcommands, one module per group: `images` (login, pull, images, rmi),
`run`, `containers` (ps, logs, stop, rm, inspect), `network` (network create, ls, rm,
inspect), `build`, `push` (push, tag); `common` holds what they share.

Each command takes the parsed args and returns the exit code. Every `RuntimeFailure`
becomes one line on stderr (`Error: ...`) and its exit code; `run` returns the
container's exit code.
"""

from __future__ import annotations

import argparse
import importlib

GROUPS = ("images", "run", "containers", "network", "build", "push")
# Commands parsed by their own module alone (`registry.cli`): a fully cached build should not
# wait for every other command's modules (the HTTP client, the sandbox) to load.
LIGHT_COMMANDS = {"build": "build"}


def add_commands(subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
                 groups: tuple[str, ...] = GROUPS) -> None:
    """Add the runtime's commands (every group, or the `groups` named) to the `registry`
    CLI's subparsers; the modules load here, not when this package is imported."""
    for name in groups:
        importlib.import_module(f"registry.runtime.commands.{name}").add_parsers(subparsers)
