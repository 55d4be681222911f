"""The access controller for token auth, with Basic credentials accepted on /v2/ as well.

    no credentials             401 UNAUTHORIZED, challenge `Bearer realm,service,scope`
    a bad or expired token     401, challenge with error="invalid_token"
    a token lacking an action  401 with error="insufficient_scope" in the challenge when a
                               new token could carry it (the client asks again, as Docker's
                               flow has it); 403 DENIED, with the same challenge, when the
                               account may not do it at all, so a retry cannot help
    Basic, wrong password      401; too many failures: 429 TOOMANYREQUESTS with Retry-After
    Basic, lacking an action   403 DENIED
    anything malformed         401 with error="invalid_request"

Anonymous tokens lacking an action always get 401: logging in may help. For an external
issuer's token we cannot tell what it would grant, so it gets 401 too.

A token signed by us names its account by id and stops working once that account is
removed (see `bearer`: at once through this process, within `auth.revocation_delay_seconds`
otherwise); one from a trusted external issuer is good for what its `access` claim says
until it expires, and acts under `external:<issuer>:<sub>`, never as one of our accounts.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from starlette.requests import Request

from registry.auth import Access
from registry.auth.audit import ACTOR_KEY, Actor
from registry.auth.bearer import NO_CREDENTIALS, AccountGone, AuthContext
from registry.auth.permissions import pattern_matches
from registry.auth.scopes import Scope, covers
from registry.auth.services import AuthServices
from registry.auth.tokens import InvalidToken
from registry.errors import Denied, RegistryError, Unauthorized
from registry.oci.names import is_repository_name

CONTEXT_KEY = "registry.auth.context"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?\Z|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")
MAX_HEADER = 16 * 1024 + 16


def parse_basic(value: str) -> tuple[str, str] | None:
    """`user:password` from the base64 of a Basic Authorization header; None if malformed."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        return None
    return username, password


def mount_source(request: Request, scopes: list[Scope]) -> list[Scope]:
    """Pull on the `from` repository of a cross-repository mount, for the challenge.

    As in Distribution, a client that answers the challenge then holds a token the mount
    can use. A token lacking it gets a challenge naming both when its account may pull the
    source (`ask_for_wider_token`), an ordinary upload session when it may not.
    """
    if request.method != "POST" or not request.url.path.rstrip("/").endswith("/blobs/uploads"):
        return []
    source = request.query_params.get("from")
    if "mount" not in request.query_params or not source or not is_repository_name(source):
        return []
    wanted = Scope("repository", source, ("pull",))
    return [] if covers(scopes, wanted) or not scopes else [wanted]


Resource = Access | Scope  # the same three fields: type, name, actions


def as_scopes(wanted: Sequence[Resource]) -> list[Scope]:
    return [Scope(w.type, w.name, w.actions) for w in wanted]


def authorization_header(request: Request) -> str | None:
    """The first Authorization header, read from the raw ASGI list: this runs on every
    request, and building Starlette's Headers for one lookup costs more than the scan."""
    for key, value in request.scope["headers"]:
        if key == b"authorization":
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


