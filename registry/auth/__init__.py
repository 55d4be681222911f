"""Access control: the one seam every request passes through.

An `AccessController` answers a single question: may this request perform these actions on
this resource? Handlers state what they need with `require`; they never look at credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request


@dataclass(frozen=True, slots=True)
class Access:
    """One resource and the actions wanted on it, as Docker's token scopes name them."""

    type: str  # "repository" or "registry"
    name: str  # a repository name, or "catalog"
    actions: tuple[str, ...]

    @property
    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def actions_for_method(method: str) -> tuple[str, ...]:
    """Docker's mapping of HTTP methods to repository actions."""
    if method in ("GET", "HEAD"):
        return ("pull",)
    if method in ("POST", "PUT", "PATCH"):
        return ("pull", "push")
    if method == "DELETE":
        return ("delete",)
    return ("*",)


class AccessController(Protocol):
    async def authorize(self, request: Request, wanted: list[Access]) -> None:
        """Return when every access is allowed; raise Unauthorized or Denied otherwise."""
        ...

    async def can(self, request: Request, access: Access) -> bool:
        """Whether one access is allowed, without raising (to filter what a request sees)."""
        ...

    async def pullable(self, request: Request, names: Sequence[str]) -> list[str]:
        """Which of these repositories the caller may pull (the catalog shows only those)."""
        ...

    async def ask_for_wider_token(self, request: Request, wanted: list[Access]) -> None:
        """Raise Unauthorized, with a challenge naming every access in `wanted`, when the
        caller's token lacks one that its account may have (the client then fetches a wider
        token and retries); return when a new token would not help."""
        ...


class AllowAll:
    """No authentication: only for a registry on a loopback address."""

    async def authorize(self, request: Request, wanted: list[Access]) -> None:
        return None

    async def can(self, request: Request, access: Access) -> bool:
        return True

    async def pullable(self, request: Request, names: Sequence[str]) -> list[str]:
        return list(names)

    async def ask_for_wider_token(self, request: Request, wanted: list[Access]) -> None:
        return None
