"""Settings: defaults, then the YAML file, then `REGISTRY_*` environment variables, then flags.

Every key is `section.key` in YAML and `REGISTRY_SECTION_KEY` in the environment
(`server.addr` is `REGISTRY_SERVER_ADDR`), or `REGISTRY_SECTION_KEY_FILE` naming a file that
holds the value (a mounted secret). `config.example.yaml` documents each one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting that is missing, unknown or of the wrong type."""


# TLS on the server's own listener (registry/tls.py), `server.tls.*`.
@dataclass
class TlsConfig:
    certificate: str = ""  # PEM: the server's certificate, then its chain; empty: plain HTTP
    key: str = ""  # PEM: its private key
    client_ca: str = ""  # PEM: CA(s) whose client certificates are required; empty: none


@dataclass
class ServerConfig:
    addr: str = "127.0.0.1:5000"
    public_url: str = ""  # absolute URL clients reach us at; empty: relative Locations
    workers: str = "auto"  # worker processes: "auto" (one per core) or a number
    log_level: str = "info"
    access_log: bool = False
    # What one connection may hold of a worker (registry/http_limits.py); timeouts in seconds.
    max_header_bytes: int = 64 * 1024  # request line and headers together; beyond: 431
    max_url_bytes: int = 8 * 1024  # beyond: 414
    max_headers: int = 100  # beyond: 431
    header_timeout: int = 30  # for a request's line and headers to arrive in full
    body_idle_timeout: int = 60  # longest pause within a request body
    keep_alive_timeout: int = 5  # an idle connection between requests
    max_connections: int = 1024  # per worker; beyond: 503
    # Operations (registry/health.py, metrics.py, observe.py, lifecycle.py).
    log_format: str = "text"  # text, or json: one JSON object per line
    metrics_addr: str = ""  # HOST:PORT serving /metrics alone; empty: /metrics on `addr`
    ready_timeout: int = 2  # seconds the database and the storage each have to answer /readyz
    shutdown_delay: int = 0  # seconds between readiness turning false and the listener closing
    shutdown_timeout: int = 30  # seconds requests in flight may take to finish at shutdown
    tls: TlsConfig = field(default_factory=TlsConfig)


# The S3 driver's settings (`storage.s3.*`, REGISTRY_STORAGE_S3_*), used with driver "s3".
@dataclass
class S3Config:
    bucket: str = ""
    prefix: str = ""  # keys go under this folder of the bucket; empty: the bucket's root
    region: str = ""  # empty: boto3's default (AWS_REGION, ~/.aws/config), else us-east-1
    endpoint_url: str = ""  # MinIO, Ceph, SeaweedFS...; empty: AWS
    access_key: str = ""  # empty: boto3's default chain (environment, profile, instance role)
    secret_key: str = ""
    addressing: str = "auto"  # auto, path or virtual
    part_size: int = 8 * 1024 * 1024  # multipart part size (at least 5 MiB)
    encryption: str = ""  # server-side encryption: "", AES256 (SSE-S3) or aws:kms (SSE-KMS)
    kms_key_id: str = ""  # SSE-KMS key; empty: the account's default key
    redirect: bool = False  # answer blob GETs with a 307 to a presigned URL
    redirect_seconds: int = 600  # lifetime of a presigned URL
    max_concurrency: int = 32  # threads (and connections) talking to S3 at once, per worker
    # A chunked push's bytes stay where they were written (the blob row names the key); off:
    # copied to the digest's key, as releases before 0009 did (for a rolling upgrade).
    chunked_in_place: bool = True


STORAGE_DRIVERS = ("filesystem", "s3")


@dataclass
class StorageConfig:
    driver: str = "filesystem"  # filesystem or s3
    root: str = ""  # filesystem driver: where blobs live; empty: <data_dir>/storage
    delete_enabled: bool = True
    fsync: bool = True  # flush a blob's bytes to disk before it becomes visible
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class DatabaseConfig:
    url: str = ""  # SQLAlchemy async URL; empty: SQLite in <data_dir>/registry.db
    password: str = ""  # put into `url` when it has none (REGISTRY_DATABASE_PASSWORD_FILE)
    pool_size: int = 10
    auto_migrate: bool = True


@dataclass
class LimitsConfig:
    max_manifest_bytes: int = 4 * 1024 * 1024
    upload_buffer_bytes: int = 4 * 1024 * 1024
    upload_memory_bytes: int = 16 * 1024 * 1024
    upload_expiry_seconds: int = 24 * 3600
    page_size_max: int = 10_000


