"""The admin API: the `registry user|team|grant|public|token|audit` commands over JSON.

Authenticated with Basic credentials: an admin's password, or a robot token made with
`--admin`. Any other user may manage their own robot tokens (`/auth/admin/tokens`), which
can never do more than the user can. Every change is written to the audit log.

    users    GET, POST {name, password, admin}
    users/N  GET, PATCH {password, admin}, DELETE
    teams    GET, POST {name};  teams/T  DELETE;  teams/T/members/U  PUT, DELETE
    grants   GET, POST {user|team, pattern, actions}, DELETE ?user=|team=&pattern=[&actions=]
    public   GET, POST {pattern}, DELETE ?pattern=
    tokens   GET, POST {name, scopes, expires, owner, admin};  tokens/N  DELETE
             (`name` is short; the token is named robot$<owner>+<name>, or robot$<name>
             without owner, and that full name is what it logs in and is revoked with)
    audit    GET ?limit=&actor=&action=

all under /auth/admin/.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from registry.auth import management
from registry.auth.accounts import Principal
from registry.auth.controller import client_address, parse_basic
from registry.auth.services import AuthServices
from registry.auth.token_endpoint import auth_services
from registry.errors import Denied, RegistryError, Unauthorized
from registry.metadata.identity import IdentityConflict, IdentityNotFound, RobotRecord
from registry.numbers import parse_decimal

MAX_BODY = 64 * 1024
Handler = Callable[[Request, AuthServices, Principal], Awaitable[Response]]


class BadRequest(RegistryError):
    code, status, default_message = "BAD_REQUEST", 400, "invalid request"


class NotFound(RegistryError):
    code, status, default_message = "NOT_FOUND", 404, "not found"


class Conflict(RegistryError):
    code, status, default_message = "CONFLICT", 409, "already exists"


def _stamp(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


async def _caller(request: Request, auth: AuthServices) -> Principal:
    challenge = {"WWW-Authenticate": 'Basic realm="registry admin"'}
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    credentials = parse_basic(value) if scheme.lower() == "basic" else None
    if credentials is None:
        raise Unauthorized("the admin API needs Basic credentials", headers=challenge)
    try:
        return await auth.accounts.login(*credentials, client_address(request), record=False)
    except Unauthorized as exc:
        raise Unauthorized(exc.message, headers=challenge) from None


def _require_admin(caller: Principal) -> None:
    if not caller.admin:
        raise Denied("this needs an admin")


async def json_object(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's body, a JSON object of at most `limit` bytes (read no further), or
    BadRequest. Every admin endpoint's (accounts, garbage collection, policies)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BadRequest("request body too large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"`{key}` must be a non-empty string")
    return value


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"`{key}` must be true or false")
    return value


async def _changed(
    request: Request, auth: AuthServices, caller: Principal, what: str, target: str
) -> None:
    await auth.audit.record(caller.subject, client_address(request), "admin", target, {"op": what})


def endpoint(handler: Handler, admin: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """The route endpoint: authenticate, check admin, map identity errors to answers."""

    async def run(request: Request) -> Response:
        auth = auth_services(request)
        caller = await _caller(request, auth)
        if admin:
            _require_admin(caller)
        try:
            return await handler(request, auth, caller)
        except management.ManagementError as exc:
            raise BadRequest(str(exc)) from None
        except IdentityNotFound as exc:
            raise NotFound(str(exc)) from None
        except IdentityConflict as exc:
            raise Conflict(str(exc)) from None

    return run


# Users -----------------------------------------------------------------------------------


async def list_users(request: Request, auth: AuthServices, caller: Principal) -> Response:
    users = await auth.identity.list_users()
    body = [{"name": u.name, "admin": u.admin, "created_at": _stamp(u.created_at)} for u in users]
    return JSONResponse({"users": body})


async def get_user(request: Request, auth: AuthServices, caller: Principal) -> Response:
    user = await auth.identity.get_user(request.path_params["name"])
    if user is None:
        raise NotFound("no such user")
    teams = await auth.identity.teams_of(user.id)
    grants = [
        {"pattern": g.pattern, "actions": g.actions}
        for g in await auth.identity.list_grants()
        if g.kind == "user" and g.subject == user.name
    ]
    return JSONResponse(
        {
            "name": user.name,
            "admin": user.admin,
            "created_at": _stamp(user.created_at),
            "teams": teams,
            "grants": grants,
        }
    )


async def add_user(request: Request, auth: AuthServices, caller: Principal) -> Response:
    body = await json_object(request)
    name, password = _text(body, "name"), _text(body, "password")
    assert name is not None and password is not None
    await management.add_user(auth.identity, name, password, bool(_flag(body, "admin")))
    await _changed(request, auth, caller, "user.add", name)
    return JSONResponse({"name": name}, status_code=201)


async def update_user(request: Request, auth: AuthServices, caller: Principal) -> Response:
    name = request.path_params["name"]
    body = await json_object(request)
    password, admin = _text(body, "password", required=False), _flag(body, "admin")
    if password is None and admin is None:
        raise BadRequest("give `password` or `admin`")
    if await auth.identity.get_user(name) is None:
        raise NotFound("no such user")
    if password is not None:
        await management.change_password(auth.identity, name, password)
        await _changed(request, auth, caller, "user.passwd", name)
    if admin is not None:
        await auth.identity.set_admin(name, admin)
        await _changed(request, auth, caller, "user.admin" if admin else "user.unadmin", name)
    return JSONResponse({"name": name})


async def remove_user(request: Request, auth: AuthServices, caller: Principal) -> Response:
    name = request.path_params["name"]
    await auth.identity.delete_user(name)
    auth.bearer.forget_all()  # their tokens, and their robots', end now in this process
    await _changed(request, auth, caller, "user.remove", name)
    return Response(status_code=204)


# Teams -----------------------------------------------------------------------------------


async def list_teams(request: Request, auth: AuthServices, caller: Principal) -> Response:
    teams = await auth.identity.list_teams()
    return JSONResponse({"teams": [{"name": t.name, "members": t.members} for t in teams]})


async def add_team(request: Request, auth: AuthServices, caller: Principal) -> Response:
    name = _text(await json_object(request), "name")
    assert name is not None
    await auth.identity.create_team(management.check_name("team", name))
    await _changed(request, auth, caller, "team.add", name)
    return JSONResponse({"name": name}, status_code=201)


async def remove_team(request: Request, auth: AuthServices, caller: Principal) -> Response:
    team = request.path_params["team"]
    await auth.identity.delete_team(team)
    await _changed(request, auth, caller, "team.remove", team)
    return Response(status_code=204)


async def add_member(request: Request, auth: AuthServices, caller: Principal) -> Response:
    team, user = request.path_params["team"], request.path_params["user"]
    await auth.identity.add_member(team, user)
    await _changed(request, auth, caller, "team.add-member", f"{team}/{user}")
    return Response(status_code=204)


async def remove_member(request: Request, auth: AuthServices, caller: Principal) -> Response:
    team, user = request.path_params["team"], request.path_params["user"]
    await auth.identity.remove_member(team, user)
    await _changed(request, auth, caller, "team.remove-member", f"{team}/{user}")
    return Response(status_code=204)


# Grants and public patterns --------------------------------------------------------------


def _subject(values: dict[str, Any]) -> tuple[str, str]:
    user, team = values.get("user"), values.get("team")
    if bool(user) == bool(team) or not isinstance(user or team, str):
        raise BadRequest("name exactly one of `user` or `team`")
    return ("user", user) if user else ("team", team)  # type: ignore[return-value]


async def list_grants(request: Request, auth: AuthServices, caller: Principal) -> Response:
    grants = await auth.identity.list_grants()
    return JSONResponse(
        {
            "grants": [
                {g.kind: g.subject, "pattern": g.pattern, "actions": g.actions} for g in grants
            ]
        }
    )


async def add_grant(request: Request, auth: AuthServices, caller: Principal) -> Response:
    body = await json_object(request)
    kind, name = _subject(body)
    pattern, actions = _text(body, "pattern"), _text(body, "actions")
    assert pattern is not None and actions is not None
    result = await management.grant(auth.identity, kind, name, pattern, actions)
    await _changed(request, auth, caller, "grant", f"{kind}:{name} {pattern} {result}")
    return JSONResponse({kind: name, "pattern": pattern, "actions": result})


async def remove_grant(request: Request, auth: AuthServices, caller: Principal) -> Response:
    params = dict(request.query_params)
    kind, name = _subject(params)
    pattern = _text(params, "pattern")
    assert pattern is not None
    left = await management.revoke(auth.identity, kind, name, pattern, params.get("actions"))
    await _changed(request, auth, caller, "revoke", f"{kind}:{name} {pattern} {left or ''}")
    return JSONResponse({kind: name, "pattern": pattern, "actions": left or ""})


async def list_public(request: Request, auth: AuthServices, caller: Principal) -> Response:
    return JSONResponse({"patterns": await auth.identity.public_patterns()})


async def add_public(request: Request, auth: AuthServices, caller: Principal) -> Response:
    pattern = _text(await json_object(request), "pattern")
    assert pattern is not None
    await auth.identity.add_public(management.checked_pattern(pattern))
    await _changed(request, auth, caller, "public.add", pattern)
    return JSONResponse({"pattern": pattern}, status_code=201)


async def remove_public(request: Request, auth: AuthServices, caller: Principal) -> Response:
    pattern = _text(dict(request.query_params), "pattern")
    assert pattern is not None
    await auth.identity.remove_public(pattern)
    await _changed(request, auth, caller, "public.remove", pattern)
    return Response(status_code=204)


# Robot tokens ----------------------------------------------------------------------------


def token_json(robot: RobotRecord) -> dict[str, Any]:
    return {
        "name": robot.name,
        "owner": robot.owner,
        "scopes": [f"{p}:{a}" for p, a in robot.scopes],
        "admin": robot.admin,
        "created_at": _stamp(robot.created_at),
        "expires_at": _stamp(robot.expires_at),
        "last_used_at": _stamp(robot.last_used_at),
        "old_name": robot.legacy_name,  # a login alias, for robots from before robot$ names
    }


def _own_user(caller: Principal) -> str:
    """A non-admin manages only tokens they own; robots own none."""
    if caller.kind != "user":
        raise Denied("robot tokens cannot manage tokens unless made with --admin")
    return caller.name


async def list_tokens(request: Request, auth: AuthServices, caller: Principal) -> Response:
    owner = None if caller.admin else _own_user(caller)
    robots = await auth.identity.list_robots(owner)
    return JSONResponse({"tokens": [token_json(r) for r in robots]})


async def add_token(request: Request, auth: AuthServices, caller: Principal) -> Response:
    body = await json_object(request)
    name = _text(body, "name")
    assert name is not None
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("`scopes` must be a list of 'pattern:actions' strings")
    expires = _text(body, "expires", required=False) or management.DEFAULT_TOKEN_LIFETIME
    admin = bool(_flag(body, "admin"))
    if caller.admin:
        owner = _text(body, "owner", required=False)
    else:
        owner = _own_user(caller)
        if admin or body.get("owner") not in (None, owner):
            raise Denied("only admins make admin tokens or tokens for others")
    token = await management.create_token(auth.identity, name, scopes, expires, owner, admin)
    await _changed(request, auth, caller, "token.create", token.name)
    robot = await auth.identity.robot_by_name(token.name)
    assert robot is not None
    return JSONResponse({**token_json(robot), "token": token.secret}, status_code=201)


async def remove_token(request: Request, auth: AuthServices, caller: Principal) -> Response:
    name = request.path_params["name"]
    if not caller.admin:
        robot = await auth.identity.robot_by_name(name)
        if robot is None or robot.owner != _own_user(caller):
            raise NotFound("no such token")
    await auth.identity.delete_robot(name)
    auth.bearer.forget_all()
    await _changed(request, auth, caller, "token.revoke", name)
    return Response(status_code=204)


# Audit -----------------------------------------------------------------------------------


async def audit(request: Request, auth: AuthServices, caller: Principal) -> Response:
    params = request.query_params
    limit = parse_decimal(params.get("limit", "100"))
    if limit is None:
        raise BadRequest("`limit` must be a number")
    entries = await auth.identity.audit_entries(
        min(limit, 10_000), params.get("actor"), params.get("action")
    )
    return JSONResponse(
        {
            "entries": [
                {
                    "at": _stamp(e.at),
                    "actor": e.actor,
                    "address": e.address,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in entries
            ]
        }
    )


PREFIX = "/auth/admin"
ROUTES = [
    Route(f"{PREFIX}/users", endpoint(list_users), methods=["GET"]),
    Route(f"{PREFIX}/users", endpoint(add_user), methods=["POST"]),
    Route(f"{PREFIX}/users/{{name}}", endpoint(get_user), methods=["GET"]),
    Route(f"{PREFIX}/users/{{name}}", endpoint(update_user), methods=["PATCH"]),
    Route(f"{PREFIX}/users/{{name}}", endpoint(remove_user), methods=["DELETE"]),
    Route(f"{PREFIX}/teams", endpoint(list_teams), methods=["GET"]),
    Route(f"{PREFIX}/teams", endpoint(add_team), methods=["POST"]),
    Route(f"{PREFIX}/teams/{{team}}", endpoint(remove_team), methods=["DELETE"]),
    Route(f"{PREFIX}/teams/{{team}}/members/{{user}}", endpoint(add_member), methods=["PUT"]),
    Route(f"{PREFIX}/teams/{{team}}/members/{{user}}", endpoint(remove_member), methods=["DELETE"]),
    Route(f"{PREFIX}/grants", endpoint(list_grants), methods=["GET"]),
    Route(f"{PREFIX}/grants", endpoint(add_grant), methods=["POST"]),
    Route(f"{PREFIX}/grants", endpoint(remove_grant), methods=["DELETE"]),
    Route(f"{PREFIX}/public", endpoint(list_public), methods=["GET"]),
    Route(f"{PREFIX}/public", endpoint(add_public), methods=["POST"]),
    Route(f"{PREFIX}/public", endpoint(remove_public), methods=["DELETE"]),
    Route(f"{PREFIX}/tokens", endpoint(list_tokens, admin=False), methods=["GET"]),
    Route(f"{PREFIX}/tokens", endpoint(add_token, admin=False), methods=["POST"]),
    Route(f"{PREFIX}/tokens/{{name}}", endpoint(remove_token, admin=False), methods=["DELETE"]),
    Route(f"{PREFIX}/audit", endpoint(audit), methods=["GET"]),
]
