"""Named volumes (`volumes/<name>/_data`), which outlive the containers that use them,
parsing `-v` specs (`name:/path`, `/host/path:/path`, either with `:ro` or `:rw`), and
seeding a new volume with what the image has at its mount point."""

from __future__ import annotations

import contextlib
import os
import re
import stat
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
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.mkdir(mode=0o755, exist_ok=True)
    return path, created


def list_volumes(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "volumes").iterdir() if (p / "_data").is_dir())


def seed_volume(source: str, target: str) -> None:
    """Copy the image's folder `source` into the new, empty volume `target`, as Docker does.

    The image is hostile: only regular files are ever opened for reading (with O_NOFOLLOW
    and O_NONBLOCK, checked again once open), symlinks are copied as links, fifos made
    anew, and device nodes and sockets skipped, so a node shipped at the mount point can
    neither leak a host device's bytes into the volume nor hang the start.
    """
    dirs: list[tuple[str, os.stat_result]] = [(target, os.lstat(source))]
    for top, subdirs, files in os.walk(source):
        out_top = os.path.join(target, os.path.relpath(top, source))
        for name in [*subdirs, *files]:
            src, dst = os.path.join(top, name), os.path.join(out_top, name)
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o700)
                dirs.append((dst, st))
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst, 0o600)
            elif not stat.S_ISREG(st.st_mode) or not _copy_file(src, dst):
                continue  # device nodes, sockets, and whatever is not what it seemed
            _copy_metadata(dst, st)
    for path, st in reversed(dirs):
        _copy_metadata(path, st)


def _copy_file(src: str, dst: str) -> bool:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(dst, flags, 0o600), "wb") as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
    finally:
        os.close(fd)
    return True


def _copy_metadata(path: str, st: os.stat_result) -> None:
    with contextlib.suppress(OSError):
        os.lchown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
