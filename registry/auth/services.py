"""Everything auth needs, built once from the configuration (in the app's lifespan).

`build_auth` checks the settings, loads or makes the signing keys (the first start makes
them), loads the trusted issuers' keys, and returns the parts; `TokenAccessController`,
the token endpoint and the admin API all work from one `AuthServices`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from registry.auth.accounts import Accounts
from registry.auth.audit import AuditLog
from registry.auth.bearer import BearerTokens
from registry.auth.keys import SIGNING_ALGORITHMS, KeyFolderError, KeyRing
from registry.auth.ratelimit import LoginLimiter, LoginLimits
from registry.auth.tokens import (
    TokenIssuer,
    TokenVerifier,
    TrustConfigError,
    allowed_algorithms,
    trusted_issuer,
)
from registry.config import AuthConfig, Config, ConfigError
from registry.metadata.db import Database
from registry.metadata.identity import IdentityStore


@dataclass
class AuthServices:
    config: Config
    identity: IdentityStore
    accounts: Accounts
    audit: AuditLog
    keys: KeyRing
    issuer: TokenIssuer
    verifier: TokenVerifier
    bearer: BearerTokens

    @property
    def settings(self) -> AuthConfig:
        return self.config.auth


def keys_folder(config: Config) -> Path:
    return Path(config.auth.keys_dir or Path(config.data_dir) / "auth" / "keys")


def validate(config: Config) -> None:
    """Settings that would make auth unsafe or unusable raise ConfigError."""
    auth = config.auth
    try:
        allowed_algorithms(auth.algorithms)
    except TrustConfigError as exc:
        raise ConfigError(f"auth.algorithms: {exc}") from None
    if auth.signing_algorithm not in SIGNING_ALGORITHMS:
        raise ConfigError(f"auth.signing_algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")
    if auth.signing_algorithm not in auth.algorithms:
        raise ConfigError("auth.algorithms must include auth.signing_algorithm")
    if auth.token_ttl_seconds < 1 or auth.token_ttl_seconds > 86400:
        raise ConfigError("auth.token_ttl_seconds must be between 1 and 86400")
    if auth.leeway_seconds < 0 or auth.leeway_seconds > 300:
        raise ConfigError("auth.leeway_seconds must be between 0 and 300")
    if auth.token_cache_size < 0 or auth.token_cache_size > 1_000_000:
        raise ConfigError("auth.token_cache_size must be between 0 and 1000000")
    if auth.revocation_delay_seconds < 0 or auth.revocation_delay_seconds > 3600:
        raise ConfigError("auth.revocation_delay_seconds must be between 0 and 3600")
    if not auth.service or not auth.issuer:
        raise ConfigError("auth.service and auth.issuer must not be empty")
    for value in (auth.service, auth.realm):
        if '"' in value or "\\" in value:
            raise ConfigError("auth.service and auth.realm must not contain quotes")


def build_auth(config: Config, db: Database) -> AuthServices:
    validate(config)
    auth = config.auth
    identity = IdentityStore(db)
    audit = AuditLog(identity)
    limiter = LoginLimiter(
        identity,
        LoginLimits(
            auth.login_failures_per_account,
            auth.login_failures_per_address,
            auth.login_failure_window_seconds,
        ),
    )
    try:
        keys = KeyRing(
            keys_folder(config),
            auth.signing_algorithm,
            rotation_seconds=auth.key_rotation_seconds,
            overlap_seconds=auth.token_ttl_seconds + auth.leeway_seconds,
        )
        keys.ensure()
    except (KeyFolderError, OSError) as exc:
        raise ConfigError(f"signing keys in {keys_folder(config)}: {exc}") from None
    try:
        trusted = [trusted_issuer(entry, auth.service) for entry in auth.trusted_issuers]
        verifier = TokenVerifier(
            keys, auth.issuer, auth.service, auth.algorithms, auth.leeway_seconds, trusted
        )
    except TrustConfigError as exc:
        raise ConfigError(f"auth: {exc}") from None
    accounts = Accounts(identity, limiter, audit, auth.refresh_token_ttl_seconds)
    return AuthServices(
        config=config,
        identity=identity,
        accounts=accounts,
        audit=audit,
        keys=keys,
        issuer=TokenIssuer(keys, auth.issuer, auth.service, auth.token_ttl_seconds),
        verifier=verifier,
        bearer=BearerTokens(
            verifier,
            accounts,
            auth.token_cache_size,
            auth.revocation_delay_seconds,
            auth.leeway_seconds,
        ),
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_address(config: Config) -> None:
    """Refuse to serve without auth on anything but a loopback address, unless told to."""
    host, _port = config.host_port
    if config.auth.enabled or config.auth.insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host} without authentication: set auth.enabled "
        "(REGISTRY_AUTH_ENABLED=true), or auth.insecure to run an open registry anyway"
    )


def preflight(config: Config) -> None:
    """Before serving: refuse unsafe addresses and bad auth settings with a ConfigError, and
    make the signing keys, so a mistake stops `registry serve` with a clear message."""
    check_listen_address(config)
    if not config.auth.enabled:
        return
    validate(config)
    try:
        KeyRing(
            keys_folder(config),
            config.auth.signing_algorithm,
            rotation_seconds=config.auth.key_rotation_seconds,
            overlap_seconds=config.auth.token_ttl_seconds + config.auth.leeway_seconds,
        ).ensure()
        for entry in config.auth.trusted_issuers:
            trusted_issuer(entry, config.auth.service)
    except (KeyFolderError, OSError) as exc:
        raise ConfigError(f"signing keys in {keys_folder(config)}: {exc}") from None
    except TrustConfigError as exc:
        raise ConfigError(f"auth: {exc}") from None
