"""`/v2/<name>/tags/list` and `/v2/_catalog`: byte-ordered lists with `n`/`last` pagination."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.api.context import authorize, repository, services
from registry.auth import Access
from registry.errors import NameUnknown, RegistryError
from registry.numbers import parse_decimal


class PaginationNumberInvalid(RegistryError):
    code, status, default_message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results"


def _page(request: Request, maximum: int) -> tuple[int | None, str | None]:
    raw_n = request.query_params.get("n")
    n: int | None = None
    if raw_n is not None:
        value = parse_decimal(raw_n)
        if value is None:
            raise PaginationNumberInvalid(detail={"n": raw_n[:50]})
        n = min(value, maximum)
    return n, request.query_params.get("last")


def _paged(path: str, key: str, items: list[str], n: int | None, extra: dict[str, str]) -> Response:
    """Answer `items` (fetched with one more than `n` to tell whether more remain)."""
    headers = {}
    if n is not None and len(items) > n:
        items = items[:n]
        query = urlencode({"n": n, "last": items[-1]})
        headers["Link"] = f'<{path}?{query}>; rel="next"'
    return JSONResponse({**extra, key: items}, headers=headers)


async def list_tags(request: Request) -> Response:
    name = repository(request)
    svc = await authorize(request, name, ("pull",))
    n, last = _page(request, svc.config.limits.page_size_max)
    if n == 0:
        if await svc.metadata.repository_id(name) is None:
            raise NameUnknown(detail={"name": name})
        return JSONResponse({"name": name, "tags": []})
    limit = (n if n is not None else svc.config.limits.page_size_max * 100) + 1
    found = await svc.metadata.list_tags(name, limit, last)
    if found is None:
        raise NameUnknown(detail={"name": name})
    return _paged(f"/v2/{name}/tags/list", "tags", found, n, {"name": name})


async def catalog(request: Request) -> Response:
    svc = services(request)
    await svc.access.authorize(request, [Access("registry", "catalog", ("*",))])
    n, last = _page(request, svc.config.limits.page_size_max)
    if n == 0:
        return JSONResponse({"repositories": []})
    limit = (n if n is not None else svc.config.limits.page_size_max * 100) + 1
    # Only what the caller may pull is listed (all of it without auth); read on past
    # hidden names until the page is full.
    names: list[str] = []
    cursor = last
    while len(names) < limit:
        batch = await svc.metadata.list_repositories(limit, cursor)
        names.extend(await svc.access.pullable(request, batch))
        if len(batch) < limit:
            break
        cursor = batch[-1]
    return _paged("/v2/_catalog", "repositories", names[:limit], n, {})
