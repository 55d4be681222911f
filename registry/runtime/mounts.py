"""A container's mounts, made by its pid 1 between `unshare` and `pivot_root`.

The image is hostile, so every target is resolved inside the root filesystem with
`secure_join` (symlinks followed as if the root were `/`), and:

- `/proc`, `/sys` and `/dev` must be real directories in the image: a symlink there is
  refused (as runc does), since the read-only and masked paths below them would otherwise
  be made somewhere else while the real ones stay writable;
- each read-only or masked path must resolve inside the filesystem just mounted, or the
  start fails; a path this kernel does not have is left alone (except `/proc/sys`);
- nothing the container can write allows device nodes: the root filesystem, volumes and
  bind mounts are `nodev`, and `/dev` is a `nodev` tmpfs whose default nodes are each bind
  mounts of their own. A node made with `mknod` or shipped in a layer cannot be opened,
  on any cgroup version (the devices cgroup adds Docker's allow-list where there is one).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from registry.runtime import linux
from registry.runtime.errors import StartFailure
from registry.runtime.rootfs import copy_layers, makedirs_in, mount_overlay, secure_join
from registry.runtime.volumes import seed_volume

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
MASKED = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
REQUIRED = frozenset({"/proc/sys"})
SPECIAL_DIRS = ("/proc", "/sys", "/dev")
# statvfs flags that are also mount flags, with the same values (MS_RDONLY ... MS_NOEXEC)
_KEPT_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def mount_rootfs(lowers: Sequence[Path], container_dir: Path, rootfs: Path,
                 storage: str) -> None:
    """The overlay of the layers (or, without overlayfs, a copy of them) at `rootfs`."""
    if storage in ("overlay", "auto"):
        stack = list(reversed(lowers)) or [container_dir / "empty"]
        (container_dir / "empty").mkdir(mode=0o700, exist_ok=True)
        try:
            mount_overlay(stack, container_dir / "upper", container_dir / "work", rootfs,
                          flags=linux.MS_NODEV)
            return
        except OSError:
            if storage == "overlay":
                raise
    if not (container_dir / "copied").exists():
        copy_layers([fs.parent for fs in lowers], rootfs)
        (container_dir / "copied").touch()
    linux.mount(str(rootfs), str(rootfs), None, linux.MS_BIND | linux.MS_REC)
    _remount_bind(str(rootfs), linux.MS_NODEV)


def refuse_special_symlinks(root: str) -> None:
    """runc's rule: the image's /proc, /sys and /dev must not be symlinks."""
    for path in SPECIAL_DIRS:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(os.path.join(root, path.lstrip("/"))).st_mode):
                raise StartFailure(
                    f"the image's {path} is a symlink: {path} must be a directory "
                    "(refusing to mount over a symlink)"
                )


def _remount_bind(target: str, flags: int) -> None:
    """Add `flags` to a bind mount, keeping the read-only/nosuid/nodev/noexec it has."""
    current = os.statvfs(target).f_flag & _KEPT_FLAGS
    linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | current | flags)


def bind(root: str, source: str, destination: str, readonly: bool, seed: bool) -> None:
    """Bind `source` (host) at `destination` (container), nodev; a new volume is first
    seeded with what the image has there."""
    target = secure_join(root, destination)
    if os.path.isdir(source):
        if seed and os.path.isdir(target) and not os.listdir(source):
            seed_volume(target, source)
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            open(target, "a").close()
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    _remount_bind(target, linux.MS_NODEV | (linux.MS_RDONLY if readonly else 0))


def etc_files(container_dir: Path, root: str) -> None:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf from the container's folder."""
    etc = secure_join(root, "/etc")
    if not os.path.isdir(etc):
        return
    for name in ("hostname", "hosts", "resolv.conf"):
        source = container_dir / name
        if source.exists():
            bind(root, str(source), f"/etc/{name}", readonly=False, seed=False)


def _inside(root: str, mount_point: str, path: str) -> str | None:
    """`path` resolved in the container, which must stay under `mount_point`; None when
    this kernel has no such entry."""
    target = secure_join(root, path)
    if target != mount_point and not target.startswith(mount_point + "/"):
        raise StartFailure(f"{path} resolves outside {mount_point[len(root):] or '/'}")
    if not os.path.lexists(target):
        if path in REQUIRED:
            raise StartFailure(f"{path} is missing: cannot make it read-only")
        return None
    return target


def mount_proc(root: str) -> None:
    proc = makedirs_in(root, "/proc")
    linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    for path in READONLY:
        target = _inside(root, proc, path)
        if target is not None:
            linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC)
            _remount_bind(target, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)


def mount_sys(root: str) -> None:
    sys_dir = makedirs_in(root, "/sys")
    flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    try:
        linux.mount("sysfs", sys_dir, "sysfs", flags)
    except OSError:
        linux.mount("/sys", sys_dir, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, sys_dir, None, linux.MS_BIND | linux.MS_REMOUNT | flags)


def mount_dev(root: str) -> None:
    """A tmpfs /dev with Docker's default nodes, each a bind mount of its own, then the
    tmpfs made `nodev`: nodes made later in /dev cannot be opened."""
    dev = makedirs_in(root, "/dev")
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME,
                "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        path = os.path.join(dev, name)
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)
            source = path
        except OSError:  # no mknod here: the host's node instead
            open(path, "a").close()
            source = f"/dev/{name}"
        linux.mount(source, path, None, linux.MS_BIND)
        _remount_bind(path, linux.MS_NOSUID)
    os.makedirs(os.path.join(dev, "pts"))
    linux.mount("devpts", os.path.join(dev, "pts"), "devpts",
                linux.MS_NOSUID | linux.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.makedirs(os.path.join(dev, "shm"))
    linux.mount("shm", os.path.join(dev, "shm"), "tmpfs",
                linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "mode=1777,size=65536k")
    os.makedirs(os.path.join(dev, "mqueue"))
    with contextlib.suppress(OSError):
        linux.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue",
                    linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, os.path.join(dev, name))
    linux.mount(None, dev, None,
                linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV)


def mask(root: str) -> None:
    """Docker's masked paths: an empty read-only tmpfs over a folder, /dev/null over a
    file. Each must resolve inside the /proc or /sys just mounted."""
    null = os.path.join(root, "dev/null")
    for path in MASKED:
        mount_point = os.path.join(root, path.split("/")[1])
        target = _inside(root, mount_point, path)
        if target is None:
            continue
        if os.path.isdir(target) and not os.path.islink(target):
            linux.mount("tmpfs", target, "tmpfs", linux.MS_RDONLY)
        else:
            linux.mount(null, target, None, linux.MS_BIND)
