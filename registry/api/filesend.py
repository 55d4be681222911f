"""A response that sends a range of an open file with the server's zero-copy extension."""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from registry.http_protocol import ZERO_COPY_SEND


def can_send_files(scope: Scope) -> bool:
    """Whether the server running the app takes `http.response.zerocopysend` messages."""
    return ZERO_COPY_SEND in scope.get("extensions", {})


class FileRangeResponse(Response):
    """`length` bytes of `file` from `offset`; the file is closed once sent (or not)."""

    def __init__(
        self,
        file: BinaryIO,
        offset: int,
        length: int,
        status_code: int,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.file = file
        self.offset = offset
        self.length = length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.file:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send(
                {
                    "type": ZERO_COPY_SEND,
                    "file": self.file,
                    "offset": self.offset,
                    "count": self.length,
                    "more_body": False,
                }
            )