class TokenAccessController:
    def __init__(self, auth: AuthServices) -> None:
        self.auth = auth
        self.config = auth.config
        self.accounts = auth.accounts
        self.verifier = auth.verifier
        self.audit = auth.audit

    # -- the AccessController protocol ------------------------------------------------------

    async def authorize(self, request: Request, wanted: list[Access]) -> None:
        context = await self.context(request, wanted)
        if not context.credentials:
            raise Unauthorized(headers=self.challenge(request, wanted))
        if context.permits(wanted):  # every request with credentials: no more work than this
            return
        scopes = as_scopes(wanted)
        missing = [scope for scope in scopes if not context.allows(scope)]
        await self.audit.record(
            context.principal.subject,
            client_address(request),
            "denied",
            " ".join(str(s) for s in missing),
            {"method": request.method, "path": request.url.path[:300]},
        )
        detail = [s.claim() for s in missing]
        if context.token is None:
            raise Denied(detail=detail)
        headers = self.challenge(request, scopes, error="insufficient_scope")
        if await self._retry_may_help(context, missing):
            raise Unauthorized(
                "insufficient scope: ask for a token with this access",
                detail=detail,
                headers=headers,
            )
        raise Denied(detail=detail, headers=headers)

    async def _retry_may_help(self, context: AuthContext, missing: list[Scope]) -> bool:
        """Whether a new token could carry what this one lacks (see the module docstring)."""
        if not context.principal.authenticated or context.token is None:
            return True
        if not context.token.builtin:
            return True
        rights = await self.accounts.permissions(context.principal)
        return all(covers(rights.grant([scope]), scope) for scope in missing)

    async def ask_for_wider_token(self, request: Request, wanted: list[Access]) -> None:
        """401 when one of our tokens lacks an access its account has (see the protocol).

        Basic credentials carry the account's rights already, and what an external issuer
        would grant we cannot tell: for those, and when the account may not, return.
        """
        scopes = [Scope(a.type, a.name, a.actions) for a in wanted]
        try:
            context = await self.context(request, scopes)
        except RegistryError:
            return
        if context.token is None or not context.token.builtin:
            return
        missing = [scope for scope in scopes if not context.allows(scope)]
        if not missing or not await self._retry_may_help(context, missing):
            return
        raise Unauthorized(
            "insufficient scope: ask for a token with this access",
            detail=[s.claim() for s in missing],
            headers=self.challenge(request, scopes, error="insufficient_scope"),
        )

    async def can(self, request: Request, access: Access) -> bool:
        try:
            context = await self.context(request, [])
        except RegistryError:
            return False
        return context.allows(Scope(access.type, access.name, access.actions))

    async def pullable(self, request: Request, names: Sequence[str]) -> list[str]:
        """Which of `names` the caller may pull (to filter the catalog; mounts need more:
        pull in the token itself, see `can`).

        For our own tokens and for Basic credentials this is what the account may pull
        now, as a new token would carry; for an external token, what its claims list.
        """
        try:
            context = await self.context(request, [])
        except RegistryError:
            return []
        if not context.credentials:
            return []
        rights = context.permissions
        if context.token is not None and context.token.builtin:
            rights = await self.accounts.permissions(context.principal)
        if rights is not None:
            return [name for name in names if "pull" in rights.actions_on(name)]
        public = await self.accounts.identity.public_patterns()
        return [
            name
            for name in names
            if context.allows(Scope("repository", name, ("pull",)))
            or any(pattern_matches(p, name) for p in public)
        ]

    # -- authentication --------------------------------------------------------------------

    async def context(self, request: Request, scopes: Sequence[Resource]) -> AuthContext:
        """Authenticate the request once; later calls in the same request reuse the answer."""
        cached = request.scope.get(CONTEXT_KEY)
        if isinstance(cached, AuthContext):
            return cached
        if isinstance(cached, RegistryError):
            raise cached
        try:
            context = await self._authenticate(request, scopes)
        except RegistryError as exc:  # kept, so a second look does not count a second failure
            request.scope[CONTEXT_KEY] = exc
            raise
        request.scope[CONTEXT_KEY] = context
        if context.credentials and ACTOR_KEY in request.scope:  # the audit trail wants one
            request.scope[ACTOR_KEY] = Actor(
                context.principal.subject, client_address(request), self.audit
            )
        return context

    async def _authenticate(self, request: Request, scopes: Sequence[Resource]) -> AuthContext:
        header = authorization_header(request)
        if header is None:
            return NO_CREDENTIALS
        if len(header) > MAX_HEADER:
            raise self._malformed(request, scopes, "Authorization header too long")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return await self._bearer(request, scopes, value)
        if scheme.lower() == "basic" and value and self.config.auth.basic_auth:
            username, password = self._basic(request, scopes, value)
            principal = await self.accounts.login(
                username, password, client_address(request), record=False
            )
            return AuthContext(principal, permissions=await self.accounts.permissions(principal))
        raise self._malformed(request, scopes, "unsupported or malformed Authorization header")

    async def _bearer(
        self, request: Request, scopes: Sequence[Resource], token: str
    ) -> AuthContext:
        try:
            return await self.auth.bearer.authenticate(token)
        except InvalidToken as exc:
            raise Unauthorized(
                f"invalid token: {exc}",
                headers=self.challenge(request, scopes, error="invalid_token", why=str(exc)),
            ) from None
        except AccountGone:
            raise Unauthorized(
                "invalid token: its account no longer exists",
                headers=self.challenge(request, scopes, error="invalid_token"),
            ) from None

    def _basic(self, request: Request, scopes: Sequence[Resource], value: str) -> tuple[str, str]:
        credentials = parse_basic(value)
        if credentials is None:
            raise self._malformed(request, scopes, "malformed Basic credentials")
        return credentials

    def _malformed(self, request: Request, scopes: Sequence[Resource], why: str) -> Unauthorized:
        return Unauthorized(
            why, headers=self.challenge(request, scopes, error="invalid_request", why=why)
        )

    # -- the challenge ---------------------------------------------------------------------

    def realm(self, request: Request) -> str:
        if self.config.auth.realm:
            return self.config.auth.realm
        if self.config.server.public_url:
            return self.config.server.public_url.rstrip("/") + "/auth/token"
        host = request.headers.get("host", "")
        if not _HOST.fullmatch(host):
            host = self.config.server.addr
        return f"{request.url.scheme}://{host}/auth/token"

    def challenge(
        self,
        request: Request,
        wanted: Sequence[Resource],
        error: str | None = None,
        why: str | None = None,
    ) -> dict[str, str]:
        parts = [f'realm="{self.realm(request)}"', f'service="{self.config.auth.service}"']
        scopes = as_scopes(wanted)
        scopes = [*scopes, *mount_source(request, scopes)]
        if scopes:
            parts.append(f'scope="{" ".join(str(s) for s in scopes)}"')
        if error:
            parts.append(f'error="{error}"')
        if why:
            parts.append(f'error_description="{why.replace(chr(34), chr(39))}"')
        return {"WWW-Authenticate": "Bearer " + ",".join(parts)}
