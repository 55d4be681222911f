"""Published ports: `-p` parsing, Docker's `127.0.0.1:8080->80/tcp` text, and the relay.

The relay is a userspace proxy owned by the container's supervisor: it listens on
host_ip:host_port in the host's namespace (bound before the container is forked, so a port
in use fails the start) and, for each connection, opens one to the container's address
from a thread that has joined the network's namespace (setns moves only that thread). No
firewall rule, no route, no interface of the host is involved; the listening sockets die
with the supervisor. A host IP defaults to 127.0.0.1: publishing on every interface must be
asked for (`-p 0.0.0.0:8080:80`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
import threading
from pathlib import Path

from registry.runtime import linux
from registry.runtime.errors import RuntimeFailure
from registry.runtime.state import PortBinding

DEFAULT_HOST_IP = "127.0.0.1"
MAX_CONNECTIONS = 512  # per published port, so a flood cannot take every descriptor
CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def _port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise RuntimeFailure(f"invalid {what} {text!r}: a number from 1 to 65535")
    return int(text)


def parse_publish(spec: str) -> PortBinding:
    """`[host_ip:][host_port]:container_port[/tcp]` or `container_port` (the kernel picks the
    host port); an IPv6 host address goes in brackets: `[::1]:8080:80`."""
    rest, _, protocol = spec.partition("/")
    if protocol not in ("", "tcp"):
        raise RuntimeFailure(f"invalid publish {spec!r}: only tcp ports can be published")
    host_ip = DEFAULT_HOST_IP
    if rest.startswith("["):
        address, bracket, rest = rest[1:].partition("]:")
        if not bracket:
            raise RuntimeFailure(f"invalid publish {spec!r}")
        host_ip = address
        parts = rest.split(":")
        if len(parts) != 2:
            raise RuntimeFailure(f"invalid publish {spec!r}")
    else:
        parts = rest.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
        elif len(parts) == 1:
            parts.insert(0, "")
        elif len(parts) != 2:
            raise RuntimeFailure(f"invalid publish {spec!r}")
    try:
        host_ip = str(ipaddress.ip_address(host_ip))
    except ValueError:
        raise RuntimeFailure(f"invalid publish {spec!r}: {host_ip!r} is not an IP address") \
            from None
    host_port = _port(parts[0], "host port") if parts[0] else 0
    return PortBinding(host_ip, host_port, _port(parts[1], "container port"), "tcp")


def parse_publishes(specs: list[str]) -> list[PortBinding]:
    out = [parse_publish(s) for s in specs]
    seen: set[tuple[str, int]] = set()
    for b in out:
        if b.host_port and (b.host_ip, b.host_port) in seen:
            raise RuntimeFailure(f"host port {b.host_ip}:{b.host_port} is published twice")
        seen.add((b.host_ip, b.host_port))
    return out


def format_binding(b: PortBinding) -> str:
    host = f"[{b.host_ip}]" if ":" in b.host_ip else b.host_ip
    return f"{host}:{b.host_port}->{b.container_port}/{b.protocol}"


def port_map(bindings: list[PortBinding]) -> dict[str, list[dict[str, str]]]:
    """Docker's `{"80/tcp": [{"HostIp": ..., "HostPort": ...}]}` of `inspect`."""
    out: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        out.setdefault(f"{b.container_port}/{b.protocol}", []).append(
            {"HostIp": b.host_ip, "HostPort": str(b.host_port or "")})
    return out


class PortRelay:
    """The published ports of one container: `bind` (before the fork), `start` (once the
    container runs), `stop` (when it exited). Not restartable."""

    def __init__(self, bindings: list[PortBinding]) -> None:
        self.bindings = bindings
        self._listeners: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def bind(self) -> None:
        """Listen on every host port; a port 0 becomes the one the kernel chose."""
        try:
            for b in self.bindings:
                family = socket.AF_INET6 if ":" in b.host_ip else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                self._listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((b.host_ip, b.host_port))
                except OSError as exc:
                    raise RuntimeFailure(
                        f"cannot publish {b.host_ip}:{b.host_port}: "
                        f"{'port is already allocated' if exc.errno == 98 else exc.strerror}"
                    ) from None
                sock.listen(128)
                sock.setblocking(False)
                b.host_port = sock.getsockname()[1]
        except BaseException:
            self.close_listeners()
            raise

    def close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners = []

    def start(self, namespace: Path, address: str) -> None:
        """Relay connections to `address` (the container's) from inside `namespace`."""
        if not self._listeners:
            return
        self._thread = threading.Thread(target=self._run, args=(namespace, address),
                                        name="port-relay", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self.close_listeners()

    def _run(self, namespace: Path, address: str) -> None:
        try:
            fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, linux.CLONE_NEWNET)  # this thread only
            finally:
                os.close(fd)
            asyncio.run(self._serve(address))
        except OSError:  # no namespace to relay into: refuse connections rather than hang
            self.close_listeners()
        finally:
            self._ready.set()

    async def _serve(self, address: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        servers = []
        for sock, b in zip(self._listeners, self.bindings, strict=True):
            handler = functools.partial(self._relay, address, b.container_port, [0])
            servers.append(await asyncio.start_server(handler, sock=sock, limit=CHUNK))
        self._ready.set()
        await self._stopping.wait()
        for server in servers:
            server.close()

    async def _relay(self, address: str, port: int, active: list[int],
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if active[0] >= MAX_CONNECTIONS:
            writer.close()
            return
        active[0] += 1
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(address, port),
                                              CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            active[0] -= 1
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer, writer),
                                 _pipe(up_reader, writer, up_writer))
        finally:
            active[0] -= 1
            writer.close()
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                other: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close `dst`; on an error, abort both directions."""
    try:
        while chunk := await src.read(CHUNK):
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        for w in (dst, other):
            w.transport.abort()