# Garbage collection (registry/gc/).
@dataclass
class GCConfig:
    enabled: bool = True  # collect in the background, every interval_seconds
    interval_seconds: int = 3600
    # A blob unreferenced for this long goes. A day outlasts any push between a blob's upload
    # and the manifest naming it, and matches limits.upload_expiry_seconds.
    blob_grace_seconds: int = 86400
    untagged_manifests: bool = False  # also collect manifests no tag reaches
    manifest_grace_seconds: int = 86400
    batch_size: int = 100  # review entries per transaction
    # One background run at a time over all replicas and workers (the first to offer within
    # the interval); off: each collects on its own timer, all at once.
    exclusive: bool = True


# Lifecycle policies (registry/policies/): defaults under the ones kept in the database.
@dataclass
class PoliciesConfig:
    # [{pattern, keep_last, keep_tags, keep_pulled_within, keep_pushed_within, untagged_after}]
    retention: list[dict[str, Any]] = field(default_factory=list)
    immutable_tags: list[dict[str, Any]] = field(default_factory=list)  # [{pattern, tags}]
    default_quota: str = ""  # every namespace without a quota of its own: "10GiB"; "": none
    pull_stats_flush_seconds: int = 10  # how often each process writes its pull counts


# Authentication (registry/auth/). Off by default, which is allowed only on a loopback address.
@dataclass
class AuthConfig:
    enabled: bool = False
    insecure: bool = False  # allow a non-loopback address without auth
    realm: str = ""  # token endpoint URL in challenges; empty: <public_url or Host>/auth/token
    service: str = "pocket-registry"  # the `service` of challenges, and the tokens' audience
    issuer: str = "pocket-registry"  # `iss` of the tokens we sign
    keys_store: str = "folder"  # signing keys: "folder" (keys_dir) or "database" (shared)
    keys_dir: str = ""  # signing keys; empty: <data_dir>/auth/keys
    keys_secret: str = ""  # keys_store database: seals the keys (REGISTRY_AUTH_KEYS_SECRET_FILE)
    signing_algorithm: str = "ES256"  # ES256 or RS256
    algorithms: list[str] = field(default_factory=lambda: ["ES256", "RS256"])  # accepted
    token_ttl_seconds: int = 300
    refresh_token_ttl_seconds: int = 90 * 86400
    key_rotation_seconds: int = 30 * 86400  # 0: never rotate
    leeway_seconds: int = 30
    basic_auth: bool = True  # accept Basic credentials directly on /v2/
    trusted_issuers: list[dict[str, Any]] = field(default_factory=list)
    login_failures_per_account: int = 5
    login_failures_per_address: int = 50
    login_failure_window_seconds: int = 300
    token_cache_size: int = 10000  # verified bearer tokens kept per process; 0: none
    revocation_delay_seconds: int = 10  # a cached token's account is looked up this often


