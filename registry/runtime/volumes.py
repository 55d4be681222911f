"""Named volumes (`volumes/<name>/_data`), which outlive the containers that use them,
and parsing `-v` specs: `name:/path`, `/host/path:/path`, either with `:ro` or `:rw`."""

from __future__ import annotations

import re
from pathlib import Path

from registry.runtime.errors import RuntimeFailure
from registry.runtime.state import Mount
from registry.runtime.store import Store

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")


def parse_volume(spec: str, store: Store) -> Mount:
    parts = spec.split(":")
    readonly = False
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise RuntimeFailure(f"invalid mode {parts[2]!r} in volume {spec!r}")
        readonly = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
        raise RuntimeFailure(
            f"invalid volume {spec!r}: expected name:/path or /host/path:/path[:ro]"
        )
    source, destination = parts
    if source.startswith("/"):
        if not Path(source).exists():
            Path(source).mkdir(parents=True)  # as Docker does for a missing bind source
        return Mount(str(Path(source).resolve()), destination, readonly)
    if not _VOLUME_NAME.match(source):
        raise RuntimeFailure(f"invalid volume name {source!r}")
    return Mount(str(volume_path(store, source)), destination, readonly, volume=source)


def volume_path(store: Store, name: str) -> Path:
    return store.root / "volumes" / name / "_data"


def ensure_volume(store: Store, name: str) -> tuple[Path, bool]:
    """The volume's data dir, and whether it was just created (and so may be seeded)."""
    path = volume_path(store, name)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    return path, created


def list_volumes(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "volumes").iterdir() if (p / "_data").is_dir())
