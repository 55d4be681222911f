"""`/auth/token`: the token server of Docker's token authentication, and `/auth/jwks`.

    GET  /auth/token?service=..&scope=..&scope=..[&offline_token=true&client_id=..]
         Basic credentials (a password or a robot token) or none (anonymous)
    POST /auth/token   form: grant_type=password (username, password) or
                       grant_type=refresh_token (refresh_token); service, client_id,
                       access_type=offline, scope (space-separated)

Credentials are checked first: a wrong password is 401 (and counts toward the failed-login
limit) whatever else the request says. Then the request itself: without `service`, or with
another registry's, it is 400. The token grants the intersection of what was asked and what
the account may do; asking for more, or for something unreadable, is never an error, it
just yields less (possibly a token with empty `access`). `offline_token=true` (GET) and
`access_type=offline` (POST password grant) also return a `refresh_token`, which
`docker login` keeps as its identity token and later trades with the refresh grant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.api.context import services
from registry.auth.accounts import ANONYMOUS, Principal
from registry.auth.controller import TokenAccessController, client_address, parse_basic
from registry.auth.passwords import REFRESH_PREFIX
from registry.auth.scopes import Scope, ScopeError, requested_scopes
from registry.auth.services import AuthServices
from registry.errors import NameUnknown, RegistryError, Unauthorized, Unsupported

MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class InvalidRequest(RegistryError):
    code, status, default_message = "UNSUPPORTED", 400, "invalid token request"


def auth_services(request: Request) -> AuthServices:
    access = services(request).access
    if not isinstance(access, TokenAccessController):
        raise NameUnknown("authentication is not enabled on this registry")
    return access.auth


def _basic_challenge(auth: AuthServices) -> dict[str, str]:
    return {"WWW-Authenticate": f'Basic realm="{auth.settings.service}"'}


def _check_service(auth: AuthServices, service: str | None) -> None:
    ours = auth.settings.service
    if not service:
        raise InvalidRequest(
            f"a token request needs `service` (the one the challenge names: {ours})"
        )
    if service != ours:
        raise InvalidRequest(
            f"tokens here are for service {ours!r}", detail={"service": service[:200]}
        )


def _scopes(values: list[str]) -> list[Scope]:
    try:
        return requested_scopes(values)
    except ScopeError as exc:
        raise InvalidRequest(str(exc)) from None


async def _grant(
    auth: AuthServices, principal: Principal, wanted: list[Scope]
) -> tuple[str, list[Scope], float, int]:
    granted = (await auth.accounts.permissions(principal)).grant(wanted)
    issued = await auth.issuer.issue(principal.subject, granted, principal.account)
    return issued.token, granted, issued.issued_at, issued.expires_in


def _answer(
    token: str, issued_at: float, expires_in: int, extra: dict[str, Any] | None = None
) -> Response:
    body: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": datetime.fromtimestamp(issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **(extra or {}),
    }
    return JSONResponse(body, headers=NO_STORE)


async def _basic_principal(request: Request, auth: AuthServices) -> Principal:
    """The caller of a GET: Basic credentials, or anonymous without any."""
    header = request.headers.get("authorization")
    if header is None:
        return ANONYMOUS
    scheme, _, value = header.strip().partition(" ")
    credentials = parse_basic(value) if scheme.lower() == "basic" else None
    if credentials is None:
        raise Unauthorized("send Basic credentials, or none", headers=_basic_challenge(auth))
    return await _login(auth, *credentials, client_address(request))


async def _login(auth: AuthServices, username: str, password: str, address: str) -> Principal:
    try:
        return await auth.accounts.login(username, password, address)
    except Unauthorized as exc:
        raise Unauthorized(exc.message, headers=_basic_challenge(auth)) from None


async def get_token(request: Request) -> Response:
    auth = auth_services(request)
    params = request.query_params
    principal = await _basic_principal(request, auth)
    _check_service(auth, params.get("service"))
    wanted = _scopes(params.getlist("scope"))
    token, _granted, issued_at, expires_in = await _grant(auth, principal, wanted)
    extra = {}
    if params.get("offline_token", "").lower() == "true" and principal.authenticated:
        extra["refresh_token"] = await auth.accounts.new_refresh_token(
            principal, params.get("client_id")
        )
    return _answer(token, issued_at, expires_in, extra)


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the token request as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InvalidRequest("token request too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("malformed form") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


async def post_token(request: Request) -> Response:
    auth = auth_services(request)
    form = await _form(request)
    address = client_address(request)
    grant_type = form.get("grant_type")
    if grant_type == "password":
        username, password = form.get("username", ""), form.get("password", "")
        if not username:
            raise Unauthorized("username and password are required", headers=_basic_challenge(auth))
        principal = await _login(auth, username, password, address)
    elif grant_type == "refresh_token":
        secret = form.get("refresh_token", "")
        if not secret.startswith(REFRESH_PREFIX):
            raise Unauthorized("invalid or expired refresh token")
        principal = await auth.accounts.refresh_login(secret, address)
    else:
        raise Unsupported(
            "grant_type must be password or refresh_token",
            detail={"grant_type": (grant_type or "")[:50]},
            status=400,
        )
    _check_service(auth, form.get("service"))
    wanted = _scopes([form.get("scope", "")])
    extra: dict[str, Any] = {}
    if grant_type == "password" and form.get("access_type") == "offline":
        extra["refresh_token"] = await auth.accounts.new_refresh_token(
            principal, form.get("client_id")
        )
    token, granted, issued_at, expires_in = await _grant(auth, principal, wanted)
    extra["scope"] = " ".join(str(s) for s in granted)
    return _answer(token, issued_at, expires_in, extra)


async def jwks(request: Request) -> Response:
    auth = auth_services(request)
    return JSONResponse(await auth.keys.jwks(), headers={"Cache-Control": "max-age=60"})
