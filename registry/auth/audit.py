"""The audit log: who logged in, pushed, deleted or was denied, when, from where, and what.

Logins, failed logins and denials are recorded where they are decided (accounts, access
controller); pushes and deletes by `AuditTrail`, an ASGI wrapper that sees the status each
manifest or blob request ended with, so only what really happened is written. A failure to
write the log is logged and does not fail the request: the registry change it describes
has already been made.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.metadata.identity import IdentityStore

log = logging.getLogger("registry.audit")

# Set in the ASGI scope by the access controller, an `Actor`, where the trail asks for one
# (by setting it to None): only requests that may change something are recorded.
ACTOR_KEY = "registry.auth.actor"
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)\Z")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<reference>[^/]+)\Z")


class AuditLog:
    def __init__(self, identity: IdentityStore) -> None:
        self.identity = identity

    async def record(
        self,
        actor: str,
        address: str,
        action: str,
        target: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        try:
            await self.identity.audit(actor, address, action, target, detail)
        except SQLAlchemyError as exc:
            log.error("could not write the audit log (%s %s %s): %s", actor, action, target, exc)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is making a request, and the log to write what they change to."""

    name: str
    address: str
    log: AuditLog


def changed_resource(method: str, path: str, status: int) -> tuple[str, str] | None:
    """("push" | "delete", "<name>:<tag>" or "<name>@<digest>") for a successful change."""
    manifest = _MANIFEST.fullmatch(path)
    if manifest:
        ref = manifest["reference"]
        target = f"{manifest['name']}{'@' if ':' in ref else ':'}{ref}"
        if method == "PUT" and status == 201:
            return "push", target
        if method == "DELETE" and status == 202:
            return "delete", target
    blob = _BLOB.fullmatch(path)
    if blob and method == "DELETE" and status == 202:
        return "delete", f"{blob['name']}@{blob['reference']}"
    return None


class AuditTrail:
    """Records manifest pushes and deletes, after the answer, with the caller who made them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("PUT", "DELETE"):
            await self.app(scope, receive, send)
            return
        status = 0
        scope[ACTOR_KEY] = None  # asks the access controller to name the caller here

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watching_send)
        change = changed_resource(scope["method"], scope["path"], status)
        actor = scope.get(ACTOR_KEY)
        if change is not None and isinstance(actor, Actor):
            await actor.log.record(actor.name, actor.address, *change)
