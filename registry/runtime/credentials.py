"""Registry logins, kept where Docker keeps them: `$DOCKER_CONFIG/config.json`.

Reads `auths.<host>.auth` (base64 `user:password`) and, like Docker, asks a credential
helper (`credHelpers.<host>` or `credsStore`) when one is configured. `registry login`
writes `auths.<host>.auth`, atomically and readable by the owner only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _host_key(key: str) -> str:
    """`https://host:port/v1/` and `host:port` both name `host:port`."""
    key = key.split("://", 1)[-1]
    return key.split("/", 1)[0]


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def lookup(host: str, path: Path | None = None) -> Credentials | None:
    """The credentials for `host`, or None when there are none."""
    doc = _load(path or config_path())
    helpers = doc.get("credHelpers") or {}
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host)
    helper = doc.get("credsStore")
    auths = doc.get("auths") or {}
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if _host_key(key) == host and isinstance(entry, dict) and entry.get("auth"):
                return _decode(str(entry["auth"]))
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host)
    return None


def _decode(auth: str) -> Credentials | None:
    try:
        user, _, password = base64.b64decode(auth).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return Credentials(user, password)


def _from_helper(helper: str, host: str) -> Credentials | None:
    try:
        done = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=host.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        doc = json.loads(done.stdout)
        return Credentials(str(doc["Username"]), str(doc["Secret"]))
    except (ValueError, KeyError, TypeError):
        return None


def store(host: str, creds: Credentials, path: Path | None = None) -> Path:
    """Save a login for `host` in config.json, keeping everything else in the file."""
    path = path or config_path()
    doc = _load(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    for key in [k for k in auths if _host_key(k) == host]:
        del auths[key]
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[host] = {"auth": token}
    doc["auths"] = auths
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent="\t")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
