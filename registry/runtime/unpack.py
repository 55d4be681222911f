"""Unpacking one layer tar into its own directory by the OCI image-spec layer rules.

A layer is unpacked on its own (not over its parents) into `fs/`, so that overlayfs can
stack it; what it removes from lower layers is kept twice: as overlayfs markers in `fs/`
(a 0/0 character device per whiteout, `trusted.overlay.opaque=y` per opaque dir, both
only when privileged) and as lists in `layer.json`, which the copy fallback reads.

Safety, without relying on `tarfile`'s extraction filters:

- entry names are relative, free of `..` and NUL; an absolute name or `..` is refused;
- no entry is written through a symlink: every parent must be a real directory;
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
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from registry.runtime.errors import LayerRejected
from registry.runtime.store import remove_tree

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_CHUNK = 1 << 20


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
    """Applies tar members one by one under `root` (an empty directory)."""

    def __init__(self, root: Path, privileged: bool) -> None:
        self.root = root
        self.privileged = privileged
        self.info = LayerInfo()
        self._dirs: list[tuple[str, tarfile.TarInfo]] = []

    def _parent(self, parts: tuple[str, ...], name: str) -> str:
        """The real directory that will hold `parts[-1]`, created if missing, no symlinks."""
        path = str(self.root)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerRejected(f"layer entry {name!r} goes through the symlink {part!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise LayerRejected(f"layer entry {name!r} goes through the non-directory {part!r}")
        return path

    def _clear(self, path: str, keep_dir: bool) -> None:
        """Make room for a new entry: an existing non-dir goes; a dir goes unless kept."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                remove_tree(Path(path))
        else:
            os.unlink(path)

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name)
        if not parts:
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member.name)
            return
        parent = self._parent(parts, member.name)
        path = os.path.join(parent, base)
        rel = "/".join(parts)
        if member.isdir():
            self._clear(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)
            self._dirs.append((path, member))
            return
        self._clear(path, keep_dir=False)
        if member.isreg():
            self._regular(tar, member, path)
        elif member.issym():
            if symlink_escapes(parts, member.linkname):
                raise LayerRejected(
                    f"layer symlink {member.name!r} -> {member.linkname!r} points outside the root"
                )
            os.symlink(member.linkname, path)
        elif member.islnk():
            os.link(self._link_source(member), path, follow_symlinks=False)
            return  # a hard link shares its target's metadata
        elif member.ischr() or member.isblk():
            if not self.privileged:
                self.info.skipped.append(rel)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise LayerRejected(f"layer entry {member.name!r} has unsupported type {member.type!r}")
        self._metadata(path, member)

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
        self.info.size += member.size

    def _link_source(self, member: tarfile.TarInfo) -> str:
        target = member_parts(member.linkname)
        if not target:
            raise LayerRejected(f"layer hard link {member.name!r} has an empty target")
        parent = self._parent_existing(target, member)
        source = os.path.join(parent, target[-1])
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise LayerRejected(
                f"layer hard link {member.name!r} -> {member.linkname!r}: "
                "no such entry in the layer"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise LayerRejected(f"layer hard link {member.name!r} points at a directory")
        return source

    def _parent_existing(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> str:
        path = str(self.root)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            if not os.path.isdir(path) or os.path.islink(path):
                raise LayerRejected(
                    f"layer hard link {member.name!r} -> {member.linkname!r} is outside the layer"
                )
        return path

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
        path = os.path.join(parent, target)
        if self.privileged and not os.path.lexists(path):
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))

    def _metadata(self, path: str, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.lchown(path, member.uid, member.gid)
            for key, value in member.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    xattr = key[len("SCHILY.xattr.") :]
                    if not xattr.startswith("trusted.overlay."):
                        with contextlib.suppress(OSError):
                            os.setxattr(
                                path,
                                xattr,
                                value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False,
                            )
        mode = member.mode & (0o7777 if self.privileged else 0o777)
        if not member.issym():
            os.chmod(path, mode)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> LayerInfo:
        for path, member in sorted(self._dirs, key=lambda d: -d[0].count("/")):
            self._metadata(path, member)
        if self.privileged:
            for rel in self.info.opaque_dirs:
                path = os.path.join(self.root, rel) if rel else str(self.root)
                with contextlib.suppress(OSError):
                    os.setxattr(path, "trusted.overlay.opaque", b"y", follow_symlinks=False)
        return self.info


def unpack_tar(stream: IO[bytes], root: Path, privileged: bool) -> LayerInfo:
    """Apply an uncompressed tar stream under the empty directory `root`."""
    writer = LayerWriter(root, privileged)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                writer.apply(tar, member)
    except tarfile.TarError as exc:
        raise LayerRejected(f"layer is not a valid tar archive: {exc}") from None
    except (EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise LayerRejected(f"layer is truncated or not valid compressed data: {exc}") from None
    return writer.finish()


def unpack_layer(blob: Path, dest: Path, privileged: bool | None = None) -> tuple[LayerInfo, str]:
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
            info = unpack_tar(io.BufferedReader(hashing, _CHUNK), fs, privileged)
            diff_id = hashing.diff_id
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            raise LayerRejected(f"layer could not be unpacked: {exc}") from None
    (dest / "layer.json").write_text(json.dumps({**info.to_json(), "diff_id": diff_id}))
    return info, diff_id


def read_layer_info(layer_dir: Path) -> LayerInfo:
    return LayerInfo.from_json(json.loads((layer_dir / "layer.json").read_text()))
