"""Lifecycle policies in the admin API (admins only, like the rest of /auth/admin/):

    retention       GET; PUT {pattern, keep_last, keep_tags, keep_pulled_within,
                    keep_pushed_within, untagged_after}; DELETE ?pattern=
    retention/run   POST {dry_run}: apply the policies now (or list what would go, and why)
    immutable       GET; POST {pattern, tags};  immutable/N  DELETE
    quotas          GET; PUT {namespace, limit};  DELETE ?namespace=
    usage           GET [?namespace=]   deduplicated bytes per namespace, with its quota
    tags            GET ?repository=    tags with their last pull time and pull count

Durations as `30d`, `12h`; sizes as `10GiB`, `500MB` or bytes. Policies of the config are
listed with `"source": "config"` and cannot be changed here. Every change is audited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from registry.auth.accounts import Principal
from registry.auth.admin_api import PREFIX, BadRequest, Conflict, NotFound, endpoint, json_object
from registry.auth.controller import client_address
from registry.auth.services import AuthServices
from registry.config import Config
from registry.metadata.identity import now
from registry.metadata.policystore import PolicyConflict, PolicyNotFound
from registry.metadata.retentionstore import RetentionStore
from registry.policies import management as rules_io
from registry.policies.rules import RuleError, parse_size
from registry.policies.runner import Retention
from registry.policies.service import Policies
from registry.policies.usage import tag_rows, usage_rows

Handler = Callable[[Request, AuthServices, Principal], Awaitable[Response]]


def _policies(request: Request) -> Policies:
    return request.app.state.services.policies  # type: ignore[no-any-return]


def _checked(handler: Handler) -> Handler:
    """Policy errors as answers: 400 for a bad rule, 404 and 409 as for accounts."""

    async def run(request: Request, auth: AuthServices, caller: Principal) -> Response:
        try:
            return await handler(request, auth, caller)
        except RuleError as exc:
            raise BadRequest(str(exc)) from None
        except PolicyNotFound as exc:
            raise NotFound(str(exc)) from None
        except PolicyConflict as exc:
            raise Conflict(str(exc)) from None

    return run


async def _audit(
    request: Request, auth: AuthServices, caller: Principal, op: str, target: str
) -> None:
    await auth.audit.record(caller.subject, client_address(request), "admin", target, {"op": op})


def _param(request: Request, key: str) -> str:
    value = request.query_params.get(key)
    if not value:
        raise BadRequest(f"give `{key}`")
    return value


# Retention ---------------------------------------------------------------------------------


async def list_retention(request: Request, auth: AuthServices, caller: Principal) -> Response:
    policies = await _policies(request).retention_policies()
    return JSONResponse({"policies": [rules_io.retention_json(p) for p in policies]})


async def set_retention(request: Request, auth: AuthServices, caller: Principal) -> Response:
    policy = rules_io.retention_policy(await json_object(request))
    await _policies(request).store.set_retention(rules_io.to_row(policy, now()))
    await _audit(request, auth, caller, "retention.set", policy.pattern)
    return JSONResponse(rules_io.retention_json(policy))


async def remove_retention(request: Request, auth: AuthServices, caller: Principal) -> Response:
    pattern = _param(request, "pattern")
    await _policies(request).store.delete_retention(pattern)
    await _audit(request, auth, caller, "retention.remove", pattern)
    return Response(status_code=204)


async def run_retention(request: Request, auth: AuthServices, caller: Principal) -> Response:
    body = await json_object(request)
    unknown = set(body) - {"dry_run"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("`dry_run` must be true or false")
    policies = _policies(request)
    await _audit(request, auth, caller, "retention.run", "dry run" if dry_run else "run")
    report = await Retention(policies, RetentionStore(policies.store.db)).run(dry_run)
    return JSONResponse(report.figures())


# Immutable tags ----------------------------------------------------------------------------


async def list_immutable(request: Request, auth: AuthServices, caller: Principal) -> Response:
    rules = await _policies(request).immutable_rules()
    return JSONResponse({"rules": [rules_io.immutable_json(r) for r in rules]})


async def add_immutable(request: Request, auth: AuthServices, caller: Principal) -> Response:
    rule = rules_io.immutable_rule(await json_object(request))
    rule_id = await _policies(request).store.add_immutable(rule.pattern, ",".join(rule.tags))
    await _audit(request, auth, caller, "immutable.add", f"{rule.pattern} {','.join(rule.tags)}")
    body = rules_io.immutable_json(rule)
    return JSONResponse({**body, "id": rule_id, "source": "database"}, status_code=201)


async def remove_immutable(request: Request, auth: AuthServices, caller: Principal) -> Response:
    raw = request.path_params["id"]
    if not raw.isdigit() or len(raw) > 9:
        raise NotFound("no such rule")
    await _policies(request).store.delete_immutable(int(raw))
    await _audit(request, auth, caller, "immutable.remove", raw)
    return Response(status_code=204)


# Quotas and usage --------------------------------------------------------------------------


async def list_quotas(request: Request, auth: AuthServices, caller: Principal) -> Response:
    policies = _policies(request)
    quotas = await policies.store.quotas()
    return JSONResponse(
        {
            "quotas": [{"namespace": ns, "limit": limit} for ns, limit in sorted(quotas.items())],
            "default": policies.default_quota,
        }
    )


async def set_quota(request: Request, auth: AuthServices, caller: Principal) -> Response:
    body = await json_object(request)
    unknown = set(body) - {"namespace", "limit"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}")
    namespace = rules_io.checked_namespace(body.get("namespace"))
    limit = body.get("limit")
    if not isinstance(limit, str | int) or isinstance(limit, bool):
        raise BadRequest("`limit` must be a size such as '10GiB' or a number of bytes")
    limit_bytes = parse_size(limit)
    await _policies(request).store.set_quota(namespace, limit_bytes)
    await _audit(request, auth, caller, "quota.set", f"{namespace} {limit_bytes}")
    return JSONResponse({"namespace": namespace, "limit": limit_bytes})


async def remove_quota(request: Request, auth: AuthServices, caller: Principal) -> Response:
    namespace = _param(request, "namespace")
    await _policies(request).store.delete_quota(namespace)
    await _audit(request, auth, caller, "quota.remove", namespace)
    return Response(status_code=204)


async def usage(request: Request, auth: AuthServices, caller: Principal) -> Response:
    namespace = request.query_params.get("namespace")
    if namespace is not None:
        rules_io.checked_namespace(namespace)
    rows = await usage_rows(_policies(request), namespace)
    return JSONResponse({"namespaces": rows})


async def tags(request: Request, auth: AuthServices, caller: Principal) -> Response:
    repository = _param(request, "repository")
    rows = await tag_rows(_policies(request).store, repository)
    if rows is None:
        raise NotFound("no such repository")
    return JSONResponse({"repository": repository, "tags": rows})


def _route(path: str, handler: Handler, method: str) -> Route:
    return Route(f"{PREFIX}/{path}", endpoint(_checked(handler)), methods=[method])


ROUTES: list[BaseRoute] = [
    _route("retention", list_retention, "GET"),
    _route("retention", set_retention, "PUT"),
    _route("retention", remove_retention, "DELETE"),
    _route("retention/run", run_retention, "POST"),
    _route("immutable", list_immutable, "GET"),
    _route("immutable", add_immutable, "POST"),
    _route("immutable/{id}", remove_immutable, "DELETE"),
    _route("quotas", list_quotas, "GET"),
    _route("quotas", set_quota, "PUT"),
    _route("quotas", remove_quota, "DELETE"),
    _route("usage", usage, "GET"),
    _route("tags", tags, "GET"),
]


def policy_routes(config: Config) -> list[BaseRoute]:
    """The admin API exists only with authentication (there is no admin without it)."""
    return ROUTES if config.auth.enabled else []
