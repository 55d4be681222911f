"""Network commands: network create, ls, rm, inspect."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from registry.runtime import endpoints
from registry.runtime.commands.common import guard, open_store, print_table
from registry.runtime.commands.containers import _iso
from registry.runtime.errors import NetworkConflict, RuntimeFailure
from registry.runtime.networks import Network, NetworkStore
from registry.runtime.state import ContainerStore
from registry.runtime.store import Store
from registry.runtime.supervisor import check_privileges


@guard
def cmd_create(args: argparse.Namespace) -> int:
    check_privileges()
    store = open_store()
    endpoints.sweep(store, deep=True)
    network = NetworkStore(store).create(args.name, args.subnet)
    print(network.id)
    return 0


@guard
def cmd_ls(args: argparse.Namespace) -> int:
    store = open_store()
    endpoints.sweep(store, deep=True)
    everything = NetworkStore(store).all()
    if args.quiet:
        for n in everything:
            print(n.id[:12])
        return 0
    rows = [["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"]]
    rows += [[n.id[:12], n.name, "bridge", "local", n.subnet] for n in everything]
    print_table(rows)
    return 0


@guard
def cmd_rm(args: argparse.Namespace) -> int:
    check_privileges()
    store = open_store()
    endpoints.sweep(store, deep=True)
    networks = NetworkStore(store)
    status = 0
    for ref in args.networks:
        try:
            network = networks.find(ref)
            with store.locked():
                users = endpoints.in_use(store, network.name)
                if users:
                    raise NetworkConflict(
                        f"error while removing network: network {network.name} id "
                        f"{network.id} has active endpoints "
                        f"({', '.join(sorted(c.name for c in users))})"
                    )
                networks.remove(network.name)
            print(ref)
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            status = 1
    return status


def inspect_network(store: Store, network: Network) -> dict[str, Any]:
    on_network = endpoints.members(ContainerStore(store).all(), network.name)
    return {
        "Name": network.name,
        "Id": network.id,
        "Created": _iso(network.created),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {},
                 "Config": [{"Subnet": network.subnet, "Gateway": network.gateway}]},
        "Internal": True,  # no route leaves the network's namespace
        "Attachable": False,
        "Containers": {
            c.id: {"Name": c.name,
                   "IPv4Address": f"{c.endpoint.ip_address}/{c.endpoint.prefix_len}",
                   "Aliases": c.aliases}
            for c in on_network if c.endpoint is not None
        },
        "Options": {},
        "Labels": {},
    }


@guard
def cmd_inspect(args: argparse.Namespace) -> int:
    store = open_store()
    endpoints.sweep(store, deep=True)
    networks = NetworkStore(store)
    out: list[dict[str, Any]] = []
    status = 0
    for ref in args.networks:
        try:
            out.append(inspect_network(store, networks.find(ref)))
        except RuntimeFailure as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            status = 1
    print(json.dumps(out, indent=4))
    return status


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subparsers.add_parser(
        "network",
        help="manage networks",
        description="Networks that containers reach each other on by name (`run --network "
        "NAME`), each in a namespace of its own: the host's interfaces, routes and firewall "
        "are never changed, and only published ports (`run -p`) are reachable from the host.",
    )
    commands = group.add_subparsers(dest="network_command", required=True)

    p = commands.add_parser("create", help="create a network")
    p.add_argument("name", help="network name")
    p.add_argument("--subnet", help="IPv4 subnet, e.g. 10.90.0.0/24 (default: a free "
                   "10.89.N.0/24)")
    p.add_argument("-d", "--driver", default="bridge", choices=["bridge"], help="bridge only")
    p.set_defaults(func=cmd_create)

    p = commands.add_parser("ls", aliases=["list"], help="list networks")
    p.add_argument("-q", "--quiet", action="store_true", help="print only IDs")
    p.set_defaults(func=cmd_ls)

    p = commands.add_parser("rm", aliases=["remove"], help="remove networks no container uses")
    p.add_argument("networks", nargs="+", help="names or IDs")
    p.set_defaults(func=cmd_rm)

    p = commands.add_parser("inspect", help="show networks as JSON")
    p.add_argument("networks", nargs="+", help="names or IDs")
    p.set_defaults(func=cmd_inspect)
