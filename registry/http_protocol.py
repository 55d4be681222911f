"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol, plus the ASGI
zero-copy send extension (`http.response.zerocopysend`), so blob pulls go from the page
cache to the socket with `sendfile(2)` instead of through Python buffers.

uvicorn offers no extension for this itself. The subclass hooks in at two points only: the
scope announces the extension, and each request's cycle learns to send a file. Everything
else (parsing, keep-alive, flow control, disconnects) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

ZERO_COPY_SEND = "http.response.zerocopysend"


class ZeroCopyCycle(RequestResponseCycle):
    """One request and its response; sends a file's range with `loop.sendfile`."""

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
    """uvicorn's httptools protocol, with zero-copy file sends."""

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
