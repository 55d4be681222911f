"""Failed logins, limited per account and per client address.

The counters live in the metadata database (table `login_failures`), so every worker and
replica sharing it sees the same counts: a limit that one process alone kept would let an
attacker spread guesses across replicas. Each key ("account:<identity>", "address:<ip>")
counts failures in a fixed window; once a key reaches its limit, logins through it get 429
TOOMANYREQUESTS with `Retry-After` until the window ends. The account's identity is
`user:<id>` (or `name:<name>` for a name no user has, so the answer does not tell which names
exist), chosen by `accounts.failure_key`; a login with no account key (a robot's, a refresh
token's) counts against its address only.

The check happens before the (slow) password check. Concurrent attempts may each pass the
check before any of their failures is counted, so a burst can overshoot a limit by the
number of requests in flight; it cannot keep going past it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta

from registry.errors import TooManyRequests
from registry.metadata.identity import IdentityStore, now


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_account: int = 5
    per_address: int = 50
    window_seconds: int = 300


class LoginLimiter:
    def __init__(self, identity: IdentityStore, limits: LoginLimits) -> None:
        self.identity = identity
        self.limits = limits

    def _keys(self, account: str | None, address: str) -> dict[str, int]:
        keys = {}
        if self.limits.per_account > 0 and account is not None:
            keys[f"account:{account[:150]}"] = self.limits.per_account
        if self.limits.per_address > 0 and address:
            keys[f"address:{address}"] = self.limits.per_address
        return keys

    async def check(self, account: str | None, address: str) -> None:
        """Raise TooManyRequests when the account or the address is over its limit."""
        keys = self._keys(account, address)
        if not keys:
            return
        window = timedelta(seconds=self.limits.window_seconds)
        stamp = now()
        wait = 0.0
        for key, (failures, started) in (await self.identity.failures(list(keys))).items():
            remaining = (started + window - stamp).total_seconds()
            if failures >= keys[key] and remaining > 0:
                wait = max(wait, remaining)
        if wait > 0:
            raise TooManyRequests(
                "too many failed logins; try again later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def failed(self, account: str | None, address: str) -> None:
        keys = self._keys(account, address)
        window = timedelta(seconds=self.limits.window_seconds)
        if keys:
            await self.identity.count_failure(list(keys), window)
        if random.random() < 0.01:  # now and then, forget windows long over
            await self.identity.purge_failures(now() - window * 2)

    async def succeeded(self, account: str | None) -> None:
        """A right password clears its account's count (never the address's)."""
        if self.limits.per_account > 0 and account is not None:
            await self.identity.clear_failures(f"account:{account[:150]}")
