"""A small blocking HTTP/1.1 client over one keep-alive socket, built to cost little CPU.

Bodies go out with `socket.sendfile` (zero-copy from a file) and come in with `recv_into` a
reused buffer, so the client is never what limits a blob push or pull. Only what the benchmark
needs: Content-Length and chunked bodies, absolute or relative Locations.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

RECV_BLOCK = 4 * 1024 * 1024
MAX_HEAD = 64 * 1024


class HTTPError(RuntimeError):
    """A response that broke the protocol, or an unexpected status."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes: int  # bytes received, also when the body was discarded

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True)
class FileBody:
    """`count` bytes of `file` from `offset`, sent without copying through Python."""

    file: BinaryIO
    offset: int
    count: int


def path_of(location: str) -> str:
    """The path and query of a Location, which may be absolute (Distribution) or not (ours)."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(path: str, **params: str) -> str:
    from urllib.parse import urlencode

    return path + ("&" if "?" in path else "?") + urlencode(params)


class Connection:
    def __init__(self, host: str, timeout: float = 120.0) -> None:
        address, _, port = host.rpartition(":")
        self.address = (address.strip("[]"), int(port))
        self.host = host
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        self._sink = bytearray(RECV_BLOCK)

    def _connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(self.address, timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            self._buffer.clear()
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | FileBody | None = None,
        discard_body: bool = False,
    ) -> Response:
        """Send one request and read its response; `discard_body` counts bytes, keeps none."""
        sock = self._connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        length = len(body) if isinstance(body, bytes) else body.count if body else 0
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if isinstance(body, bytes) and len(body) <= 64 * 1024:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                if isinstance(body, bytes):
                    sock.sendall(body)
                elif body is not None and body.count:
                    sent = sock.sendfile(body.file, body.offset, body.count)
                    if sent != body.count:
                        raise HTTPError(f"sent {sent} of {body.count} body bytes")
            return self._read_response(method, discard_body)
        except BaseException:
            self.close()
            raise

    def _recv_more(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(RECV_BLOCK)
        if not chunk:
            raise HTTPError("connection closed by the server")
        self._buffer += chunk

    def _read_line_block(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                return head
            if len(self._buffer) > MAX_HEAD:
                raise HTTPError("response head too large")
            self._recv_more()

    def _read_response(self, method: str, discard: bool) -> Response:
        head = self._read_line_block()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HTTPError(f"bad status line {status_line!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body, received = b"", 0
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
            received = len(body)
        elif "content-length" in headers:
            body, received = self._read_exact(int(headers["content-length"]), discard)
        else:
            raise HTTPError("response without a length (close-delimited) is not supported")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body, received)

    def _read_exact(self, size: int, discard: bool) -> tuple[bytes, int]:
        if not discard:
            while len(self._buffer) < size:
                self._recv_more()
            body = bytes(self._buffer[:size])
            del self._buffer[:size]
            return body, size
        taken = min(size, len(self._buffer))
        del self._buffer[:taken]
        remaining = size - taken
        assert self.sock is not None
        view = memoryview(self._sink)
        while remaining:
            got = self.sock.recv_into(view, min(remaining, len(self._sink)))
            if not got:
                raise HTTPError("connection closed in the middle of a body")
            remaining -= got
        return b"", size

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            while b"\r\n" not in self._buffer:
                self._recv_more()
            line, _, _rest = bytes(self._buffer).partition(b"\r\n")
            del self._buffer[: len(line) + 2]
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not self._buffer.startswith(b"\r\n"):
                    if b"\r\n" in self._buffer:  # a trailer line: skip it
                        del self._buffer[: self._buffer.index(b"\r\n") + 2]
                        continue
                    self._recv_more()
                del self._buffer[:2]
                return bytes(out)
            while len(self._buffer) < size + 2:
                self._recv_more()
            out += self._buffer[:size]
            del self._buffer[: size + 2]


def expect(response: Response, *statuses: int, what: str = "") -> Response:
    if response.status not in statuses:
        detail = response.body[:300].decode(errors="replace")
        raise HTTPError(f"{what or 'request'}: HTTP {response.status}, wanted {statuses}: {detail}")
    return response
