"""Image commands: login, pull, images, rmi."""

from __future__ import annotations

import argparse
import getpass
import sys

from registry.runtime import credentials
from registry.runtime.client import RegistryClient
from registry.runtime.commands.common import (
    canonical,
    console,
    guard,
    human_size,
    open_store,
    print_table,
)
from registry.runtime.images import ImageIndex, collect_garbage
from registry.runtime.platform import parse_platform
from registry.runtime.pull import Puller, parse_reference
from registry.runtime.state import ContainerStore


@guard
def cmd_login(args: argparse.Namespace) -> int:
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = args.password if args.password is not None else getpass.getpass()
    creds = credentials.Credentials(username, password)
    with RegistryClient(args.server, creds) as client:
        client.ping()
    credentials.store(args.server, creds)
    print("Login Succeeded")
    return 0


@guard
def cmd_pull(args: argparse.Namespace) -> int:
    platform = parse_platform(args.platform) if args.platform else None
    record = Puller(open_store(), console()).pull(args.image, platform)
    ref = parse_reference(args.image)
    print(f"Digest: {record.manifest_digest}")
    print(str(ref))
    return 0


@guard
def cmd_images(args: argparse.Namespace) -> int:
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    for record in ImageIndex(open_store()).load().values():
        tags = [r for r in record.refs if "@" not in r] or [f"{record.repository}:<none>"]
        for tag_ref in tags:
            repo, _, tag = tag_ref.rpartition(":")
            short = record.id.split(":")[-1][:12]
            if args.quiet:
                print(short)
                continue
            rows.append([repo, tag, short, record.created[:19] or "-", human_size(record.size)])
    if not args.quiet:
        print_table(rows)
    return 0


@guard
def cmd_rmi(args: argparse.Namespace) -> int:
    store = open_store()
    images = ImageIndex(store)
    containers = ContainerStore(store)
    status = 0
    for ref in args.images:
        key = ref if images.find(ref) and not images.find(canonical(ref)) else canonical(ref)
        record = images.find(key)
        if record is None:
            print(f"Error: no such image: {ref}", file=sys.stderr)
            status = 1
            continue
        users = [c for c in containers.all() if c.image_id == record.id]
        last_tag = len([r for r in record.refs if "@" not in r]) <= 1 or key == record.id
        if users and last_tag and not args.force:
            print(
                f"Error: unable to remove {ref}: container {users[0].id[:12]} is using its "
                "image (use -f, or remove the container)",
                file=sys.stderr,
            )
            status = 1
            continue
        record, removed = images.untag(key)
        if key != record.id:
            print(f"Untagged: {key}")
        if removed:
            print(f"Deleted: {record.id}")
    collect_garbage(store)
    return status


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("login", help="log in to a registry")
    p.add_argument("server", help="registry host, e.g. 127.0.0.1:5000")
    p.add_argument("-u", "--username", help="user name")
    p.add_argument("-p", "--password", help="password or token (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_login)

    p = subparsers.add_parser("pull", help="pull an image from a registry")
    p.add_argument("image", help="[host:port/]name[:tag|@digest]")
    p.add_argument(
        "--platform", help="os/arch[/variant] to pick from an index (default: this host)"
    )
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("images", help="list pulled images")
    p.add_argument("-q", "--quiet", action="store_true", help="print only IDs")
    p.set_defaults(func=cmd_images)

    p = subparsers.add_parser("rmi", help="remove images")
    p.add_argument("images", nargs="+", help="image references or IDs")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove even what is in use or running"
    )
    p.set_defaults(func=cmd_rmi)
