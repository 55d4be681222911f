"""Unpacking one layer tar into its own directory by the OCI image-spec layer rules.

A layer is unpacked on its own (not over its parents) into `fs/`, so that overlayfs can
stack it; what it removes from lower layers is kept twice: as overlayfs markers in `fs/`
(a 0/0 character device per whiteout, `trusted.overlay.opaque=y` per opaque dir, both
only when privileged) and as lists in `layer.json`, which the copy fallback reads.

Safety, without relying on `tarfile`'s extraction filters:

- entry names are relative, free of `..` and NUL; an absolute name or `..` is refused;
- no entry is written through a symlink: every parent must be a real directory, and each
  is reached by descriptor from the layer root (see `LayerWriter`), so metadata applied
  late never lands through a path that a later entry replaced with a symlink;
- a hard link must name an earlier entry of this layer (same rules as names);
- a relative symlink may not climb above the layer root (absolute targets are fine:
  they resolve inside the container's root at run time);
- ownership, devices, set-id bits and xattrs only when privileged, and `trusted.overlay.*`
  xattrs never (they would forge whiteouts).
Any refused entry aborts the whole layer with `LayerRejected`; the caller discards it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from registry.runtime.errors import Interrupted, LayerRejected

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class LayerInfo:
    """What a layer removes from its lower layers, and the bytes it adds."""

    whiteouts: list[str] = field(default_factory=list)
    opaque_dirs: list[str] = field(default_factory=list)
    size: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "whiteouts": self.whiteouts,
            "opaque_dirs": self.opaque_dirs,
            "size": self.size,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LayerInfo:
        return cls(
            list(doc.get("whiteouts", [])),
            list(doc.get("opaque_dirs", [])),
            int(doc.get("size", 0)),
            list(doc.get("skipped", [])),
        )


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through (the layer's diff id)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.hasher.update(data)
        buffer[: len(data)] = data
        return len(data)

    @property
    def diff_id(self) -> str:
        self.drain_into_hash()
        return f"sha256:{self.hasher.hexdigest()}"

    def drain_into_hash(self) -> None:
        while chunk := self.inner.read(_CHUNK):
            self.hasher.update(chunk)


def decompressed(raw: BinaryIO) -> IO[bytes]:
    """The tar stream inside a layer blob, found by magic bytes: gzip, zstd or plain."""
    buffered = io.BufferedReader(raw, _CHUNK)  # type: ignore[arg-type,type-var]
    magic = buffered.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if magic == b"\x28\xb5\x2f\xfd":
        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return io.BufferedReader(reader, _CHUNK)  # type: ignore[arg-type]
    return buffered


def member_parts(name: str) -> tuple[str, ...]:
    """The components of an entry name, refusing absolute names, `..` and NUL."""
    if "\0" in name:
        raise LayerRejected(f"layer entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise LayerRejected(f"layer entry {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerRejected(f"layer entry {name!r} contains '..'")
    return parts


def symlink_escapes(link_parts: tuple[str, ...], target: str) -> bool:
    """True when a relative symlink target climbs above the root from the link's dir."""
    if target.startswith("/"):
        return False
    depth = len(link_parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


class LayerWriter:
    """Applies tar members one by one under `root` (an empty directory).

    Every path is reached from a descriptor of the layer root, one component at a time,
    each opened with `O_NOFOLLOW | O_DIRECTORY`; what is created or changed is named by
    its parent's descriptor. So no operation ever follows a symlink that the layer made,
    whatever a later entry does to an earlier one's path. Directory metadata waits for
    `finish` (files created inside would change their times); it is applied then through a
    fresh walk, and a directory that a later entry replaced is forgotten.
    """

    def __init__(self, root: Path, privileged: bool) -> None:
        self.privileged = privileged
        self.info = LayerInfo()
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self._forget_cached()
        os.close(self._root_fd)

    # --- walking ---------------------------------------------------------------------------

    def _forget_cached(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, parts: tuple[str, ...], name: str, create: bool) -> int:
        """A new descriptor of the real directory `parts` (created when missing and
        `create`); a symlink or non-directory on the way refuses the layer."""
        fd = os.dup(self._root_fd)
        try:
            for part in parts:
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise LayerRejected(f"layer entry {name!r} goes through the symlink {part!r}")
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerRejected(
                        f"layer entry {name!r} goes through the non-directory {part!r}"
                    )
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent(self, parts: tuple[str, ...], name: str, create: bool = True) -> int:
        """The descriptor of the directory holding `parts[-1]`; owned by the writer (a
        one-entry cache, since entries of one directory tend to come together)."""
        wanted = parts[:-1]
        if self._cached is not None and self._cached[0] == wanted:
            return self._cached[1]
        fd = self._open_dir(wanted, name, create)
        self._forget_cached()
        self._cached = (wanted, fd)
        return fd

    def _clear(self, parent: int, parts: tuple[str, ...], keep_dir: bool) -> None:
        """Make room for a new entry: an existing non-dir goes; a dir goes unless kept."""
        base = parts[-1]
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(base, dir_fd=parent)
            n = len(parts)
            for remembered in [d for d in self._dirs if d[:n] == parts]:
                del self._dirs[remembered]
            if self._cached is not None and self._cached[0][:n] == parts:
                self._forget_cached()
        else:
            os.unlink(base, dir_fd=parent)

    # --- entries ---------------------------------------------------------------------------

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name)
        if not parts:
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member.name)
            return
        parent = self._parent(parts, member.name)
        if member.isdir():
            self._clear(parent, parts, keep_dir=True)
            if not _lexists(parent, base):
                os.mkdir(base, 0o755, dir_fd=parent)
            self._dirs.pop(parts, None)
            self._dirs[parts] = member  # last one wins, applied in `finish`
            return
        self._clear(parent, parts, keep_dir=False)
        parent = self._parent(parts, member.name)  # the cache may have gone with a dir
        if member.isreg():
            self._regular(tar, member, parent, base)
            return
        if member.issym():
            if symlink_escapes(parts, member.linkname):
                raise LayerRejected(
                    f"layer symlink {member.name!r} -> {member.linkname!r} points outside the root"
                )
            os.symlink(member.linkname, base, dir_fd=parent)
        elif member.islnk():
            source_parent, source = self._link_source(member)
            os.link(source, base, src_dir_fd=source_parent, dst_dir_fd=parent,
                    follow_symlinks=False)
            if source_parent != parent:
                os.close(source_parent)
            return  # a hard link shares its target's metadata
        elif member.ischr() or member.isblk():
            if not self.privileged:
                self.info.skipped.append("/".join(parts))
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=parent)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            raise LayerRejected(f"layer entry {member.name!r} has unsupported type {member.type!r}")
        self._node_metadata(parent, base, member)

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int,
                 base: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
            out.flush()
            self._fd_metadata(fd, member)
        self.info.size += member.size

    def _link_source(self, member: tarfile.TarInfo) -> tuple[int, str]:
        target = member_parts(member.linkname)
        if not target:
            raise LayerRejected(f"layer hard link {member.name!r} has an empty target")
        try:
            parent = self._open_dir(target[:-1], member.name, create=False)
        except (FileNotFoundError, LayerRejected):
            raise LayerRejected(
                f"layer hard link {member.name!r} -> {member.linkname!r} is outside the layer"
            ) from None
        try:
            st = os.stat(target[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.close(parent)
            raise LayerRejected(
                f"layer hard link {member.name!r} -> {member.linkname!r}: "
                "no such entry in the layer"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            os.close(parent)
            raise LayerRejected(f"layer hard link {member.name!r} points at a directory")
        return parent, target[-1]

    def _whiteout(self, parts: tuple[str, ...], name: str) -> None:
        base = parts[-1]
        parent = self._parent(parts, name)
        dir_rel = "/".join(parts[:-1])
        if base == OPAQUE_MARKER:
            self.info.opaque_dirs.append(dir_rel)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and friends): not content
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise LayerRejected(f"layer whiteout {name!r} names no file")
        self.info.whiteouts.append(f"{dir_rel}/{target}" if dir_rel else target)
        if self.privileged and not _lexists(parent, target):
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)

    # --- metadata --------------------------------------------------------------------------

    def _xattrs(self, member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                xattr = key[len("SCHILY.xattr.") :]
                if not xattr.startswith("trusted.overlay."):
                    out.append((xattr, value.encode("utf-8", "surrogateescape")))
        return out

    def _mode(self, member: tarfile.TarInfo) -> int:
        return member.mode & (0o7777 if self.privileged else 0o777)

    def _fd_metadata(self, fd: int, member: tarfile.TarInfo) -> None:
        """Owner, xattrs, mode and times of an open file or directory, by its descriptor."""
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
            for name, value in self._xattrs(member):
                with contextlib.suppress(OSError):
                    os.setxattr(fd, name, value)
        os.fchmod(fd, self._mode(member))  # after chown, which clears set-id bits
        os.utime(fd, (member.mtime, member.mtime))

    def _node_metadata(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        """The same for a symlink, device or fifo, which are not opened: named by the
        parent's descriptor, never following the entry itself."""
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            for name, value in self._xattrs(member):
                with contextlib.suppress(OSError):
                    os.setxattr(_at(parent, base), name, value, follow_symlinks=False)
        if not member.issym():  # a device or fifo this writer just made, not a link
            os.chmod(base, self._mode(member), dir_fd=parent)
        os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def _open_remembered(self, parts: tuple[str, ...]) -> int | None:
        """A descriptor of the directory at `parts` now, or None when a later entry
        replaced it (or a component of its path) with something else."""
        try:
            return self._open_dir(parts, "/".join(parts), create=False)
        except (OSError, LayerRejected):
            return None

    def finish(self) -> LayerInfo:
        self._forget_cached()
        for parts in sorted(self._dirs, key=len, reverse=True):
            fd = self._open_remembered(parts)
            if fd is not None:
                try:
                    self._fd_metadata(fd, self._dirs[parts])
                finally:
                    os.close(fd)
        if self.privileged:
            for rel in self.info.opaque_dirs:
                fd = self._open_remembered(member_parts(rel))
                if fd is not None:
                    try:
                        with contextlib.suppress(OSError):
                            os.setxattr(fd, "trusted.overlay.opaque", b"y")
                    finally:
                        os.close(fd)
        return self.info


def _lexists(parent: int, base: str) -> bool:
    try:
        os.stat(base, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _at(parent: int, base: str) -> str:
    """A path naming `base` inside the directory open as `parent`, for the calls that take
    no directory descriptor: the magic link resolves to that very directory."""
    return f"/proc/self/fd/{parent}/{base}"


def unpack_tar(stream: IO[bytes], root: Path, privileged: bool,
               cancelled: Callable[[], bool] = lambda: False) -> LayerInfo:
    """Apply an uncompressed tar stream under the empty directory `root`; `cancelled` is
    asked before each entry (Interrupted when it says so)."""
    writer = LayerWriter(root, privileged)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if cancelled():
                    raise Interrupted("interrupted")
                writer.apply(tar, member)
        return writer.finish()
    except tarfile.TarError as exc:
        raise LayerRejected(f"layer is not a valid tar archive: {exc}") from None
    except (EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise LayerRejected(f"layer is truncated or not valid compressed data: {exc}") from None
    except (OverflowError, ValueError) as exc:  # ids or times no file can have
        raise LayerRejected(f"layer has an entry with impossible metadata: {exc}") from None
    finally:
        writer.close()


def unpack_layer(blob: Path, dest: Path, privileged: bool | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> tuple[LayerInfo, str]:
    """Unpack a (possibly compressed) layer blob into `dest/fs`; return it with its diff id.

    `dest/layer.json` is written last; the caller compares the diff id and commits.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    fs = dest / "fs"
    fs.mkdir(parents=True)
    with open(blob, "rb") as raw:
        try:
            hashing = HashingReader(decompressed(raw))
            info = unpack_tar(io.BufferedReader(hashing, _CHUNK), fs, privileged, cancelled)
            diff_id = hashing.diff_id
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            raise LayerRejected(f"layer could not be unpacked: {exc}") from None
    (dest / "layer.json").write_text(json.dumps({**info.to_json(), "diff_id": diff_id}))
    return info, diff_id


def read_layer_info(layer_dir: Path) -> LayerInfo:
    return LayerInfo.from_json(json.loads((layer_dir / "layer.json").read_text()))
