"""Everything auth needs, built once from the configuration (in the app's lifespan).

`build_auth` checks the settings, loads the trusted issuers' keys, and returns the parts;
`TokenAccessController`, the token endpoint and the admin API all work from one
`AuthServices`. The signing keys are read (or made, on the very first start) by
`prepare_keys` before `registry serve` starts its workers, then by each worker's lifespan.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from registry.auth.accounts import Accounts
from registry.auth.audit import AuditLog
from registry.auth.bearer import BearerTokens
from registry.auth.key_stores import KEYS_STORES, MIN_SECRET_LENGTH, DatabaseKeys, FolderKeys
from registry.auth.keys import SIGNING_ALGORITHMS, KeyRing, KeyStore, KeyStoreError
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


def key_ring(config: Config, db: Database | None) -> KeyRing:
    """The signing keys of `auth.keys_store`, not read yet (`ensure` reads or makes them);
    `db` is needed by the database store only."""
    auth = config.auth
    store: KeyStore
    if auth.keys_store == "database":
        if db is None:
            raise ValueError("the database key store needs the database")
        store = DatabaseKeys(db, auth.keys_secret)
    else:
        store = FolderKeys(keys_folder(config))
    return KeyRing(
        store,
        auth.signing_algorithm,
        rotation_seconds=auth.key_rotation_seconds,
        overlap_seconds=auth.token_ttl_seconds + auth.leeway_seconds,
    )


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
    if auth.keys_store not in KEYS_STORES:
        raise ConfigError(f"auth.keys_store must be folder or database, got {auth.keys_store!r}")
    if auth.keys_store == "database" and len(auth.keys_secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"auth.keys_store database needs auth.keys_secret of at least {MIN_SECRET_LENGTH} "
            "characters, the same on every replica (REGISTRY_AUTH_KEYS_SECRET, or "
            "REGISTRY_AUTH_KEYS_SECRET_FILE naming a file; make one with "
            "`openssl rand -base64 32`)"
        )
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
    keys = key_ring(config, db)
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
    """Before serving: refuse unsafe addresses and bad auth settings with a ConfigError, so
    a mistake stops `registry serve` with a clear message (the keys: `prepare_keys`)."""
    check_listen_address(config)
    if not config.auth.enabled:
        return
    validate(config)
    try:
        for entry in config.auth.trusted_issuers:
            trusted_issuer(entry, config.auth.service)
    except TrustConfigError as exc:
        raise ConfigError(f"auth: {exc}") from None


LOCKED_RETRIES = 5  # a SQLite database locked while the keys are read or made


def prepare_keys(config: Config) -> None:
    """Before serving, once the schema is current: read the signing keys, or make the first
    one; keys that cannot be used (a folder we may not write, a database whose keys do not
    decrypt with `auth.keys_secret`) stop `registry serve` with a ConfigError."""
    if config.auth.enabled:
        asyncio.run(ensure_keys(config))


async def ensure_keys(config: Config) -> None:
    """Read the signing keys of these settings (make one if none); errors as ConfigError."""
    shared = config.auth.keys_store == "database"
    db = Database(config.database_url, pool_size=1) if shared else None
    where = "the database" if shared else str(keys_folder(config))
    try:
        for attempt in range(LOCKED_RETRIES + 1):
            try:
                await key_ring(config, db).ensure()
                break
            except OperationalError as exc:
                # SQLite answers "database is locked" at once, busy timeout or not, in a few
                # cases (a snapshot gone stale under replicas starting at the same moment).
                if "database is locked" not in str(exc) or attempt == LOCKED_RETRIES:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
    except (KeyStoreError, OSError) as exc:
        raise ConfigError(f"signing keys in {where}: {exc}") from None
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"signing keys in the database: {exc.__class__.__name__}: {exc} (is the schema "
            "current? `registry migrate`)"
        ) from None
    finally:
        if db is not None:
            await db.dispose()