@dataclass
class Config:
    data_dir: str = "./data"
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root or Path(self.data_dir) / "storage")

    @property
    def database_url(self) -> str:
        if self.database.url:
            if self.database.password:
                from sqlalchemy.engine import make_url

                url = make_url(self.database.url)
                if url.password is None:
                    return url.set(password=self.database.password).render_as_string(False)
            return self.database.url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'registry.db'}"

    def check(self) -> None:
        """Refuse settings that cannot work together, before anything starts."""
        if self.storage.driver not in STORAGE_DRIVERS:
            raise ConfigError(
                f"storage.driver {self.storage.driver!r} is not one this registry knows: "
                f"use one of {', '.join(STORAGE_DRIVERS)}"
            )
        s3 = self.storage.s3
        if self.storage.driver == "s3":
            if not s3.bucket:
                raise ConfigError("storage.driver s3 needs storage.s3.bucket")
            if bool(s3.access_key) != bool(s3.secret_key):
                raise ConfigError("storage.s3.access_key and secret_key go together")
        if s3.addressing not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"storage.s3.addressing must be auto, path or virtual: {s3.addressing!r}"
            )
        if s3.part_size < 5 * 1024 * 1024 or s3.part_size > 5 * 1024**3:
            raise ConfigError("storage.s3.part_size must be between 5 MiB and 5 GiB")
        if s3.encryption not in ("", "AES256", "aws:kms"):
            raise ConfigError(
                f"storage.s3.encryption must be empty, AES256 or aws:kms: {s3.encryption!r}"
            )
        if s3.kms_key_id and s3.encryption != "aws:kms":
            raise ConfigError("storage.s3.kms_key_id needs storage.s3.encryption: aws:kms")
        if not 1 <= s3.redirect_seconds <= 7 * 86400:
            raise ConfigError("storage.s3.redirect_seconds must be between 1 and 604800")
        if s3.max_concurrency < 1:
            raise ConfigError("storage.s3.max_concurrency must be at least 1")
        if s3.prefix.startswith("/") or ".." in s3.prefix.split("/"):
            raise ConfigError(f"storage.s3.prefix must be a relative folder: {s3.prefix!r}")
        limits = self.limits
        if not 64 * 1024 <= limits.upload_buffer_bytes <= limits.upload_memory_bytes:
            raise ConfigError(
                "limits.upload_buffer_bytes must be at least 65536 and at most "
                "limits.upload_memory_bytes"
            )

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.server.addr.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"server.addr must be HOST:PORT, got {self.server.addr!r}")
        return host.strip("[]"), int(port)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from a YAML file, the environment and explicit overrides, in that order."""
    config = Config()
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _apply_mapping(config, doc, str(path))
    for dotted, raw in _environment_settings(environ if environ is not None else os.environ):
        _set(config, dotted, raw, from_text=True)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(config, dotted, value)
    worker_count(config.server.workers)  # a bad value is an error now, not at start
    return config


def _apply_mapping(config: Config, doc: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in doc.items():
        if isinstance(value, dict):
            _apply_mapping(config, value, where, f"{prefix}{key}.")
        else:
            _set(config, f"{prefix}{key}", value)


def environment_name(dotted: str) -> str:
    """The environment variable for a setting: `storage.fsync` -> `REGISTRY_STORAGE_FSYNC`."""
    return f"REGISTRY_{dotted.replace('.', '_').upper()}"


FILE_SUFFIX = "_FILE"
MAX_SETTING_FILE_BYTES = 64 * 1024


def _environment_settings(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The settings the environment gives: `REGISTRY_X=value`, or `REGISTRY_X_FILE=path` for
    a value kept in a file (a mounted secret; one trailing newline is dropped)."""
    names = {environment_name(d): d for d in all_keys()}
    found = [(names[k], v) for k, v in environ.items() if k in names]
    for key, path in environ.items():
        base = key[: -len(FILE_SUFFIX)]
        if not key.endswith(FILE_SUFFIX) or base not in names or key in names:
            continue
        if base in environ:
            raise ConfigError(f"{base} and {key} are both set: give one")
        found.append((names[base], _read_setting_file(key, path)))
    return found


def _read_setting_file(variable: str, path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SETTING_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SETTING_FILE_BYTES:
        raise ConfigError(f"{variable}: {path} is larger than {MAX_SETTING_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}: {path} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def settings(config: Config | None = None) -> dict[str, Any]:
    """Every setting as `section.key` (or `key` at top level), with its value in `config`
    (the defaults when None)."""
    return _flatten(config if config is not None else Config(), "")


def _flatten(section: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def all_keys() -> list[str]:
    """Every setting as `section.key` (or `key` at top level)."""
    return list(settings())


def _set(config: Config, dotted: str, value: Any, from_text: bool = False) -> None:
    parts = dotted.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not hasattr(target, part):
            raise ConfigError(f"unknown setting {dotted!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in {
        f.name for f in dataclasses.fields(target)
    }:
        raise ConfigError(f"unknown setting {dotted!r}")
    current = getattr(target, name)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{dotted} is a section: give its keys ({dotted}.KEY)")
    setattr(target, name, _coerce(dotted, current, value, from_text))


_INTEGER = re.compile(r"^[+-]?[0-9]{1,18}\Z")  # ASCII digits only ("²".isdigit() is True)


def worker_count(value: str) -> int:
    """`server.workers`: "auto" is one worker per core (as Go uses every core by default)."""
    text = str(value).strip().lower()
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    if _INTEGER.match(text) and 1 <= int(text) <= 1024:
        return int(text)
    raise ConfigError(f"server.workers must be auto or a number from 1 to 1024, got {value!r}")


def _coerce(dotted: str, current: Any, value: Any, from_text: bool) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{dotted} must be true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value)
        raise ConfigError(f"{dotted} must be an integer, got {value!r}")
    if isinstance(current, str):
        if not isinstance(value, str | int | float) or (isinstance(value, bool) and not from_text):
            raise ConfigError(f"{dotted} must be a string, got {value!r}")
        return str(value)
    if isinstance(current, list):
        return _coerce_list(dotted, value, from_text)
    raise ConfigError(f"cannot set {dotted}")


def _coerce_list(dotted: str, value: Any, from_text: bool) -> list[Any]:
    """A list from YAML, or from text: JSON (`[...]`) or comma-separated words."""
    if from_text and isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{dotted}: invalid JSON list: {exc}") from None
        else:
            value = [word.strip() for word in text.split(",") if word.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{dotted} must be a list, got {value!r}")
    return list(value)
