"""Running the app under uvicorn: schema migration first, then one or more workers."""

from __future__ import annotations

import logging

import uvicorn

from registry.allocator import keep_freed_buffers
from registry.app import create_app
from registry.auth.services import preflight
from registry.config import Config, settings
from registry.filemodes import secure_data
from registry.gc.collector import check_settings as check_gc_settings
from registry.http_protocol import RegistryHttpProtocol
from registry.metadata.db import upgrade_schema

log = logging.getLogger("registry")


def app_factory() -> object:
    """For uvicorn's multi-worker mode, which imports the app by name in each worker."""
    import json
    import os

    from registry.config import load_config

    keep_freed_buffers()
    overrides = json.loads(os.environ.get("REGISTRY__OVERRIDES", "{}"))
    return create_app(load_config(overrides=overrides))


def serve(config: Config, workers: int | None = None) -> int:
    host, port = config.host_port
    secure_data(config)  # owner-only files from here on, whatever the umask
    preflight(config)  # no auth off loopback unless insecure; auth settings and keys
    check_gc_settings(config.gc)
    if config.database.auto_migrate:
        upgrade_schema(config.database_url)
    count = workers or config.server.workers
    log.info("registry listening on http://%s:%d (data in %s)", host, port, config.data_dir)
    common = dict(
        host=host,
        port=port,
        log_level=config.server.log_level,
        access_log=config.server.access_log,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        # uvloop is no faster here once the database runs on the loop, and when the loop is
        # saturated it serves some connections far later than others (p99 of 1 s at 64
        # connections, where asyncio's own loop stays at 50 ms).
        loop="asyncio",
        http=RegistryHttpProtocol,  # httptools, plus zero-copy sends of blob files
    )
    if count > 1:
        import json
        import os

        os.environ["REGISTRY__OVERRIDES"] = json.dumps(settings(config))
        uvicorn.run("registry.server:app_factory", factory=True, workers=count, **common)  # type: ignore[arg-type]
    else:
        keep_freed_buffers()
        uvicorn.run(create_app(config), **common)  # type: ignore[arg-type]
    return 0
