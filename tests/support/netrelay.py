"""Ports of the host's loopback, reachable at the same address in another network namespace.

The private dockerd runs in a network namespace of its own, so that nothing it does to
networking (`--bridge=none` deletes any `docker0` it finds) reaches the host's. But the
registries under test listen on the host's 127.0.0.1, and `docker push 127.0.0.1:PORT/...`
is made by the daemon: `LoopbackRelay.expose(port)` listens on 127.0.0.1:PORT inside the
daemon's namespace and carries each connection to 127.0.0.1:PORT of the host's.

A socket belongs to the namespace of the thread that created it, for good: the listener is
made by a short-lived thread that first joins the daemon's namespace (`setns`, through
libc: os.setns is Python 3.12's); everything else runs in threads of the host's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def in_namespace(netns: str, make: Callable[[], _T]) -> _T:
    """`make()` run in a thread that has joined the network namespace `netns` (a path such
    as /proc/PID/ns/net); its result (a socket made there stays there)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome["value"] = make()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="netns-join")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class LoopbackRelay:
    """Relays for ports of the host's loopback into the namespace `netns`."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._listeners: dict[tuple[str, int], socket.socket] = {}
        self._lock = threading.Lock()
        self._closed = False

    def expose(self, port: int, address: str = "127.0.0.1", target: str | None = None) -> None:
        """Make `target:port` of the host's namespace (default: `address:port`) reachable at
        `address:port` in the other one (once; later calls for it do nothing)."""
        with self._lock:
            if (address, port) in self._listeners or self._closed:
                return
            listener = in_namespace(
                self.netns, lambda: socket.create_server((address, port), backlog=64)
            )
            self._listeners[(address, port)] = listener
        threading.Thread(
            target=self._accept,
            args=(listener, target or address, port),
            daemon=True,
            name=f"relay-{port}",
        ).start()

    def _accept(self, listener: socket.socket, target: str, port: int) -> None:
        while True:
            try:
                inside, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                outside = socket.create_connection((target, port), timeout=30)
            except OSError:
                inside.close()  # nothing listens on the host's side: refused there too
                continue
            outside.settimeout(None)
            _Pipe(inside, outside).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()


class _Pipe:
    """Bytes both ways between two connected sockets; each direction passes its end of
    stream on, and both close once both have ended."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self._sockets = (a, b)
        self._open = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        a, b = self._sockets
        for source, sink in ((a, b), (b, a)):
            threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(256 * 1024):
                sink.sendall(data)
        except OSError:  # a reset: end both ways, or the other one waits forever
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        else:  # an end of stream: pass it on; the other way goes on
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open -= 1
            done = self._open == 0
        if done:
            for sock in self._sockets:
                sock.close()
