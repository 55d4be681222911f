"""`create_app(config)`: the ASGI application, with every service built in its lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.allocator import give_back_freed
from registry.api.context import Services
from registry.api.routes import ROUTES
from registry.auth import AccessController, AllowAll
from registry.auth.routes import access_controller, auth_routes, signing_keys, with_audit_trail
from registry.config import Config, ConfigError
from registry.errors import DiskFull, NameUnknown, RegistryError, Unsupported
from registry.gc.admin_api import gc_routes
from registry.gc.collector import build_collector
from registry.gc.schedule import run_periodically
from registry.health import Probes, start_metrics_listener
from registry.lifecycle import Draining, run_dir_from_environment
from registry.metadata.db import Database
from registry.metadata.policystore import PolicyStore
from registry.metadata.store import MetadataStore
from registry.metrics import Metrics
from registry.observe import RequestObserver
from registry.policies.admin_api import policy_routes
from registry.policies.pulls import PullRecorder
from registry.policies.service import Policies
from registry.storage.blobstore import BlobStore
from registry.storage.driver import StorageDriver, StorageError, StorageFull, StorageUnavailable
from registry.storage.filesystem import FilesystemDriver

log = logging.getLogger("registry")


BODY_DONE = "registry.request_body_done"
MAX_DRAIN_BYTES = 16 * 1024 * 1024


class RequestBodyTracker:
    """Records in the scope when a request's body has been read to its end.

    An error answered before the body was read must still read it (or close the
    connection), or a keep-alive client's next request is read from the middle of it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"
        scope[BODY_DONE] = not has_body

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                scope[BODY_DONE] = True
            return message

        await self.app(scope, tracking_receive, send)


async def _drain_body(request: Request) -> bool:
    """Read and drop what is left of the request body; False when there was too much."""
    drained = 0
    while not request.scope.get(BODY_DONE, True):
        message = await request.receive()
        drained += len(message.get("body", b""))
        if drained > MAX_DRAIN_BYTES:
            return False
    return True


async def error_response(request: Request, exc: RegistryError) -> Response:
    body = b"" if request.method == "HEAD" else exc.body()
    headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-length"}
    headers["Content-Type"] = "application/json"
    if request.method == "HEAD":
        headers["Content-Length"] = "0"
    if not await _drain_body(request):
        headers["Connection"] = "close"
    return Response(body, exc.http_status, headers=headers)


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return await error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return await error_response(request, Unsupported(f"{request.method} is not supported here"))
    if exc.status_code == 404:
        return await error_response(
            request, NameUnknown("no such endpoint", detail={"path": request.url.path[:300]})
        )
    return Response(exc.detail, exc.status_code)


async def _disk_full(request: Request, exc: Exception) -> Response:
    """A full disk is the operator's to fix, not a bug: one line in the log, no traceback,
    and 503 so that clients retry later (the upload is where it was before this request)."""
    error = exc if isinstance(exc, DiskFull) else DiskFull(detail={"where": "storage"})
    cause = exc.__cause__ if isinstance(exc, DiskFull) and exc.__cause__ else exc
    reason = " ".join(str(getattr(cause, "orig", cause)).split())  # one line, whatever it says
    where = error.detail.get("where", "?") if isinstance(error.detail, dict) else "?"
    log.error("disk full (%s) on %s %s: %s", where, request.method, request.url.path, reason)
    return await error_response(request, error)


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage failure on %s %s: %s", request.method, request.url.path, exc)
    if isinstance(exc, StorageUnavailable):
        # Transient (storage unreachable or throttling): worth the client's retry.
        seconds = str(exc.retry_after_seconds)
        error = RegistryError(
            "storage is unavailable; nothing was stored, try again later",
            status=503,
            headers={"Retry-After": seconds},
        )
    else:
        error = RegistryError("storage failure; nothing was stored", status=503)
    return await error_response(request, error)


