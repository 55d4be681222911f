"""What one client may make a worker hold, and the answers to those who ask for more.

uvicorn's httptools protocol, which ours extends, sets no limit on a request's head: a client
could send megabytes of headers (or one header line that never ends) before any
authentication, and the parser kept every byte. These are the limits production servers
have (nginx, Go's net/http, hence Distribution), enforced in `registry.http_protocol`:

- the request line and headers together (`max_header_bytes`, 431), the URL (414), the number
  of header fields (431): the answer goes out, the connection closes, and no byte of the
  refused request is kept past the limit;
- time: a head must arrive in full within `header_timeout`, a body may not pause longer than
  `body_idle_timeout`, an idle keep-alive connection closes after `keep_alive_timeout`
  (uvicorn's own timer);
- connections: beyond `max_connections` in one worker, a new connection is answered 503;
  and the process may open enough files for them (`raise_open_file_limit`).
"""

from __future__ import annotations

import http
import resource
from dataclasses import dataclass

from registry.config import ConfigError, ServerConfig
from registry.errors import RegistryError

# On every answer (clients probe for it); the app adds it to its own answers.
API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")

MIN_HEADER_BYTES = 1024  # below this, ordinary requests with a token would not fit
OTHER_FILES = 256  # open besides connections: the database, blob files, the loop's own


@dataclass(frozen=True)
class HttpLimits:
    """The protocol's limits (0 for a timeout or `max_connections`: none)."""

    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 8 * 1024
    max_headers: int = 100
    header_timeout: float = 30.0
    body_idle_timeout: float = 60.0
    max_connections: int = 1024

    @classmethod
    def from_config(cls, server: ServerConfig) -> HttpLimits:
        """The limits of `server.*`; ConfigError for values that cannot work."""
        checks = {
            "server.max_header_bytes": server.max_header_bytes >= MIN_HEADER_BYTES,
            "server.max_url_bytes": server.max_url_bytes >= 16,
            "server.max_headers": server.max_headers >= 1,
            "server.header_timeout": server.header_timeout >= 0,
            "server.body_idle_timeout": server.body_idle_timeout >= 0,
            "server.keep_alive_timeout": server.keep_alive_timeout >= 0,
            "server.max_connections": server.max_connections >= 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)}: out of range (max_header_bytes at least {MIN_HEADER_BYTES}, "
                "max_url_bytes at least 16, max_headers at least 1, the others 0 or more)"
            )
        return cls(
            max_header_bytes=server.max_header_bytes,
            max_url_bytes=server.max_url_bytes,
            max_headers=server.max_headers,
            header_timeout=float(server.header_timeout),
            body_idle_timeout=float(server.body_idle_timeout),
            max_connections=server.max_connections,
        )


def error_answer(
    status: int, error: RegistryError, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """A whole answer, written by the protocol itself (there is no request for the app to
    answer): `error` in the spec's JSON format, with the API-version header, and
    `connection: close`."""
    body = error.body()
    lines = [
        b"HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase.encode()),
        b"content-type: application/json",
        b"%s: %s" % API_VERSION_HEADER,
        b"content-length: %d" % len(body),
        b"connection: close",
        *(b"%s: %s" % header for header in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime does
    at start, and return the soft limit now (inherited by worker processes).

    Services often start with a soft limit of 1,024: then accept() fails for want of file
    descriptors (asyncio stops accepting for a second at a time, for every client alike)
    before `max_connections` is reached, and the cap would protect no one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # e.g. above the kernel's fs.nr_open
            pass
    return soft
