"""Running the app under uvicorn: schema migration first, then one or more workers."""

from __future__ import annotations

import functools
import logging
import logging.config
import re
from typing import Any

import uvicorn

from registry.allocator import keep_freed_buffers
from registry.app import create_app
from registry.auth.services import preflight, prepare_keys
from registry.config import Config, ConfigError, settings, worker_count
from registry.filemodes import secure_data
from registry.gc.collector import check_settings as check_gc_settings
from registry.http_limits import OTHER_FILES, HttpLimits, raise_open_file_limit
from registry.http_protocol import RegistryHttpProtocol
from registry.lifecycle import Draining, GracefulServer, GracefulSupervisor, run_folder
from registry.metadata.db import upgrade_schema
from registry.metrics import prepare_multiprocess
from registry.observe import logging_config
from registry.policies.service import configured_rules
from registry.tls import TlsFiles, listener_context
from registry.tls import check as check_tls

log = logging.getLogger("registry")


def app_factory() -> object:
    """For uvicorn's multi-worker mode, which imports the app by name in each worker."""
    import json
    import os

    from registry.config import load_config

    keep_freed_buffers()
    overrides = json.loads(os.environ.get("REGISTRY__OVERRIDES", "{}"))
    return create_app(load_config(overrides=overrides))


def check_operations(config: Config) -> None:
    """ConfigError for operations settings that cannot work."""
    server = config.server
    if server.log_format not in ("text", "json"):
        raise ConfigError(f"server.log_format must be text or json, got {server.log_format!r}")
    if server.shutdown_timeout < 0 or server.shutdown_delay < 0:
        raise ConfigError("server.shutdown_timeout and server.shutdown_delay must be 0 or more")
    if server.ready_timeout < 1:
        raise ConfigError("server.ready_timeout must be at least 1 (second)")
    if server.metrics_addr:
        host, _, port = server.metrics_addr.rpartition(":")
        if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            raise ConfigError(f"server.metrics_addr must be HOST:PORT, got {server.metrics_addr!r}")


def serve(config: Config, workers: int | None = None) -> int:
    host, port = config.host_port
    config.check()  # an unknown storage driver, or S3 without a bucket: refused up front
    check_operations(config)
    configured_rules(config.policies)  # retention, immutable tags, quota: refused up front
    log_config = logging_config(config.server.log_format, config.server.log_level)
    logging.config.dictConfig(log_config)  # this process's lines too, in the chosen format
    secure_data(config)  # owner-only files from here on, whatever the umask
    limits = HttpLimits.from_config(config.server)
    preflight(config)  # no auth off loopback unless insecure; auth settings
    check_gc_settings(config.gc)
    tls = tls_files(config)
    if tls is not None:
        check_tls(tls)
    files = raise_open_file_limit()
    if limits.max_connections and files < limits.max_connections + OTHER_FILES:
        log.warning(
            "the open-file limit (%d) is below server.max_connections (%d) plus %d: "
            "raise it (ulimit -n, LimitNOFILE=) or lower server.max_connections",
            files,
            limits.max_connections,
            OTHER_FILES,
        )
    if config.database.auto_migrate:
        upgrade_schema(config.database_url)
    prepare_keys(config)  # the signing keys read, or made, before any worker starts
    count = workers or worker_count(config.server.workers)
    scheme = "https" if tls is not None else "http"
    log.info("registry listening on %s://%s:%d (data in %s)", scheme, host, port, config.data_dir)
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        log_config=log_config,
        log_level=config.server.log_level,
        access_log=False,  # ours, in registry/observe.py
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=config.server.keep_alive_timeout,
        timeout_graceful_shutdown=config.server.shutdown_timeout,
        # uvloop is no faster here once the database runs on the loop, and when the loop is
        # saturated it serves some connections far later than others (p99 of 1 s at 64
        # connections, where asyncio's own loop stays at 50 ms).
        loop="asyncio",
        # httptools, plus zero-copy sends of blob files and our limits. A partial of an
        # importable class pickles, so each worker process of several gets the same limits.
        http=functools.partial(RegistryHttpProtocol, limits=limits),
        # Our TLS context, built (and reloaded on SIGHUP) in each server process.
        ssl_context_factory=functools.partial(listener_context, tls) if tls else None,
    )
    delay = float(config.server.shutdown_delay)
    with run_folder() as run_dir:
        draining = Draining(run_dir)
        if count > 1:
            import json
            import os

            prepare_multiprocess(run_dir)  # before any worker imports prometheus-client
            os.environ["REGISTRY__OVERRIDES"] = json.dumps(settings(config))
            uv_config = uvicorn.Config(
                "registry.server:app_factory", factory=True, workers=count, **common
            )
            sock = uv_config.bind_socket()
            GracefulSupervisor(uv_config, [sock], draining, delay).run()
        else:
            keep_freed_buffers()
            uv_config = uvicorn.Config(create_app(config, draining=draining), **common)
            GracefulServer(uv_config, draining, delay).run()
    return 0


def tls_files(config: Config) -> TlsFiles | None:
    """The TLS files of `server.tls.*`, or None when TLS is off (no certificate given)."""
    tls = config.server.tls
    if not tls.certificate:
        if tls.key or tls.client_ca:
            raise ConfigError("server.tls.key and server.tls.client_ca need server.tls.certificate")
        return None
    if not tls.key:
        raise ConfigError("server.tls.certificate needs server.tls.key")
    return TlsFiles(tls.certificate, tls.key, tls.client_ca)
