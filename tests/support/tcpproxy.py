"""A small TCP proxy on loopback, for tests: counts the bytes each way, and can be cut
(every connection dropped, new ones refused) and restored, to play a network failure, or
answer the next connections with an S3 throttling error (503 SlowDown) instead of passing
them on. Given several targets it is a round-robin load balancer: each new connection goes
to the next target that accepts it (one that refuses is skipped, as a load balancer's health
check would), and `connections` counts them per target."""

from __future__ import annotations

import contextlib
import socket
import threading

from support.server import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *more: tuple[str, int]) -> None:
        self.targets = [(target_host, target_port), *more]
        self.connections = [0] * len(self.targets)  # connections passed to each target
        self._next = 0
        self.port = free_port()
        self.upstream_bytes = 0  # client to target
        self.downstream_bytes = 0  # target to client
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._throttled = 0  # connections still to answer with 503 SlowDown
        self.throttled_answers = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def reset_counts(self) -> None:
        with self._lock:
            self.upstream_bytes = self.downstream_bytes = 0

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                throttle = self._throttled > 0
                self._throttled -= throttle
            if throttle:
                threading.Thread(target=self._slow_down, args=(client,), daemon=True).start()
                continue
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(source, sink, up), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        """A connection to the next target in turn that accepts one, or None."""
        for _ in self.targets:
            with self._lock:
                index = self._next
                self._next = (self._next + 1) % len(self.targets)
            try:
                upstream = socket.create_connection(self.targets[index], timeout=10)
            except OSError:
                continue
            with self._lock:
                self.connections[index] += 1
            return upstream
        return None

    def _pipe(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                sink.sendall(data)
                with self._lock:
                    if up:
                        self.upstream_bytes += len(data)
                    else:
                        self.downstream_bytes += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._sockets.discard(sock)

    def throttle(self, connections: int) -> None:
        """Drop the open connections; answer the next `connections` with 503 SlowDown."""
        with self._lock:
            self._throttled = connections
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _slow_down(self, client: socket.socket) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        answer = (
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        with client:
            client.settimeout(10)
            received = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in received:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                client.sendall(answer)
                with self._lock:
                    self.throttled_answers += 1
                client.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones (with a reset)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
