"""What auth adds to the app when `auth.enabled`: routes, the controller, the audit trail.

GET, POST  /auth/token     the token endpoint (token_endpoint.py)
GET        /auth/jwks      our public signing keys
...        /auth/admin/    the admin API (admin_api.py)
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from registry.auth import AccessController, admin_api, token_endpoint
from registry.auth.audit import AuditTrail
from registry.auth.controller import TokenAccessController
from registry.auth.keys import KeyRing
from registry.auth.services import build_auth
from registry.config import Config
from registry.metadata.db import Database

ROUTES: list[BaseRoute] = [
    Route("/auth/token", token_endpoint.get_token, methods=["GET"]),
    Route("/auth/token", token_endpoint.post_token, methods=["POST"]),
    Route("/auth/jwks", token_endpoint.jwks, methods=["GET"]),
    *admin_api.ROUTES,
]


def auth_routes(config: Config) -> list[BaseRoute]:
    return ROUTES if config.auth.enabled else []


def access_controller(config: Config, db: Database) -> TokenAccessController | None:
    """The token access controller when auth is on (its keys are read in the lifespan)."""
    return TokenAccessController(build_auth(config, db)) if config.auth.enabled else None


def signing_keys(access: AccessController) -> KeyRing | None:
    """The signing keys of token auth (each worker reads them at start, then keeps them
    fresh in the background); None without token auth."""
    return access.auth.keys if isinstance(access, TokenAccessController) else None


def with_audit_trail(config: Config, app: ASGIApp) -> ASGIApp:
    return AuditTrail(app) if config.auth.enabled else app
