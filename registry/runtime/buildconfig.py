"""A build's image as it grows, step by step, and what each instruction does to it. Pure.

`ImageState` is the whole image config document (Docker's: `config` holds Env, Cmd,
Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal, Healthcheck,
Shell; `rootfs.diff_ids` and `history` follow the layers) plus the layers' blobs and the
cache key of the chain of steps that made it. Its id, as Docker's, is the digest of the
config's bytes, which are canonical JSON so that the same steps give the same id.

The functions below are Docker's rules for the metadata instructions: ENV replaces a
variable in place or appends it; WORKDIR resolves a relative path against the previous
one; ENTRYPOINT drops an inherited Cmd unless CMD came in this stage; shell forms become
the stage's SHELL (default `/bin/sh -c`) plus the command; EXPOSE takes `port[/proto]`
and ranges; HEALTHCHECK durations are Go's (`30s`, `1m30s`, `500ms`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
import signal
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


class ConfigError(ValueError):
    """An instruction's value that Docker would refuse (a bad port, signal, duration)."""


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image: its blob and what that unpacks to."""

    digest: str  # the blob
    diff_id: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "diff_id": self.diff_id, "size": self.size,
                "media_type": self.media_type}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LayerRef:
        return cls(str(doc["digest"]), str(doc["diff_id"]), int(doc["size"]),
                   str(doc["media_type"]))


@dataclass
class ImageState:
    """The image a stage has built so far (see the module docstring)."""

    config: dict[str, Any]  # the whole config document
    layers: list[LayerRef]
    key: str  # the build cache's key of the steps that made it
    sources: dict[str, list[str]] = field(default_factory=dict)  # blob -> repositories

    @property
    def run(self) -> dict[str, Any]:
        """The `config` object: Env, Cmd, WorkingDir..."""
        section = self.config.get("config")
        if not isinstance(section, dict):
            section = self.config["config"] = {}
        return section

    def config_bytes(self) -> bytes:
        return json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode()

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes()).hexdigest()

    @property
    def shell(self) -> list[str]:
        return list(self.run.get("Shell") or DEFAULT_SHELL)

    def clone(self) -> ImageState:
        return ImageState(copy.deepcopy(self.config), list(self.layers), self.key,
                          copy.deepcopy(self.sources))

    def commit(self, key: str, created: str, created_by: str,
               layer: LayerRef | None = None) -> ImageState:
        """The next state: a history entry (empty unless `layer`), the layer, the key."""
        child = self.clone()
        child.key = key
        child.config["created"] = created
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if layer is None:
            entry["empty_layer"] = True
        else:
            child.layers.append(layer)
            rootfs = child.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            rootfs.setdefault("diff_ids", []).append(layer.diff_id)
        child.config.setdefault("history", []).append(entry)
        return child

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "layers": [la.to_json() for la in self.layers],
                "key": self.key, "sources": self.sources}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageState:
        return cls(dict(doc["config"]), [LayerRef.from_json(la) for la in doc["layers"]],
                   str(doc["key"]), dict(doc.get("sources") or {}))


def cache_key(parent: str, step: object) -> str:
    text = json.dumps(step, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(f"{parent}\n{text}".encode()).hexdigest()


def scratch_config(architecture: str, os_name: str, variant: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"architecture": architecture, "os": os_name, "config": {},
                           "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    if variant:
        doc["variant"] = variant
    return doc


def add_default_path(run: dict[str, Any]) -> None:
    """Docker gives every stage a PATH when its base image has none."""
    env = list(run.get("Env") or [])
    if not any(e.split("=", 1)[0] == "PATH" for e in env):
        run["Env"] = [*env, f"PATH={DEFAULT_PATH}"]


def set_env(run: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    env = list(run.get("Env") or [])
    for key, value in pairs:
        entry = f"{key}={value}"
        for i, existing in enumerate(env):
            if existing.split("=", 1)[0] == key:
                env[i] = entry
                break
        else:
            env.append(entry)
    run["Env"] = env


def set_labels(run: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    labels = dict(run.get("Labels") or {})
    labels.update(pairs)
    run["Labels"] = labels


def workdir(current: str, path: str) -> str:
    """WORKDIR's new value: absolute, cleaned, relative paths against the current one."""
    return posixpath.normpath(posixpath.join("/", current or "/", path))


def command(args: tuple[str, ...], exec_form: bool, shell: list[str]) -> list[str]:
    """What a CMD, ENTRYPOINT or RUN runs: the exec form as written, else SHELL + text."""
    return list(args) if exec_form else [*shell, args[0] if args else ""]


def expose(run: dict[str, Any], specs: list[str]) -> None:
    ports = dict(run.get("ExposedPorts") or {})
    for spec in specs:
        number, _, proto = spec.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise ConfigError(f"invalid proto: {proto}")
        first, sep, last = number.partition("-")
        try:
            start, end = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ConfigError(f"invalid containerPort: {number}") from None
        if not (0 < start <= end <= 65535):
            raise ConfigError(f"invalid range specified for container port: {number}")
        for port in range(start, end + 1):
            ports[f"{port}/{proto}"] = {}
    run["ExposedPorts"] = ports


def volumes(run: dict[str, Any], paths: list[str]) -> None:
    found = dict(run.get("Volumes") or {})
    for path in paths:
        if not path.strip():
            raise ConfigError("VOLUME specified can not be an empty string")
        found[path] = {}
    run["Volumes"] = found


def parse_duration(text: str) -> int:
    """Go's `time.ParseDuration`, in nanoseconds (no sign)."""
    if text == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match:
            raise ConfigError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ConfigError("time: invalid duration ''")
    return int(total)


def healthcheck(args: tuple[str, ...], exec_form: bool, flags: dict[str, str]) -> dict[str, Any]:
    if args[0] == "NONE":
        return {"Test": ["NONE"]}
    rest = args[1:]
    test = ["CMD", *rest] if exec_form else ["CMD-SHELL", rest[0]]
    check: dict[str, Any] = {"Test": test}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if flag in flags:
            value = parse_duration(flags[flag])
            if 0 < value < 1_000_000:
                raise ConfigError(f"{key} {flags[flag]!r} cannot be less than 1ms")
            if value:
                check[key] = value
    if "retries" in flags:
        try:
            retries = int(flags["retries"])
        except ValueError:
            raise ConfigError(f"invalid --retries value {flags['retries']!r}") from None
        if retries < 0:
            raise ConfigError("--retries cannot be negative")
        if retries:
            check["Retries"] = retries
    return check


def check_signal(value: str) -> str:
    """STOPSIGNAL takes `SIGTERM`, `TERM` or a number, as Docker does."""
    if value.isdigit():
        if 0 < int(value) < 65:
            return value
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__ or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name):
            return value
    raise ConfigError(f"invalid signal: {value}")
