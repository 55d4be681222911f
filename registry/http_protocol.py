"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol, with two changes
for moving blobs.

- Sends: the ASGI zero-copy send extension (`http.response.zerocopysend`), so blob pulls go
  from the page cache to the socket with `sendfile(2)` instead of through Python buffers.
  uvicorn offers no such extension itself.
- Receives: request bodies are read from the socket in larger pieces and handed to the app
  as they came, without being copied into and out of one buffer on the way (a large piece
  is a message of its own; only runs of small ones are joined), and reading pauses only
  once a megabyte waits for the app instead of 64 KiB (uvicorn's limit has the loop pause
  and resume the socket after every read of an upload).

The subclass hooks in where uvicorn makes a connection and a request cycle. Everything else
(parsing, keep-alive, flow control, disconnects) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from registry.errors import Unsupported

ZERO_COPY_SEND = "http.response.zerocopysend"
# On every answer (clients probe for it); the app adds it to its own answers.
API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")

READ_BYTES = 1024 * 1024  # per recv() from the socket (asyncio's default is 256 KiB)
BODY_HIGH_WATER = 1024 * 1024  # body bytes waiting for the app before reading pauses
JOIN_BELOW = 64 * 1024  # body pieces smaller than this are joined into one message


class ZeroCopyCycle(RequestResponseCycle):
    """One request and its response; the body as a list of received pieces, and sends of a
    file's range with `loop.sendfile`."""

    pieces: list[bytes]
    buffered: int

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if not self.pieces:
            self.flow.resume_reading()
            await self.message_event.wait()
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
        # The flags are read directly: the event only wakes this call.
        self.message_event.clear()
        body = self._next_body()
        if self.buffered <= BODY_HIGH_WATER:
            self.flow.resume_reading()
        more_body = self.more_body or bool(self.pieces)
        return {"type": "http.request", "body": body, "more_body": more_body}

    def _next_body(self) -> bytes:
        """The first piece waiting, if large; else the run of small pieces at the front,
        joined (fewer, larger messages for a body that trickles in)."""
        pieces = self.pieces
        count = 0
        while count < len(pieces) and len(pieces[count]) < JOIN_BELOW:
            count += 1
        if count <= 1:
            body = pieces.pop(0) if pieces else b""
        else:
            body = b"".join(pieces[:count])
            del pieces[:count]
        self.buffered -= len(body)
        return body

    async def send(self, message: Any) -> None:
        if message["type"] != ZERO_COPY_SEND:
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError("zero-copy send outside of a response body")
        if self.chunked_encoding:
            raise RuntimeError("zero-copy send needs a Content-Length")
        count: int = message["count"]
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if self.scope["method"] != "HEAD" and count:
            if self.transport.is_closing():
                self.disconnected = True
                return
            loop = asyncio.get_running_loop()
            try:
                file, offset = message["file"], message.get("offset")
                sent = await loop.sendfile(self.transport, file, offset, count)
            except OSError:  # the client went away mid-transfer
                self.disconnected = True
                self.transport.close()
                return
            if sent != count:  # the file was shorter than promised: end the connection
                self.disconnected = True
                self.transport.close()
                return
            self.expected_content_length -= sent
        if not message.get("more_body", False):
            if self.expected_content_length != 0 and self.scope["method"] != "HEAD":
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


class RegistryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with zero-copy file sends and lighter body reads."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if hasattr(transport, "max_size"):  # asyncio's socket transports
            transport.max_size = READ_BYTES
        # asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and the listening
        # socket uvicorn makes for several workers says 0: without this, every answer whose
        # body follows its headers in a second segment waited ~40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are no HTTP request: in the registry's JSON error
        format and with its API-version header, like every other answer."""
        body = Unsupported(f"malformed HTTP request: {msg}").body()
        name, value = API_VERSION_HEADER
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"%s: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (name, value, len(body))
        )
        self.transport.write(head + body)
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not ZeroCopyCycle:
            super().on_body(body)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.pieces.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
        extensions[ZERO_COPY_SEND] = {}

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle uvicorn just made has not run yet (its task starts on the loop's next
        # turn), so it can still become the subclass.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = ZeroCopyCycle
            assert isinstance(cycle, ZeroCopyCycle)
            cycle.pieces = []
            cycle.buffered = 0
