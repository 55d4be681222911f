"""Networks: records, subnets, and the namespace with its bridge that each one owns.

Layout under the store root (every folder 0700, as the rest of the store)::

    networks/<name>/network.json   name, id, subnet, gateway, created
    networks/<name>/netns          the network's namespace (an nsfs bind mount, `netns`)

Design: one network namespace per network holds a Linux bridge `br0` with the gateway
address; each container gets a veth pair, one end on that bridge, the other as `eth0` in
the container's own namespace (`endpoints`). The network's namespace has no other
interface, so a container reaches the containers of its network and nothing else: not
the host, not another network, not the outside. The host's interfaces, routes and
firewall are never changed; a port is reachable from the host only when published
(`ports`: a relay in the supervisor).

A default subnet is the first 10.89.N.0/24 that overlaps no other network of the store
and none of the host's routes or addresses (so a container's 10.89.N.x never shadows a
machine the host can see); `--subnet` picks one explicitly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from registry.runtime import netns
from registry.runtime.errors import NetworkConflict, NetworkNotFound, RuntimeFailure
from registry.runtime.store import Store, private_dir, remove_tree

# Docker's rule for container names; the same characters, one of them enough, for network
# names and aliases: every one of them ends up in /etc/hosts files or folder names.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_NAME = 128
RESERVED = frozenset({"host", "none", "bridge", "default"})
DEFAULT_POOL = ipaddress.IPv4Network("10.89.0.0/16")
BRIDGE = "br0"


def check_name(name: str, what: str = "container name",
               pattern: re.Pattern[str] = CONTAINER_NAME) -> str:
    """`name` if it is safe for /etc/hosts and folder names (Docker's container-name rule)."""
    shortest = 2 if pattern is CONTAINER_NAME else 1
    if len(name) > MAX_NAME or not pattern.fullmatch(name):
        raise RuntimeFailure(
            f"invalid {what} {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least "
            f"{shortest} and at most {MAX_NAME} characters"
        )
    return name


def check_network_name(name: str) -> str:
    return check_name(name, "network name", NAME)


def is_named(network: str) -> bool:
    """True for a user-defined network, False for `host` and `none`."""
    return network not in ("host", "none")


@dataclass
class Network:
    name: str
    id: str
    subnet: str
    gateway: str
    created: float

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def addresses(self) -> Iterable[str]:
        """Containers' addresses, lowest first: every host address but the gateway's."""
        return (str(a) for a in ipaddress.IPv4Network(self.subnet).hosts()
                if str(a) != self.gateway)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A subnet given with --subnet: IPv4, its network address, room for a container."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise RuntimeFailure(f"invalid subnet {text!r}: {exc}") from None
    if subnet.prefixlen > 30 or subnet.prefixlen < 8:
        raise RuntimeFailure(f"invalid subnet {text}: the prefix must be /8 to /30")
    if (subnet.is_loopback or subnet.is_multicast or subnet.is_link_local
            or subnet.is_unspecified or subnet.is_reserved):
        raise RuntimeFailure(f"invalid subnet {text}: not a range for containers")
    return subnet


def host_networks() -> list[ipaddress.IPv4Network]:
    """What the host's IPv4 routes (every table) and addresses cover: only read."""
    out: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            for entry in json.loads(done.stdout or "[]"):
                prefixes = [entry.get("dst", "")]
                prefixes += [f"{a.get('local')}/{a.get('prefixlen')}"
                             for a in entry.get("addr_info", [])]
                for prefix in prefixes:
                    with contextlib.suppress(ValueError):
                        out.append(ipaddress.IPv4Network(prefix, strict=False))
    return [n for n in out if n.prefixlen > 0]  # a default route covers everything


def choose_subnet(taken: Iterable[ipaddress.IPv4Network],
                  host: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of 10.89.0.0/16 overlapping neither the store's networks nor the host's
    routes and addresses (loopback aside: it never leaves a namespace)."""
    avoid = [*taken, *(n for n in host if not n.is_loopback)]
    for candidate in DEFAULT_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(other) for other in avoid):
            return candidate
    raise RuntimeFailure("no free subnet left in 10.89.0.0/16: give one with --subnet")


class NetworkStore:
    """The networks of one store. Changes are made under the store's lock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.base = store.root / "networks"
        private_dir(self.base)

    def dir(self, name: str) -> Path:
        return self.base / check_network_name(name)

    def namespace(self, name: str) -> Path:
        return self.dir(name) / "netns"

    def load(self, name: str) -> Network:
        try:
            doc = json.loads((self.dir(name) / "network.json").read_text())
            return Network(**doc)
        except (OSError, ValueError, TypeError):
            raise NetworkNotFound(f"network {name} not found") from None

    def all(self) -> list[Network]:
        out = []
        for entry in sorted(self.base.iterdir()):
            with contextlib.suppress(RuntimeFailure):
                out.append(self.load(entry.name))
        return out

    def find(self, ref: str) -> Network:
        """By name, else by a unique id prefix."""
        everything = self.all()
        for network in everything:
            if ref in (network.name, network.id):
                return network
        hits = [n for n in everything if ref and n.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        raise NetworkNotFound(f"network {ref} not found")

    def create(self, name: str, subnet: str | None = None) -> Network:
        """Record a network and make its namespace and bridge."""
        if name in RESERVED:
            raise NetworkConflict(f"{name} is a predefined network name")
        folder = self.dir(name)
        with self.store.locked():
            if (folder / "network.json").exists():
                raise NetworkConflict(f"network with name {name} already exists")
            existing = self.all()
            if subnet is not None:
                chosen = parse_subnet(subnet)
                for other in existing:
                    if chosen.overlaps(ipaddress.IPv4Network(other.subnet)):
                        raise NetworkConflict(
                            f"subnet {chosen} overlaps network {other.name} ({other.subnet})")
            else:
                chosen = choose_subnet((ipaddress.IPv4Network(n.subnet) for n in existing),
                                       host_networks())
            if folder.exists():  # a create that crashed half-way
                self._destroy(folder)
            folder.mkdir(mode=0o700)
            network = Network(name=name, id=secrets.token_hex(32), subnet=str(chosen),
                              gateway=str(next(chosen.hosts())), created=time.time())
            try:
                self._make_namespace(network)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".network-")
                with os.fdopen(fd, "w") as out:
                    json.dump(asdict(network), out, indent=1)
                os.replace(tmp, folder / "network.json")
            except BaseException:
                self._destroy(folder)
                raise
        return network

    def ensure_namespace(self, network: Network) -> Path:
        """The network's namespace, made again if it is gone (after a reboot). Call with the
        store's lock held."""
        path = self.namespace(network.name)
        if not netns.is_namespace(path):
            netns.remove(path)
            self._make_namespace(network)
        return path

    def _make_namespace(self, network: Network) -> None:
        path = self.namespace(network.name)
        netns.persist(path)
        try:
            netns.ip_batch(path, [
                "link set lo up",
                f"link add {BRIDGE} type bridge",
                f"addr add {network.gateway}/{network.prefix_len} dev {BRIDGE}",
                f"link set {BRIDGE} up",
            ])
        except BaseException:
            netns.remove(path)
            raise

    def remove(self, name: str) -> None:
        """Forget a network and let its namespace go. The caller checks it is unused, with
        the store's lock held."""
        self._destroy(self.dir(name))

    def _destroy(self, folder: Path) -> None:
        netns.remove(folder / "netns")
        doomed = self.store.new_temp_dir("rm-network-")
        os.rename(folder, doomed / "n")
        remove_tree(doomed)
