"""The runtime's command line on its own (`python -m registry.runtime.cli`), the same
commands `registry` has; the commands themselves live in `registry.runtime.commands`."""

from __future__ import annotations

import argparse
import sys

from registry.cli import interrupted
from registry.runtime.commands import add_commands

__all__ = ["add_commands", "main"]


def main(argv: list[str] | None = None) -> int:
    try:
        parser = argparse.ArgumentParser(prog="registry")
        add_commands(parser.add_subparsers(dest="command_name", required=True))
        args = parser.parse_args(argv)
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        interrupted()


if __name__ == "__main__":
    sys.exit(main())