class UnexpectedErrors:
    """The last resort for a failure nothing else handles (a bug, a broken database): one
    traceback in the log and the spec's JSON error (UNKNOWN, 500), closing the connection
    when the body was not read. It sits inside Starlette's own error middleware, which would
    answer in plain text and re-raise for the server to log the same traceback again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected failure on %s %s", scope["method"], scope["path"])
            if started:
                return  # the server ends a response cut short by closing the connection
            error = RegistryError("internal server error")
            headers = {"Content-Type": "application/json"}
            if not scope.get(BODY_DONE, True):
                headers["Connection"] = "close"
            body = b"" if scope["method"] == "HEAD" else error.body()
            await Response(body, error.http_status, headers=headers)(scope, receive, send)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)


def build_driver(config: Config) -> StorageDriver:
    """The storage driver `storage.driver` names; an unknown name is refused, never guessed."""
    config.check()
    if config.storage.driver == "filesystem":
        return FilesystemDriver(config.storage_root, fsync=config.storage.fsync)
    if config.storage.driver == "s3":
        try:
            from registry.storage.s3 import S3Driver
        except ImportError as exc:  # boto3 is an extra
            raise ConfigError(
                f"storage.driver s3 needs boto3 (pip install '.[s3]'): {exc}"
            ) from None
        return S3Driver(config.storage.s3, memory_bytes=config.limits.upload_memory_bytes)
    raise ConfigError(f"unknown storage.driver {config.storage.driver!r}")


def build_services(
    config: Config, access: AccessController | None = None
) -> tuple[Services, Database]:
    db = Database(config.database_url, pool_size=config.database.pool_size)
    driver = build_driver(config)
    blobs = BlobStore(
        driver,
        buffer_bytes=config.limits.upload_buffer_bytes,
        memory_bytes=config.limits.upload_memory_bytes,
        on_idle=give_back_freed,
    )
    if access is None:  # token auth when auth.enabled, else none (loopback only)
        access = access_controller(config, db)
    policy_store = PolicyStore(db)
    services = Services(
        config=config,
        blobs=blobs,
        metadata=MetadataStore(db),
        access=access or AllowAll(),
        policies=Policies(policy_store, config.policies),
        pulls=PullRecorder(policy_store),
    )
    return services, db


def create_app(
    config: Config, access: AccessController | None = None, draining: Draining | None = None
) -> ASGIApp:
    metrics = Metrics()
    draining = draining or Draining(run_dir_from_environment())
    probes = Probes(draining, metrics, float(config.server.ready_timeout))
    metrics_addr = config.server.metrics_addr

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services, db = build_services(config, access)
        app.state.services = services
        # File reads, writes and fsyncs wait on the disk, not the CPU: the default pool of
        # cores + 4 threads would queue concurrent uploads behind each other's fsyncs.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="registry-io")
        )
        collector = build_collector(config, services.blobs, db)
        app.state.collector, app.state.gc_tasks = collector, set()
        tasks = [
            asyncio.create_task(
                run_periodically(collector, config.gc.enabled, config.gc.interval_seconds)
            ),
            asyncio.create_task(metrics.sample_pool(db)),
            asyncio.create_task(services.pulls.run(config.policies.pull_stats_flush_seconds)),
        ]
        keys = signing_keys(services.access)
        if keys is not None:
            await keys.ensure()  # read (made by `serve` before the workers started)
            tasks.append(asyncio.create_task(keys.keep_fresh()))
        side = None
        if metrics_addr:
            side = await start_metrics_listener(metrics_addr, probes, services)
        await probes.warm_up(services)
        # Everything built so far lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again under load.
        gc.freeze()
        try:
            yield
        finally:
            if side is not None:
                side.close()
            tasks += app.state.gc_tasks
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await db.dispose()

    app = Starlette(
        routes=[
            *probes.routes(with_metrics=not metrics_addr),
            *ROUTES,
            *auth_routes(config),
            *gc_routes(config),
            *policy_routes(config),
        ],
        lifespan=lifespan,
        exception_handlers={
            RegistryError: _registry_error,
            HTTPException: _http_error,
            DiskFull: _disk_full,
            StorageFull: _disk_full,
            StorageError: _storage_error,
            ClientDisconnect: _client_gone,
        },
        middleware=[Middleware(UnexpectedErrors)],
    )
    # `/v2/x/tags/list/` is not an endpoint: a 404 in the spec's format, not a redirect.
    app.router.redirect_slashes = False
    return RequestObserver(
        RequestBodyTracker(with_audit_trail(config, app)),
        metrics,
        log_requests=config.server.access_log,
        json_lines=config.server.log_format == "json",
    )
