"""A TCP proxy in front of a registry that notes every request and can drop a connection.

Requests (client to registry) are parsed just enough to tell them apart on a keep-alive
connection: the request line, the headers, a `Content-Length` body. Answers are passed
back byte for byte. `cut_patch=n` closes the connection in the middle of the n-th PATCH
(from 1), once `cut_after` bytes of its body went through, as a failing network would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0
    cut: bool = False


@dataclass
class HttpProxy:
    upstream_port: int
    cut_patch: int | None = None
    cut_after: int = 1024
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and fragment in r.path)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._answers, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()

    def _answers(self, upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        self._drop(upstream)
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:])}
                seen = Seen(method, path, headers)
                with self._lock:
                    self.requests.append(seen)
                upstream.sendall(head + b"\r\n\r\n")
                left = int(headers.get("content-length", "0"))
                while left > 0:
                    if not buffer:
                        buffer = client.recv(65536)
                        if not buffer:
                            self._drop(upstream)
                            return
                    piece, buffer = buffer[:left], buffer[left:]
                    if self._should_cut(seen, len(piece)):
                        upstream.sendall(piece[: max(0, self.cut_after - seen.body_bytes)])
                        seen.cut = True
                        self._drop(client, upstream)
                        return
                    upstream.sendall(piece)
                    seen.body_bytes += len(piece)
                    left -= len(piece)
        except OSError:
            self._drop(client, upstream)

    def _should_cut(self, seen: Seen, incoming: int) -> bool:
        if self.cut_patch is None or seen.method != "PATCH":
            return False
        with self._lock:
            patches = [r for r in self.requests if r.method == "PATCH"]
            if any(r.cut for r in patches) or len(patches) < self.cut_patch:
                return False
            if patches[self.cut_patch - 1] is not seen:
                return False
        return seen.body_bytes + incoming > self.cut_after
