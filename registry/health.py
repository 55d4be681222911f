"""Probes for load balancers and orchestrators, and the metrics page. No auth, no log line.

    GET /healthz    200 while the process serves requests at all (liveness)
    GET /readyz     200 while the metadata database and the storage both answer, each
                    within `server.ready_timeout` seconds; 503 otherwise, and from the moment
                    the server begins to shut down (registry/lifecycle.py), so a load
                    balancer takes the replica out before it stops
    GET /metrics    Prometheus text format, unless `server.metrics_addr` puts it elsewhere

Answers are small JSON objects that say which check failed; they carry nothing secret.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from registry.api.context import Services
from registry.config import Config
from registry.lifecycle import Draining
from registry.metrics import Metrics, content_type
from registry.oci.digest import Digest

log = logging.getLogger("registry")

# A key every driver can stat, present or not: the empty blob's.
_PROBE_DIGEST = Digest.parse(
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)
_SELECT_ONE = text("SELECT 1")
_WARN_EVERY = 60.0


class Probes:
    """The handlers, with what they look at."""

    def __init__(self, draining: Draining, metrics: Metrics | None, timeout: float) -> None:
        self.draining = draining
        self.metrics = metrics
        self.timeout = timeout
        self._warned_at = -_WARN_EVERY

    def routes(self, with_metrics: bool) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
        ]
        if with_metrics and self.metrics is not None:
            routes.append(Route("/metrics", self.metrics_page, methods=["GET"]))
        return routes

    async def warm_up(self, services: Services) -> None:
        """Touch the database and storage once before serving: the first request would
        otherwise pay for opening connections and, on S3, for loading botocore's models (a
        second of CPU on this project's VM, at the first PATCH of a push). Failures are for
        /readyz to report, not for the start."""
        for check in (self._database, self._storage):
            try:
                await asyncio.wait_for(check(services), self.timeout)
            except Exception as exc:  # any failure: not warmed, still served
                log.debug("warm-up: %s", exc)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if self.draining.is_set():
            return JSONResponse({"status": "shutting down"}, status_code=503)
        services: Services = request.app.state.services
        failures = {}
        for name, check in (("database", self._database), ("storage", self._storage)):
            try:
                async with asyncio.timeout(self.timeout):
                    await check(services)
            except TimeoutError:
                failures[name] = f"no answer within {self.timeout:g} s"
            except Exception as exc:  # whatever it is, the replica cannot serve
                failures[name] = type(exc).__name__
                self._warn(name, exc)
        if failures:
            return JSONResponse({"status": "not ready", "failed": failures}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_page(self, request: Request) -> Response:
        assert self.metrics is not None
        await refresh(self.metrics, request.app.state.services)
        return Response(self.metrics.exposition(), media_type=content_type())

    @staticmethod
    async def _database(services: Services) -> None:
        async with services.metadata.db.read() as conn:
            await conn.execute(_SELECT_ONE)

    @staticmethod
    async def _storage(services: Services) -> None:
        await services.blobs.stat(_PROBE_DIGEST)

    def _warn(self, name: str, exc: Exception) -> None:
        """One line a minute at most: a probe every few seconds must not flood the log."""
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning("not ready: the %s fails: %s", name, " ".join(str(exc).split())[:300])


async def refresh(metrics: Metrics, services: Services) -> None:
    """The database's totals for a scrape; a database that fails leaves the last values."""
    try:
        await metrics.refresh_stored(services)
    except Exception as exc:
        log.warning("metrics: could not read the database's totals: %s", exc)


async def start_metrics_listener(addr: str, probes: Probes, services: Services) -> asyncio.Server:
    """`/metrics` alone on `server.metrics_addr` (HOST:PORT), plain HTTP through our own
    protocol and its limits. Every worker process listens there (SO_REUSEPORT), so a scrape
    lands on any one of them, which adds up all of their files."""
    import functools

    import uvicorn
    from starlette.applications import Starlette
    from uvicorn.server import ServerState

    from registry.http_limits import HttpLimits
    from registry.http_protocol import RegistryHttpProtocol

    host, _, port = addr.rpartition(":")
    page = Starlette(routes=[Route("/metrics", probes.metrics_page, methods=["GET"])])
    page.state.services = services
    config = uvicorn.Config(
        page,
        lifespan="off",
        log_config=None,
        log_level=None,
        access_log=False,
        server_header=False,
        http=functools.partial(RegistryHttpProtocol, limits=HttpLimits()),  # type: ignore[arg-type]
    )
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}, _loop=loop
        ),
        host=host.strip("[]"),
        port=int(port),
        reuse_port=True,
    )


def probe_self(config: Config, path: str = "/healthz", timeout: float = 5.0) -> int:
    """`registry healthcheck`: GET `path` of the server these settings describe, on loopback
    when it listens on every address; 0 when it answers 200, else 1 (a container HEALTHCHECK).
    Over TLS the certificate is not checked: this only asks whether our own process lives."""
    import http.client
    import ssl

    host, port = config.host_port
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    if config.server.tls.certificate:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return 0 if connection.getresponse().status == 200 else 1
    except OSError:
        return 1
    finally:
        connection.close()
