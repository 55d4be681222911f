"""What the server tells its operators about each request: a request id, a log line, metrics.

`RequestObserver` is the app's outermost layer. For every HTTP request it

- takes the client's `X-Request-Id` when it is a plain token (1-128 letters, digits and
  `._:+=/@-`), else makes one (a per-process random prefix and a counter: unique, and cheap
  on the hot path), and answers it in `X-Request-Id`, with the API-version header clients
  probe for;
- counts the body bytes received and sent (zero-copy file sends included), the status and the
  time to the end of the answer, into the metrics (`registry.metrics`);
- with `server.access_log`, logs one line when the answer is complete: text, or with
  `server.log_format: json` one JSON object with the request id, method, route, repository,
  digest or tag, account, status, bytes and duration. Probes (`/healthz`, `/readyz`,
  `/metrics`) are counted but never logged.

Log records written while a request is handled carry its id (`request_id`), through a
context variable: the JSON lines of events say which request they belong to.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from itertools import count
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.http_limits import API_VERSION_HEADER
from registry.http_protocol import ZERO_COPY_SEND
from registry.metrics import Metrics

access_log = logging.getLogger("registry.access")

REQUEST_ID_KEY = "registry.request_id"
REQUEST_ID_HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:+=/@-]{1,128}")
PROBES = frozenset(("/healthz", "/readyz", "/metrics"))
# Where the access controller leaves who the caller is (registry/auth/controller.py).
AUTH_CONTEXT_KEY = "registry.auth.context"
ACTOR_KEY = "registry.auth.actor"

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "registry_request_id", default=None
)


class RequestIds:
    """Ids for requests that came without a usable one of their own."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(6)
        self.counter = count(1)

    def new(self) -> str:
        return f"{self.prefix}-{next(self.counter):x}"


def client_request_id(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The client's `X-Request-Id`, when it is a plain token of sane length."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return value if _CLIENT_ID.fullmatch(value) else None
    return None


def _is_upload(method: str, path: str) -> bool:
    return method in ("PATCH", "PUT", "POST") and "/blobs/uploads" in path


class RequestObserver:
    def __init__(
        self, app: ASGIApp, metrics: Metrics | None, log_requests: bool, json_lines: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.json_lines = json_lines
        self.ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = client_request_id(scope["headers"])
        request_id = given.decode() if given is not None else self.ids.new()
        id_header = (REQUEST_ID_HEADER, given or request_id.encode())
        scope[REQUEST_ID_KEY] = request_id
        token = current_request_id.set(request_id)
        method: str = scope["method"]
        status = 0
        received = 0
        sent = 0

        async def observed_receive() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), API_VERSION_HEADER, id_header]
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == ZERO_COPY_SEND and method != "HEAD":
                sent += message["count"]
            await send(message)

        uploading = self.metrics is not None and _is_upload(method, scope["path"])
        if uploading:
            self.metrics.uploads_in_progress.inc()  # type: ignore[union-attr]
        try:
            await self.app(scope, observed_receive, observed_send)
        finally:
            current_request_id.reset(token)
            if uploading:
                self.metrics.uploads_in_progress.dec()  # type: ignore[union-attr]
            seconds = time.perf_counter() - started
            route = _route(scope)
            if self.metrics is not None:
                self.metrics.observe(route, method, status, seconds, received, sent)
                _count_auth(self.metrics, route, scope, status)
            if self.log_requests and scope["path"] not in PROBES:
                self._log(scope, request_id, route, status, received, sent, seconds)

    def _log(
        self,
        scope: Scope,
        request_id: str,
        route: str,
        status: int,
        received: int,
        sent: int,
        seconds: float,
    ) -> None:
        params = scope.get("path_params") or {}
        reference = params.get("reference") or params.get("digest") or ""
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "route": route,
            "repository": params.get("name", ""),
            "reference": reference,
            "account": account(scope),
            "status": status,
            "bytes_in": received,
            "bytes_out": sent,
            "duration_ms": round(seconds * 1000, 2),
            "client": _client(scope),
        }
        if self.json_lines:
            access_log.info("request", extra={"fields": fields})
        else:
            query = scope.get("query_string", b"")
            target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            access_log.info(
                '%s %s "%s %s" %d in=%d out=%d %.1fms id=%s',
                fields["client"],
                fields["account"] or "-",
                scope["method"],
                target[:300],
                status,
                received,
                sent,
                seconds * 1000,
                request_id,
            )


def _route(scope: Scope) -> str:
    """The route's template (`/v2/{name:path}/blobs/{digest}`): bounded label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return scope["path"] if scope["path"] in PROBES else "unmatched"


def account(scope: Scope) -> str:
    """Who made the request, when auth named them ("" for anonymous or auth off)."""
    actor = scope.get(ACTOR_KEY)
    name = getattr(actor, "name", None)
    if isinstance(name, str):
        return name
    principal = getattr(scope.get(AUTH_CONTEXT_KEY), "principal", None)
    for attribute in ("subject", "name"):
        value = getattr(principal, attribute, None)
        if isinstance(value, str):
            return value
    return ""


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _count_auth(metrics: Metrics, route: str, scope: Scope, status: int) -> None:
    """Tokens issued and requests refused, read from the answers: a 401 counts as a denial
    only when the request carried credentials (the first request of every docker login
    carries none, to learn where to get a token)."""
    if status == 200 and route == "/auth/token":
        metrics.tokens_issued.inc()
    elif status == 403:
        metrics.denials.labels("forbidden").inc()
    elif status == 429:
        metrics.denials.labels("rate_limited").inc()
    elif status == 401 and any(name == b"authorization" for name, _ in scope["headers"]):
        metrics.denials.labels("bad_credentials").inc()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id when the line
    was written while a request was handled, and a request's fields for access lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            request_id = current_request_id.get()
            if request_id is not None:
                entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` of a server process (uvicorn applies it in each
    worker): every logger through one handler on stderr, in text or JSON."""
    formatter: dict[str, Any] = {"format": TEXT_FORMAT}
    if log_format == "json":
        formatter = {"()": "registry.observe.JsonFormatter"}
    level = level.upper()
    quiet = {"level": "WARNING"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"registry": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "registry",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level if level != "TRACE" else "DEBUG"},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "alembic": quiet,
            "httpx": quiet,
            "httpcore": quiet,
            "botocore": quiet,
            "boto3": quiet,
        },
    }
