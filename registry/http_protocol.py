"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol, with two changes
for moving blobs, and the limits uvicorn's httptools path lacks.

- Sends: the ASGI zero-copy send extension (`http.response.zerocopysend`), so blob pulls go
  from the page cache to the socket with `sendfile(2)` instead of through Python buffers.
  uvicorn offers no such extension itself.
- Receives: request bodies are read from the socket in larger pieces and handed to the app
  as they came, without being copied into and out of one buffer on the way (a large piece
  is a message of its own; only runs of small ones are joined), and reading pauses only
  once a megabyte waits for the app instead of 64 KiB (uvicorn's limit has the loop pause
  and resume the socket after every read of an upload).

- Limits (`registry.http_limits`): bytes are counted before the parser sees them while a
  request's head is incomplete, so no head grows past `max_header_bytes` unseen; heads and
  bodies that stall end the connection; connections beyond `max_connections` get a 503.

The subclass hooks in where uvicorn makes a connection and a request cycle. Everything else
(parsing, keep-alive, flow control, disconnects) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from registry.errors import RegistryError, Unavailable, Unsupported
from registry.http_limits import API_VERSION_HEADER, HttpLimits, error_answer

__all__ = ["API_VERSION_HEADER", "ZERO_COPY_SEND", "RegistryHttpProtocol"]

ZERO_COPY_SEND = "http.response.zerocopysend"

READ_BYTES = 1024 * 1024  # per recv() of a body (asyncio's default is 256 KiB)
HEAD_READ_BYTES = 64 * 1024  # per recv() otherwise: heads, and bytes dropped after a refusal
BODY_HIGH_WATER = 1024 * 1024  # body bytes waiting for the app before reading pauses
JOIN_BELOW = 64 * 1024  # body pieces smaller than this are joined into one message
HEAD_SLICE = 16 * 1024  # while in a head, the parser is fed at most this much at a time
LINGER_SECONDS = 5.0  # after a refusal, what the client still sends is read and dropped
CROWDED_WAIT_SECONDS = 5.0  # a connection over the cap that sends nothing is closed after


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


