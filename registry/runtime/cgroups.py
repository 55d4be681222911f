"""Resource limits and the device allow-list with cgroups, v1 or v2 found by looking at
/sys/fs/cgroup.

Each container gets `pocket/<id>` in every hierarchy it needs (v1: memory, pids, cpu and
devices; v2: the unified tree with the first three enabled). The container joins by
writing `0` to file descriptors opened before pivot_root, so only the container's
processes are counted. `remove` deletes the groups once the container is gone.

Devices: v1 denies everything, then allows Docker's defaults (`DEVICE_RULES`). v2 has no
devices controller (it takes an eBPF program); there `filters_devices` is False and the
container loses CAP_MKNOD instead. Either way its mounts are `nodev` (see `mounts`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "pocket"
CFS_PERIOD = 100_000
# Docker's default device rules: mknod of anything, read/write only of these nodes.
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes
    pids: int | None = None
    cpus: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory, self.pids, self.cpus))


def version(root: Path = CGROUP_ROOT) -> int:
    return 2 if (root / "cgroup.controllers").exists() else 1


def parse_memory(value: str) -> int:
    """`512m`, `1g`, `65536k`, `1048576` (bytes) as Docker reads them."""
    text = value.strip().lower().removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        amount = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"invalid memory size {value!r}") from None
    if amount < 6 << 20:
        raise ValueError("minimum memory limit allowed is 6MB")
    return amount


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class Cgroup:
    """The cgroups of one container."""

    def __init__(self, container_id: str, limits: Limits, root: Path = CGROUP_ROOT) -> None:
        self.limits = limits
        self.root = root
        self.version = version(root)
        self.dirs: list[Path] = []
        name = f"{PARENT}/{container_id}"
        if self.version == 2:
            self.dirs = [root / name]
        else:
            wanted = ["memory", "pids", "cpu", "devices"]
            self.dirs = [root / c / name for c in wanted if (root / c).is_dir()]

    @property
    def filters_devices(self) -> bool:
        """Whether the kernel enforces `DEVICE_RULES` for this container."""
        return any(d.parent.parent.name == "devices" for d in self.dirs)

    def create(self) -> None:
        if self.version == 2:
            parent = self.root / PARENT
            parent.mkdir(exist_ok=True)
            available = (self.root / "cgroup.controllers").read_text().split()
            for level in (self.root, parent):
                for controller in ("memory", "pids", "cpu"):
                    if controller in available:
                        with contextlib.suppress(OSError):
                            _write(level / "cgroup.subtree_control", f"+{controller}")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self._apply()

    def _apply(self) -> None:
        lim = self.limits
        if self.version == 2:
            d = self.dirs[0]
            if lim.memory is not None:
                _write(d / "memory.max", str(lim.memory))
                with contextlib.suppress(OSError):
                    _write(d / "memory.swap.max", str(lim.memory))
            if lim.pids is not None:
                _write(d / "pids.max", str(lim.pids) if lim.pids > 0 else "max")
            if lim.cpus is not None:
                _write(d / "cpu.max", f"{int(lim.cpus * CFS_PERIOD)} {CFS_PERIOD}")
            return
        for d in self.dirs:
            controller = d.parent.parent.name
            if controller == "memory" and lim.memory is not None:
                _write(d / "memory.limit_in_bytes", str(lim.memory))
                # Docker's default --memory-swap is twice --memory
                with contextlib.suppress(OSError):
                    _write(d / "memory.memsw.limit_in_bytes", str(2 * lim.memory))
            elif controller == "pids" and lim.pids is not None:
                _write(d / "pids.max", str(lim.pids) if lim.pids > 0 else "max")
            elif controller == "cpu" and lim.cpus is not None:
                _write(d / "cpu.cfs_period_us", str(CFS_PERIOD))
                _write(d / "cpu.cfs_quota_us", str(int(lim.cpus * CFS_PERIOD)))
            elif controller == "devices":
                _write(d / "devices.deny", "a")
                for rule in DEVICE_RULES:
                    _write(d / "devices.allow", rule)

    def open_procs(self) -> list[int]:
        """Write-only fds of each group's `cgroup.procs`, to join after pivot_root."""
        return [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]

    def oom_killed(self) -> bool:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                if self.version == 2:
                    events = (d / "memory.events").read_text()
                    for line in events.splitlines():
                        key, _, count = line.partition(" ")
                        if key == "oom_kill" and int(count) > 0:
                            return True
                elif d.parent.parent.name == "memory":
                    control = (d / "memory.oom_control").read_text()
                    if "oom_kill " in control:
                        for line in control.splitlines():
                            if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                                return True
                    elif int((d / "memory.failcnt").read_text()) > 0:
                        return True
        return False

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the groups; waits a little for exiting processes to leave."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
