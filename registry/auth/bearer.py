"""Bearer tokens on the hot path: each token's signature is checked once, then it is trusted
from a bounded cache until it expires.

Verifying an ES256 signature and looking the account up cost more than serving a small blob,
and a client sends the same token with every request of a pull. So a verified token is kept
(`VerifiedCache`, keyed by an HMAC of the token) with the account it names, until its `exp`
(plus the clock-skew leeway, as an uncached check allows) or its robot's expiry. It is
dropped sooner when:

- its signing key no longer verifies (rotated out, or gone from a trusted issuer's JWKS),
  checked on every use, as an uncached check would;
- its account or robot is removed: removals through this process's admin API empty the cache
  at once; removals elsewhere (the CLI, another worker, another replica) are seen through
  the database, where the account is looked up again once `auth.revocation_delay_seconds`
  have passed since the last look (10 s by default; 0: on every request).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from registry.auth import Access
from registry.auth.accounts import ANONYMOUS, Accounts, Principal
from registry.auth.cache import VerifiedCache
from registry.auth.permissions import Permissions
from registry.auth.scopes import Scope, covers
from registry.auth.tokens import TokenVerifier, VerifiedToken


class AccountGone(Exception):
    """A valid token whose account has been removed, or has expired."""


@dataclass(frozen=True, slots=True)
class AuthContext:
    """What one request authenticated as: a token, or Basic credentials and their rights.
    A token's is kept in the cache and shared by every request that presents the token."""

    principal: Principal
    token: VerifiedToken | None = None
    permissions: Permissions | None = None
    credentials: bool = True  # False: the request carried none

    def allows(self, wanted: Scope) -> bool:
        if self.token is not None:
            return self.token.permits(wanted.type, wanted.name, wanted.actions)
        if self.permissions is not None:
            return covers(self.permissions.grant([wanted]), wanted)
        return False

    def permits(self, wanted: Iterable[Access]) -> bool:
        """Whether every access is allowed (`allows` for each, without making Scopes)."""
        if self.token is not None:
            return all(self.token.permits(a.type, a.name, a.actions) for a in wanted)
        return all(self.allows(Scope(a.type, a.name, a.actions)) for a in wanted)


NO_CREDENTIALS = AuthContext(ANONYMOUS, credentials=False)


@dataclass(frozen=True, slots=True)
class KnownToken:
    context: AuthContext  # with the token's claims and its account
    verified: VerifiedToken
    checked_at: float  # when the account was last found live


class BearerTokens:
    def __init__(
        self,
        verifier: TokenVerifier,
        accounts: Accounts,
        size: int,
        recheck_seconds: float,
        leeway_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier, self.accounts = verifier, accounts
        self.recheck, self.leeway, self.clock = recheck_seconds, leeway_seconds, clock
        self.cache: VerifiedCache[KnownToken] = VerifiedCache(size, clock)

    async def authenticate(self, token: str) -> AuthContext:
        """The token's claims and its live account; InvalidToken or AccountGone if not."""
        now = self.clock()
        known = self.cache.get(token)
        if known is not None:
            if self.verifier.still_trusted(known.verified):
                if now - known.checked_at < self.recheck:
                    return known.context
                return await self._checked(token, known.verified, now)
            self.cache.discard(token)
        verified = await self.verifier.verify(token)
        return await self._checked(token, verified, now)

    async def _checked(self, token: str, verified: VerifiedToken, now: float) -> AuthContext:
        principal = await self._principal(verified)
        if principal is None:
            self.cache.discard(token)
            raise AccountGone()
        until = verified.expires_at + self.leeway
        if principal.expires_at is not None:
            until = min(until, principal.expires_at.timestamp())
        context = AuthContext(principal, token=verified)
        self.cache.put(KnownToken(context, verified, now), until, token)
        return context

    async def _principal(self, verified: VerifiedToken) -> Principal | None:
        if not verified.builtin:
            return Principal("external", verified.subject, issuer=verified.issuer)
        return await self.accounts.principal_for_token(verified.subject, verified.account)

    def forget_all(self) -> None:
        """After a removal through this process: nothing cached outlives it."""
        self.cache.clear()
