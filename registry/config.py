"""Settings: defaults, then the YAML file, then `REGISTRY_*` environment variables, then flags.

Every key is `section.key` in YAML and `REGISTRY_SECTION_KEY` in the environment
(`server.addr` is `REGISTRY_SERVER_ADDR`). `config.example.yaml` documents each one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting that is missing, unknown or of the wrong type."""


@dataclass
class ServerConfig:
    addr: str = "127.0.0.1:5000"
    public_url: str = ""  # absolute URL clients reach us at; empty: relative Locations
    workers: int = 1
    log_level: str = "info"
    access_log: bool = False


@dataclass
class StorageConfig:
    driver: str = "filesystem"
    root: str = ""  # filesystem driver: where blobs live; empty: <data_dir>/storage
    delete_enabled: bool = True
    fsync: bool = True  # flush a blob's bytes to disk before it becomes visible


@dataclass
class DatabaseConfig:
    url: str = ""  # SQLAlchemy async URL; empty: SQLite in <data_dir>/registry.db
    pool_size: int = 10
    auto_migrate: bool = True


@dataclass
class LimitsConfig:
    max_manifest_bytes: int = 4 * 1024 * 1024
    upload_buffer_bytes: int = 4 * 1024 * 1024
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


# Authentication (registry/auth/). Off by default, which is allowed only on a loopback address.
@dataclass
class AuthConfig:
    enabled: bool = False
    insecure: bool = False  # allow a non-loopback address without auth
    realm: str = ""  # token endpoint URL in challenges; empty: <public_url or Host>/auth/token
    service: str = "pocket-registry"  # the `service` of challenges, and the tokens' audience
    issuer: str = "pocket-registry"  # `iss` of the tokens we sign
    keys_dir: str = ""  # signing keys; empty: <data_dir>/auth/keys
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


@dataclass
class Config:
    data_dir: str = "./data"
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    gc: GCConfig = field(default_factory=GCConfig)

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root or Path(self.data_dir) / "storage")

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'registry.db'}"

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
    return config


def _apply_mapping(config: Config, doc: dict[str, Any], where: str) -> None:
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                _set(config, f"{key}.{sub}", subvalue)
        else:
            _set(config, str(key), value)


def environment_name(dotted: str) -> str:
    """The environment variable for a setting: `storage.fsync` -> `REGISTRY_STORAGE_FSYNC`."""
    return f"REGISTRY_{dotted.replace('.', '_').upper()}"


def _environment_settings(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    names = {environment_name(d): d for d in all_keys()}
    return [(names[k], v) for k, v in environ.items() if k in names]


def settings(config: Config | None = None) -> dict[str, Any]:
    """Every setting as `section.key` (or `key` at top level), with its value in `config`
    (the defaults when None)."""
    config = config if config is not None else Config()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(
                {
                    f"{f.name}.{sub.name}": getattr(value, sub.name)
                    for sub in dataclasses.fields(value)
                }
            )
        else:
            out[f.name] = value
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
    setattr(target, name, _coerce(dotted, current, value, from_text))


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
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
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