class TimedFlowControl(FlowControl):
    """uvicorn's flow control, noting when reading last resumed: a body that waited while
    the app was behind (reading paused) has not stalled."""

    resumed_at = 0.0

    def resume_reading(self) -> None:
        if self.read_paused:
            self.resumed_at = time.monotonic()
            super().resume_reading()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request over a limit (`refusal` says
    which); httptools turns it into an HttpParserError."""


class RegistryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with zero-copy file sends, lighter body reads, and
    limits on what a client may make the server hold.

    Head accounting: while a head is incomplete, the parser gets at most what is left of
    `max_header_bytes`, in slices of at most a quarter of it (HEAD_SLICE at most), and
    `head_bytes` counts what it got. A head that began inside a slice is counted from the
    slice's start (less the body bytes in it): that overcounts only when pipelined requests
    share a slice, and by less than the limit, so it alone refuses no one. A head that
    began in one large read that also ended a body (pipelining after a body) is counted
    as the rest of that read: those bytes were in memory already, and nothing more is kept.
    """

    flow: TimedFlowControl
    _crowded_warned_at: ClassVar[float] = -3600.0  # the last "over the cap" warning

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or HttpLimits()
        self.head_slice = min(HEAD_SLICE, self.limits.max_header_bytes // 4)
        self.in_head = True  # in a head or between requests; False in a body
        self.head_started = False  # a request has begun and its head is incomplete
        self.head_bytes = 0  # of that head, fed to the parser so far (at most; 0 between)
        self.body_bytes = 0  # body bytes parsed on this connection, all requests
        self.last_read = 0.0  # when body bytes last came (time.monotonic)
        self.refusal: tuple[int, RegistryError] | None = None  # what a callback refused
        self.refused = False  # answered and closing: anything more is dropped unparsed
        self.crowded = False  # over `max_connections`: its first bytes get a 503
        self.sized_reads = False  # the transport's read size can be set (`max_size`)
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = TimedFlowControl(transport)
        # Reads are sized to what comes: megabytes of a body, kilobytes of a head. A read of
        # a megabyte for a head, dropped once refused, left holes in the heap that 50
        # connections refused at once grew by 10 MiB.
        self.sized_reads = hasattr(transport, "max_size")  # asyncio's socket transports
        if self.sized_reads:
            transport.max_size = HEAD_READ_BYTES  # type: ignore[attr-defined]
        # asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and the listening
        # socket uvicorn makes for several workers says 0: without this, every answer whose
        # body follows its headers in a second segment waited ~40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = self.limits
        if limits.max_connections and len(self.connections) > limits.max_connections:
            self.crowded = True
            self._warn_crowded()
            self.head_timer = self.loop.call_later(CROWDED_WAIT_SECONDS, self._head_timed_out)
        elif limits.header_timeout:
            self.head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head_timer, self.body_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = self.linger_timer = None
        super().connection_lost(exc)

    # Reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        if self.crowded:
            error = Unavailable(
                "too many connections to this server; try again shortly",
                detail={"max_connections": self.limits.max_connections},
            )
            self._refuse(503, error, ((b"retry-after", b"1"),))
            return
        try:
            if not self.in_head:  # a body: the hot path of uploads, one feed per read
                self._feed(data)
            elif len(data) <= min(self.head_slice, self.limits.max_header_bytes - self.head_bytes):
                self._feed(data)  # the usual whole request
            else:
                self._feed_in_slices(data)
        except httptools.HttpParserError:
            if self.refusal is not None:
                self._refuse(*self.refusal)
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _feed_in_slices(self, data: bytes) -> None:
        """A read that holds (the start of) a head and more: the head part in slices no
        longer than what is left of the limit, the rest in one piece once in a body."""
        view = memoryview(data)
        offset, size = 0, len(data)
        while offset < size and not self.refused:
            if self.in_head:
                step = min(self.head_slice, self.limits.max_header_bytes - self.head_bytes)
            else:
                step = size - offset
            self._feed(view[offset : offset + step])
            offset += step

    def _feed(self, piece: bytes | memoryview) -> None:
        """Parse `piece`, then account for where the parser is: in a body (note the time
        for the idle timer) or in a head (count it against the limit)."""
        body_before = self.body_bytes
        self.parser.feed_data(piece)
        if not self.in_head:
            self.last_read = time.monotonic()
            if self.body_timer is None and self.limits.body_idle_timeout:
                self.body_timer = self.loop.call_later(
                    self.limits.body_idle_timeout, self._body_check
                )
            return
        if not self.head_started:  # between requests: nothing of a head is held
            self._arm_head_timer_when_idle()
            return
        # All of the piece that was no body: exact for a head that began before it (the
        # count starts at 0 with every head), at most one piece too much for one that began
        # in it after other requests.
        self.head_bytes += len(piece) - (self.body_bytes - body_before)
        limit = self.limits.max_header_bytes
        if self.head_bytes >= limit:  # full, and still no end of the head
            error = Unsupported(
                f"request line and headers longer than {limit} bytes", detail={"limit": limit}
            )
            self._refuse(431, error)
        elif self.head_timer is None and self.limits.header_timeout:
            self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _arm_head_timer_when_idle(self) -> None:
        """Bytes that begin no request (blank lines) do not hold a connection open either:
        when no answer is under way and no keep-alive timer runs, the head timer does."""
        cycle = self.cycle
        if (
            self.head_timer is None
            and self.timeout_keep_alive_task is None
            and self.limits.header_timeout
            and (cycle is None or cycle.response_complete)
        ):
            self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    # Parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started = True
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
        extensions[ZERO_COPY_SEND] = {}

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            limit = self.limits.max_url_bytes
            error = Unsupported(f"request URL longer than {limit} bytes", detail={"limit": limit})
            self.refusal = (414, error)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            limit = self.limits.max_headers
            error = Unsupported(f"more than {limit} header fields", detail={"limit": limit})
            self.refusal = (431, error)
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = self.head_started = False
        self.head_bytes = 0
        if self.sized_reads:
            self.transport.max_size = READ_BYTES  # type: ignore[attr-defined]
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()
        cycle = self.cycle
        # The cycle uvicorn just made has not run yet (its task starts on the loop's next
        # turn), so it can still become the subclass.
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = ZeroCopyCycle
            assert isinstance(cycle, ZeroCopyCycle)
            cycle.pieces = []
            cycle.buffered = 0
        if cycle is not None and not self.timeout_keep_alive:
            # keep_alive_timeout 0: the connection ends after this answer, and the answer
            # says so (RFC 9112 9.6). Left to uvicorn's timer, it would close silently while
            # the client, never told, sends its next request into the closing socket.
            cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
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

    def on_message_complete(self) -> None:
        self.in_head = True
        if self.sized_reads:
            self.transport.max_size = HEAD_READ_BYTES  # type: ignore[attr-defined]
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()

    # Timers and refusals -------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        """No complete head within `header_timeout` (or a connection over the cap that sent
        nothing): the connection ends, after the answer under way if there is one."""
        self.head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # a pipelined head trickling in behind an answer
            self.refused = True
            return
        self.transport.close()

    def _body_check(self) -> None:
        """The body idle timer: ends the connection when no body byte came for
        `body_idle_timeout`, not counting time the client waited on us (reading paused
        while the app is behind, or no `100 Continue` sent yet)."""
        self.body_timer = None
        if self.in_head or self.refused or self.transport.is_closing():
            return
        now = time.monotonic()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self.last_read = now
        idle = now - max(self.last_read, self.flow.resumed_at)
        timeout = self.limits.body_idle_timeout
        if idle >= timeout:
            self.logger.info("%s: request body stalled for %.0f s; closing", self._peer(), idle)
            self.transport.close()  # the app sees a disconnect; an upload keeps what it had
            return
        self.body_timer = self.loop.call_later(timeout - idle, self._body_check)

    def _refuse(
        self, status: int, error: RegistryError, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Answer `error` and end the connection. What the client still sends is read and
        dropped for a few seconds (a close with unread bytes would reset the connection, and
        the client might never read the answer); nothing more is parsed or kept. If an
        answer to an earlier request is under way, that one ends the connection instead."""
        self.refused = True
        if self.sized_reads:
            self.transport.max_size = HEAD_READ_BYTES  # type: ignore[attr-defined]
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None
        self.logger.debug("%s: refused with %d: %s", self._peer(), status, error.message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            self.pipeline.clear()
        else:
            self.transport.write(error_answer(status, error, headers))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        self.flow.resume_reading()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are no HTTP request: in the registry's JSON error
        format and with its API-version header, like every other answer."""
        self._refuse(400, Unsupported(f"malformed HTTP request: {msg}"))

    def _warn_crowded(self) -> None:
        now = time.monotonic()
        if now - RegistryHttpProtocol._crowded_warned_at >= 60:
            RegistryHttpProtocol._crowded_warned_at = now
            self.logger.warning(
                "more than server.max_connections (%d) connections: answering 503 "
                "(logged at most once a minute)",
                self.limits.max_connections,
            )

    def _peer(self) -> str:
        if self.client is None:
            return "client"
        host, port = self.client
        return f"{host}:{port}"
