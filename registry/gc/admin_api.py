"""Garbage collection in the admin API (admins only, like the rest of /auth/admin/):

    POST /auth/admin/gc        {"dry_run": false, "wait": true}
        wait (default): runs now and answers 200 with the run's report;
        "wait": false: starts it and answers 202 at once (see gc/runs for the outcome).
        409 when this process is running a collection already.
    GET  /auth/admin/gc/runs   ?limit=20   the latest runs of every replica, newest first

Every request is written to the audit log.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from registry.auth.accounts import Principal
from registry.auth.admin_api import PREFIX, BadRequest, Conflict, endpoint, json_object
from registry.auth.controller import client_address
from registry.auth.services import AuthServices
from registry.config import Config
from registry.gc.collector import Collector, Report
from registry.metadata.gcstore import RunRecord

MAX_BODY = 4096
MAX_RUNS = 1000


def _collector(request: Request) -> Collector:
    return request.app.state.collector  # type: ignore[no-any-return]


async def _options(request: Request) -> dict[str, bool]:
    body = await json_object(request, MAX_BODY)
    unknown = set(body) - {"dry_run", "wait"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}")
    options = {"dry_run": False, "wait": True}
    for key, value in body.items():
        if not isinstance(value, bool):
            raise BadRequest(f"`{key}` must be true or false")
        options[key] = value
    return options


async def start_gc(request: Request, auth: AuthServices, caller: Principal) -> Response:
    options = await _options(request)
    collector = _collector(request)
    if collector.running:
        raise Conflict("a garbage collection is running in this process already")
    detail = {"op": "gc.run", "dry_run": options["dry_run"]}
    await auth.audit.record(caller.subject, client_address(request), "admin", "gc", detail)
    run = collector.run("api", dry_run=options["dry_run"])
    if not options["wait"]:
        task = asyncio.create_task(run)
        tasks: set[asyncio.Task[Report]] = request.app.state.gc_tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({"started": True}, status_code=202)
    report = await run
    return JSONResponse(report.figures(), status_code=200 if report.status == "ok" else 500)


def run_json(run: RunRecord) -> dict[str, Any]:
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "id": run.id,
        "started_at": run.started_at.strftime(stamp),
        "finished_at": run.finished_at.strftime(stamp) if run.finished_at else None,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "status": run.status,
        "host": run.host,
        "blobs_deleted": run.blobs_deleted,
        "bytes_reclaimed": run.bytes_reclaimed,
        "manifests_deleted": run.manifests_deleted,
        "uploads_expired": run.uploads_expired,
        "errors": run.detail.get("errors", []),
        "seconds": run.detail.get("seconds"),
    }


async def list_runs(request: Request, auth: AuthServices, caller: Principal) -> Response:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RUNS:
        raise BadRequest(f"`limit` must be a number from 1 to {MAX_RUNS}")
    runs = await _collector(request).store.runs(int(raw))
    return JSONResponse({"runs": [run_json(r) for r in runs]})


ROUTES: list[BaseRoute] = [
    Route(f"{PREFIX}/gc", endpoint(start_gc), methods=["POST"]),
    Route(f"{PREFIX}/gc/runs", endpoint(list_runs), methods=["GET"]),
]


def gc_routes(config: Config) -> list[BaseRoute]:
    """The admin API exists only with authentication (there is no admin without it)."""
    return ROUTES if config.auth.enabled else []
