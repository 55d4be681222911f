"""Containers' records: `containers/<id>/state.json`, written atomically.

A record holds what `run` decided (process, mounts, limits) and what happened since
(status `created` -> `running` -> `exited`, pid, exit code). The supervisor is the one
writer while a container runs; `stop`/`rm` only send signals and read. A container is
running while its recorded pid 1 is alive with the recorded start time, so a stale record
(a supervisor that died, a reboot) reads as exited.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.runtime.errors import ContainerConflict, ContainerNotFound
from registry.runtime.store import Store, remove_tree

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid",
               "merry", "nimble", "proud", "quiet", "sharp", "vivid", "witty", "zealous")
_NOUNS = ("turing", "hopper", "lovelace", "ritchie", "thompson", "torvalds", "knuth", "dijkstra",
          "liskov", "hamilton", "kernighan", "pike", "wirth", "backus", "curie", "noether")


@dataclass
class Mount:
    source: str
    destination: str
    readonly: bool = False
    volume: str = ""  # the named volume, when it is one


@dataclass
class PortBinding:
    """`-p host_ip:host_port:container_port/tcp`; host_port 0 until the kernel picks one."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


@dataclass
class Endpoint:
    """A running container's place on its network (see `endpoints`); None once it left."""

    network_id: str
    ip_address: str
    prefix_len: int
    gateway: str
    veth: str  # the host end's name, in the network's namespace


@dataclass
class Container:
    id: str
    name: str
    image: str
    image_id: str
    diff_ids: list[str]
    argv: list[str]
    env: list[str]
    user: str
    workdir: str
    hostname: str
    mounts: list[Mount] = field(default_factory=list)
    network: str = "host"  # host, none, or the name of a network (`networks`)
    aliases: list[str] = field(default_factory=list)
    ports: list[PortBinding] = field(default_factory=list)
    endpoint: Endpoint | None = None
    init: bool = False
    auto_remove: bool = False
    detached: bool = False
    interactive: bool = False
    memory: int | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    seccomp: str = "default"  # default, unconfined or custom (then seccomp_profile)
    seccomp_profile: dict[str, Any] | None = None
    no_new_privileges: bool = False
    extra_lowers: list[str] = field(default_factory=list)  # above the image's (a build's)
    created: float = field(default_factory=time.time)
    status: str = "created"
    pid: int = 0
    pid_start: str = ""
    supervisor_pid: int = 0
    supervisor_start: str = ""  # its process_start, so a reused pid is not taken for it
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Container:
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        fields["mounts"] = [Mount(**m) for m in doc.get("mounts", [])]
        fields["ports"] = [PortBinding(**p) for p in doc.get("ports", [])]
        fields["endpoint"] = Endpoint(**doc["endpoint"]) if doc.get("endpoint") else None
        return cls(**fields)

    @property
    def running(self) -> bool:
        return self.status == "running" and process_start(self.pid) == self.pid_start


def new_id() -> str:
    return secrets.token_hex(32)


def random_name() -> str:
    return f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"


def process_start(pid: int) -> str:
    """The kernel's start time of `pid` (field 22 of /proc/pid/stat), '' if gone."""
    if pid <= 0:
        return ""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return ""
    fields = data.rsplit(")", 1)[-1].split()
    state = fields[0] if fields else "X"
    if state in ("Z", "X"):
        return ""
    return fields[19] if len(fields) > 19 else ""


class ContainerStore:
    """The container records of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.base = store.root / "containers"

    def dir(self, container_id: str) -> Path:
        return self.base / container_id

    def save(self, container: Container) -> None:
        """Rewrite an existing record (FileNotFoundError once it was removed)."""
        path = self.dir(container.id)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".state-")
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(container), out, indent=1)
        os.replace(tmp, path / "state.json")

    def load(self, container_id: str) -> Container:
        try:
            doc = json.loads((self.dir(container_id) / "state.json").read_text())
        except (OSError, ValueError):
            raise ContainerNotFound(f"no such container: {container_id}") from None
        return Container.from_json(doc)

    def all(self) -> list[Container]:
        out = []
        for entry in self.base.iterdir():
            try:
                out.append(self.load(entry.name))
            except ContainerNotFound:
                continue
        return sorted(out, key=lambda c: c.created, reverse=True)

    def find(self, ref: str) -> Container:
        """By full id, by name, else by a unique id prefix (as Docker resolves them)."""
        everything = self.all()
        for c in everything:
            if ref in (c.id, c.name):
                return c
        hits = [c for c in everything if ref and c.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ContainerConflict(f"multiple containers match {ref!r}: be more specific")
        raise ContainerNotFound(f"no such container: {ref}")

    def create(self, container: Container) -> None:
        """Save a new record; a name already in use is refused."""
        with self.store.locked():
            for other in self.all():
                if other.name == container.name:
                    raise ContainerConflict(
                        f'the container name "/{container.name}" is already in use by container '
                        f'"{other.id}"; remove (or rename) that container to be able to reuse '
                        "that name"
                    )
            self.dir(container.id).mkdir(mode=0o700)
            self.save(container)

    def remove(self, container_id: str) -> None:
        path = self.dir(container_id)
        if path.exists():
            doomed = self.store.new_temp_dir("rm-container-")
            os.rename(path, doomed / "c")
            remove_tree(doomed)
