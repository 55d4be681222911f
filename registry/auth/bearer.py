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
from collections.abc import Callable
from dataclasses import dataclass

from registry.auth.accounts import Accounts, Principal
from registry.auth.cache import VerifiedCache
from registry.auth.tokens import TokenVerifier, VerifiedToken


class AccountGone(Exception):
    """A valid token whose account has been removed, or has expired."""


@dataclass(frozen=True, slots=True)
class KnownToken:
    verified: VerifiedToken
    principal: Principal
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

    async def authenticate(self, token: str) -> tuple[VerifiedToken, Principal]:
        """The token's claims and its live account; InvalidToken or AccountGone if not."""
        now = self.clock()
        known = self.cache.get(token)
        if known is not None:
            if self.verifier.still_trusted(known.verified):
                if now - known.checked_at < self.recheck:
                    return known.verified, known.principal
                return known.verified, await self._checked(token, known.verified, now)
            self.cache.discard(token)
        verified = await self.verifier.verify(token)
        return verified, await self._checked(token, verified, now)

    async def _checked(self, token: str, verified: VerifiedToken, now: float) -> Principal:
        principal = await self._principal(verified)
        if principal is None:
            self.cache.discard(token)
            raise AccountGone()
        until = verified.expires_at + self.leeway
        if principal.expires_at is not None:
            until = min(until, principal.expires_at.timestamp())
        self.cache.put(KnownToken(verified, principal, now), until, token)
        return principal

    async def _principal(self, verified: VerifiedToken) -> Principal | None:
        if not verified.builtin:
            return Principal("external", verified.subject, issuer=verified.issuer)
        return await self.accounts.principal_for_token(verified.subject, verified.account)

    def forget_all(self) -> None:
        """After a removal through this process: nothing cached outlives it."""
        self.cache.clear()
