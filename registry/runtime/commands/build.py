"""`build`: a Dockerfile and its context into a local image (`registry.runtime.build`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from registry.runtime.build import Builder, BuildOptions, default_output, force_overlay
from registry.runtime.commands.common import guard, open_store
from registry.runtime.dockerfile import parse
from registry.runtime.errors import BuildFailure, NotPrivileged
from registry.runtime.platform import parse_platform
from registry.runtime.references import parse_reference

if TYPE_CHECKING:
    from rich.console import Console

MAX_DOCKERFILE = 4 << 20


def _build_args(values: list[str]) -> dict[str, str]:
    """`--build-arg K=V`; `--build-arg K` takes K from the environment, when it is set."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, given = value.partition("=")
        if not name:
            raise BuildFailure(f"invalid --build-arg {value!r}: expected NAME=value")
        if sep:
            out[name] = given
        elif name in os.environ:
            out[name] = os.environ[name]
    return out


def _dockerfile_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCKERFILE + 1)
    except OSError as exc:
        raise BuildFailure(f"cannot read the Dockerfile {path}: {exc.strerror}") from None
    if len(data) > MAX_DOCKERFILE:
        raise BuildFailure(f"the Dockerfile {path} is over 4 MiB")
    return data.decode("utf-8", "replace")


def _stdout_console() -> Console:
    """Everything but the error goes to stdout, as docker build prints it (pulls too)."""
    from rich.console import Console

    return Console(highlight=False)


@guard
def cmd_build(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotPrivileged("building needs root (overlay mounts and containers for RUN)")
    context = Path(args.context)
    if not context.is_dir():
        raise BuildFailure(f"the build context {args.context} is not a folder")
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    for tag in args.tag:
        ref = parse_reference(tag)
        if ref.digest:
            raise BuildFailure(f"invalid tag {tag}: a tag cannot name a digest")
    parsed = parse(_dockerfile_text(dockerfile), args.file or "Dockerfile")
    force_overlay()
    options = BuildOptions(
        context=context.resolve(), dockerfile=parsed, tags=args.tag,
        build_args=_build_args(args.build_arg), target=args.target, no_cache=args.no_cache,
        platform=parse_platform(args.platform) if args.platform else None,
    )
    Builder(open_store(), options, default_output(), _stdout_console).build()
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "build", help="build an image from a Dockerfile",
        description="Build an image from CONTEXT (a folder) and its Dockerfile, as Docker's "
        "classic builder does; the image goes to the local store, ready for run and push.",
    )
    p.add_argument("-t", "--tag", action="append", default=[],
                   help="name the image [host:port/]name[:tag] (repeatable)")
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[],
                   help="NAME=value for an ARG (NAME alone: from the environment)")
    p.add_argument("--target", help="build up to this stage (name or index)")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--platform", help="os/arch[/variant] of FROM images (default: this host)")
    p.add_argument("context", help="the build context folder")
    p.set_defaults(func=cmd_build)
