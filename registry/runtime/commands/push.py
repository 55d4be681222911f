"""`push` and `tag`: naming a local image, and sending it to a registry (`runtime.push`)."""

from __future__ import annotations

import argparse

from registry.runtime.commands.common import canonical, console, guard, open_store
from registry.runtime.errors import InvalidReference
from registry.runtime.images import ImageIndex
from registry.runtime.references import parse_reference


@guard
def cmd_push(args: argparse.Namespace) -> int:
    from registry.runtime.push import Pusher

    Pusher(open_store(), console()).push(args.image)
    return 0


@guard
def cmd_tag(args: argparse.Namespace) -> int:
    images = ImageIndex(open_store())
    record = images.find(canonical(args.source)) or images.get(args.source)
    target = parse_reference(args.target)
    if target.digest:
        raise InvalidReference(f"invalid tag {args.target}: a tag cannot name a digest")
    images.add(record, [str(target)])
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("push", help="push an image to a registry")
    p.add_argument("image", help="[host:port/]name[:tag] of a local image")
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser("tag", help="give a local image another name")
    p.add_argument("source", help="a local image's reference or id")
    p.add_argument("target", help="[host:port/]name[:tag]")
    p.set_defaults(func=cmd_tag)
