"""Containers on networks: addresses, veth pairs, /etc/hosts, and cleaning up after crashes.

The supervisor attaches a container before forking it (`Plumbing.setup`):

1. its published ports are bound on the host (`ports.PortRelay`), so a port in use fails
   the start before anything else is made;
2. under the store's lock: stale endpoints are cleared, the lowest free address of the
   subnet is taken and saved in the record (`Endpoint`), a namespace is made for the
   container, a veth pair joins the network's bridge to `eth0` in it (address, `lo` up, a
   default route via the bridge, which leads nowhere but the network), and the /etc/hosts
   of every container on the network is rewritten.

Pid 1 joins that namespace (setns) before anything else; the supervisor then lets go of
it, so the namespace and its veth pair go with the container's last process. At the exit
`teardown` stops the relay, deletes the veth if it is still there, clears the endpoint and
rewrites the others' /etc/hosts.

Membership: a container is on its network while its record has an endpoint and its pid 1
or its supervisor is alive (the supervisor holds the endpoint from before pid 1 exists to
after it exited). An endpoint with neither alive is stale (a supervisor killed with
SIGKILL, a reboot): `sweep`, which `run`, `rm`, `ps` and the `network` commands call,
clears it, rewrites the others' /etc/hosts and deletes veths nobody owns.

/etc/hosts: each member's is the `hosts` file of its folder, bind mounted by pid 1 and
rewritten in place (the bind mount holds the inode), naming every other member by name,
aliases and short id. Names and aliases are validated (`networks.check_name`): none can
add a line of its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from registry.runtime import netns
from registry.runtime.errors import RuntimeFailure
from registry.runtime.networks import BRIDGE, NAME, Network, NetworkStore, is_named
from registry.runtime.ports import PortRelay, format_binding, port_map
from registry.runtime.state import Container, ContainerStore, Endpoint, process_start
from registry.runtime.store import Store

LOCALHOST = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""
RESOLV = "# no DNS server: containers on a network find each other through /etc/hosts\n"


def attached(c: Container) -> bool:
    """True while `c` holds its place on its network (see the module's docstring)."""
    if c.endpoint is None:
        return False
    if c.running:
        return True
    return bool(c.supervisor_start) and process_start(c.supervisor_pid) == c.supervisor_start


def members(everything: list[Container], network: str) -> list[Container]:
    return [c for c in everything if c.network == network and attached(c)]


def _unique(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if n and n not in names[:i]]


def hosts_text(c: Container, others: list[Container]) -> str:
    """The /etc/hosts of `c`: localhost, itself, then the others by address."""
    if c.endpoint is None:
        return LOCALHOST
    own = [c.hostname] if NAME.fullmatch(c.hostname) else []
    lines = [f"{c.endpoint.ip_address}\t{' '.join(_unique([*own, c.name, *c.aliases]))}"]
    for other in sorted(others, key=lambda o: _address_key(o)):
        names = _unique([other.name, *other.aliases, other.id[:12]])
        lines.append(f"{other.endpoint.ip_address if other.endpoint else ''}\t{' '.join(names)}")
    return LOCALHOST + "\n".join(lines) + "\n"


def _address_key(c: Container) -> tuple[int, ...]:
    address = c.endpoint.ip_address if c.endpoint else "0.0.0.0"
    return tuple(int(part) for part in address.split("."))


def _write_in_place(path: Path, text: str) -> None:
    """Rewrite a file keeping its inode (a bind mount shows that inode), never through a
    symlink, and never empty on the way (written first, then cut to size)."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the container was removed meanwhile
    try:
        if os.pread(fd, len(data) + 1, 0) != data:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _refresh_hosts(containers: ContainerStore, everything: list[Container],
                   network: str) -> None:
    on_network = members(everything, network)
    for c in on_network:
        others = [o for o in on_network if o.id != c.id]
        _write_in_place(containers.dir(c.id) / "hosts", hosts_text(c, others))


def _delete_veths(namespace: Path, names: list[str]) -> None:
    if names and netns.is_namespace(namespace):
        netns.ip_batch(namespace, [f"link del {name}" for name in names], check=False)


def _sweep_locked(store: Store, networks: NetworkStore, deep: set[str] | None) -> None:
    """Clear stale endpoints, rewrite /etc/hosts files that differ from the members, and in
    the networks named by `deep` (every one when None) delete veths no member owns."""
    containers = ContainerStore(store)
    everything = containers.all()
    known = {n.name: n for n in networks.all()}
    for c in everything:
        if c.endpoint is not None and not attached(c):
            if c.network in known:
                _delete_veths(networks.namespace(c.network), [c.endpoint.veth])
            c.endpoint = None
            with contextlib.suppress(FileNotFoundError):
                containers.save(c)
    for name in known:
        _refresh_hosts(containers, everything, name)
        if deep is not None and name not in deep:
            continue
        namespace = networks.namespace(name)
        if not netns.is_namespace(namespace):
            continue
        owned = {m.endpoint.veth for m in members(everything, name) if m.endpoint}
        orphans = [link.get("ifname", "") for link in netns.links(namespace)]
        _delete_veths(namespace, [v for v in orphans if v.startswith("veth") and v not in owned])


def sweep(store: Store, deep: bool = False) -> None:
    """Clean what crashed supervisors left (see the module's docstring). Needs root; a
    store without networks costs one directory listing."""
    if os.geteuid() != 0:
        return
    networks = NetworkStore(store)
    if not any(networks.base.iterdir()):
        return
    with store.locked():
        _sweep_locked(store, networks, None if deep else set())


def in_use(store: Store, network: str) -> list[Container]:
    """The containers on `network` now (call with the store's lock held)."""
    return members(ContainerStore(store).all(), network)


class Plumbing:
    """One container's network plumbing, owned by its supervisor: `setup` before the fork,
    `started` after the fork, `teardown` at the exit."""

    def __init__(self, store: Store, container: Container) -> None:
        self.store = store
        self.container = container
        self.netns_fd = -1  # the container's namespace, for pid 1 to join
        self.relay = PortRelay(container.ports)
        self._namespace: Path | None = None

    def setup(self) -> None:
        c = self.container
        if not is_named(c.network):
            return
        try:
            self.relay.bind()
            self._attach()
        except BaseException:
            self.teardown()
            raise

    def _attach(self) -> None:
        c = self.container
        networks = NetworkStore(self.store)
        containers = ContainerStore(self.store)
        with self.store.locked():
            network = networks.load(c.network)  # under the lock: `network rm` may be running
            namespace = networks.ensure_namespace(network)
            _sweep_locked(self.store, networks, {network.name})
            c.endpoint = self._endpoint(network, containers.all())
            c.supervisor_pid, c.supervisor_start = os.getpid(), process_start(os.getpid())
            containers.save(c)
            self._namespace = namespace
            self.netns_fd = netns.new_namespace()
            ip, veth = c.endpoint.ip_address, c.endpoint.veth
            netns.ip_batch(namespace, [
                f"link add {veth} type veth peer name eth0 netns /proc/self/fd/{self.netns_fd}",
                f"link set {veth} master {BRIDGE}",
                f"link set {veth} up",
            ], extra_fds=(self.netns_fd,))
            netns.ip_batch(self.netns_fd, [
                "link set lo up",
                f"addr add {ip}/{network.prefix_len} dev eth0",
                "link set eth0 up",
                f"route add default via {network.gateway}",
            ])
            folder = containers.dir(c.id)
            (folder / "resolv.conf").write_text(RESOLV)
            _refresh_hosts(containers, containers.all(), network.name)

    def _endpoint(self, network: Network, everything: list[Container]) -> Endpoint:
        c = self.container
        used = {m.endpoint.ip_address for m in members(everything, network.name) if m.endpoint}
        address = next((a for a in network.addresses() if a not in used), None)
        if address is None:
            raise RuntimeFailure(f"no free address left on network {network.name} "
                                 f"({network.subnet})")
        return Endpoint(network_id=network.id, ip_address=address,
                        prefix_len=network.prefix_len, gateway=network.gateway,
                        veth=f"veth{c.id[:10]}")

    def started(self) -> None:
        """After the fork: let go of the container's namespace (pid 1 has it), relay ports."""
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        endpoint = self.container.endpoint
        if self._namespace is not None and endpoint is not None:
            self.relay.start(self._namespace, endpoint.ip_address)

    def teardown(self) -> None:
        """Stop the relay, remove the veth, give the address back, update the others."""
        self.relay.stop()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        c = self.container
        if c.endpoint is None:
            return
        networks = NetworkStore(self.store)
        containers = ContainerStore(self.store)
        with self.store.locked():
            with contextlib.suppress(RuntimeFailure):
                _delete_veths(networks.namespace(c.network), [c.endpoint.veth])
            c.endpoint = None
            with contextlib.suppress(FileNotFoundError):
                containers.save(c)
            _refresh_hosts(containers, containers.all(), c.network)


def network_settings(c: Container) -> dict[str, Any]:
    """Docker's `NetworkSettings` of `inspect`: the network, the address while attached,
    the published ports while running."""
    e = c.endpoint if c.endpoint is not None and c.running else None
    entry: dict[str, Any] = {
        "Aliases": c.aliases or None,
        "NetworkID": e.network_id if e else "",
        "Gateway": e.gateway if e else "",
        "IPAddress": e.ip_address if e else "",
        "IPPrefixLen": e.prefix_len if e else 0,
    }
    return {"Networks": {c.network: entry}, "Ports": port_map(c.ports) if e else {}}


def published(c: Container) -> list[str]:
    """The `PORTS` of `ps`, Docker's way: `127.0.0.1:8080->80/tcp`, while relayed (the
    container runs, and so does the supervisor that relays)."""
    relaying = bool(c.supervisor_start) and process_start(c.supervisor_pid) == c.supervisor_start
    if not (c.running and c.endpoint is not None and relaying):
        return []
    return [format_binding(b) for b in c.ports]
