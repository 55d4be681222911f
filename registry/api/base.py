"""`/v2/`: the API version check clients make first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.api.context import services


async def api_version(request: Request) -> Response:
    svc = services(request)
    await svc.access.authorize(request, [])
    return JSONResponse({})
