"""A build step's layer: the overlay upper directory it wrote, as a layer tar and a layer.

After a step ran on an overlay of its parent's layers, its upper directory holds exactly
what changed: new and modified entries (with their parent folders, copied up), a 0/0
character device for each deletion and `trusted.overlay.opaque=y` on a folder that
replaced one below. `write_tar` turns that into a layer tar by the OCI rules, as Docker's
overlay2 driver does: a deletion becomes an empty `.wh.<name>` file (mode 0600, the
device's owner and time), an opaque folder is followed by an empty `.wh..wh..opq`.

The tar is reproducible from the tree: entries depth first in byte order of their names,
folders with a trailing `/`, times as whole seconds of the files' mtimes, no atime, ctime,
user or group names; owner, mode (set-id bits included) and extended attributes kept
(never `trusted.*`, which is overlayfs bookkeeping, nor `security.selinux`); hard links
within the layer as links to their first name; sockets skipped, as Docker does. The
gzip stream has no name and no time in its header.

`commit_upper` then stores the step as a pulled layer is stored: the blob under its
digest, and the upper directory itself (not an unpack of the tar, which would give the
same tree) moved in as the layer's `fs/`, with its `layer.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.runtime.errors import BuildFailure
from registry.runtime.store import Store, remove_tree
from registry.runtime.unpack import OPAQUE_MARKER, WHITEOUT_PREFIX, LayerInfo

GZIP_LEVEL = 1  # Docker compresses only when it pushes; a build should not wait on zlib
_CHUNK = 1 << 20
_OPAQUE = "trusted.overlay.opaque"
_REFUSED = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_DROPPED_XATTRS = ("trusted.", "security.selinux")
EMPTY_TAR_BYTES = 1024


@dataclass
class LayerResult:
    diff_id: str
    digest: str  # of the gzip blob
    size: int  # of the gzip blob
    info: LayerInfo


class _Sink:
    """Tar bytes in: the diff id of them, and their gzip into `out` with its digest."""

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL) -> None:
        self.out = out
        self.tar_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.blob_size = 0
        self._zip = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip wrapper

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.blob_size += len(data)
            self.out.write(data)

    def write(self, data: bytes) -> None:
        self.tar_hash.update(data)
        self._emit(self._zip.compress(data))

    def close(self) -> None:
        self._emit(self._zip.flush())


def _xattrs(path: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


class TarWriter:
    """Writes tar entries of files under a root into a `_Sink`, blocks and all."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.entries = 0
        self.info = LayerInfo()

    def header(self, name: str, st: os.stat_result, kind: bytes, *, size: int = 0,
               linkname: str = "", mode: int | None = None, timeless: bool = False,
               xattrs: dict[str, bytes] | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = 0 if timeless else int(st.st_mtime)
        info.size = size
        info.linkname = linkname
        info.uname = info.gname = ""
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                            for key, value in sorted((xattrs or {}).items())}
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.entries += 1

    def data(self, fd: int, size: int) -> None:
        left = size
        while left > 0:
            chunk = os.read(fd, min(_CHUNK, left))
            if not chunk:
                raise BuildFailure("a file of the layer shrank while it was being read")
            self.sink.write(chunk)
            left -= len(chunk)
        if size % tarfile.BLOCKSIZE:
            self.sink.write(b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def finish(self) -> None:
        self.sink.write(b"\0" * EMPTY_TAR_BYTES)
        self.sink.close()


def _kept(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in xattrs.items() if not k.startswith(_DROPPED_XATTRS)}


def write_tar(upper: Path, sink: _Sink) -> TarWriter:
    """Every entry under `upper` (not itself) as a layer tar, into `sink`."""
    writer = TarWriter(sink)
    links: dict[tuple[int, int], str] = {}

    def walk(folder: str, prefix: str) -> None:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            rel = prefix + name
            st = os.lstat(path)
            xattrs = _xattrs(path)
            refused = [k for k in xattrs if k.startswith(_REFUSED)]
            if refused:
                raise BuildFailure(f"{rel}: overlayfs wrote {refused[0]}; builds need overlayfs "
                                   "with redirect_dir and metacopy off (the kernel default)")
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                writer.header(prefix + WHITEOUT_PREFIX + name, st, tarfile.REGTYPE, mode=0o600)
                writer.info.whiteouts.append(rel)
            elif stat.S_ISDIR(mode):
                writer.header(rel + "/", st, tarfile.DIRTYPE, xattrs=_kept(xattrs))
                if xattrs.get(_OPAQUE) == b"y":
                    writer.header(f"{rel}/{OPAQUE_MARKER}", st, tarfile.REGTYPE,
                                  mode=stat.S_IMODE(mode) & 0o777, timeless=True)
                    writer.info.opaque_dirs.append(rel)
                walk(path, rel + "/")
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    writer.header(rel, st, tarfile.LNKTYPE, linkname=links[key])
                    continue
                links[key] = rel
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    writer.header(rel, st, tarfile.REGTYPE, size=st.st_size, xattrs=_kept(xattrs))
                    writer.data(fd, st.st_size)
                finally:
                    os.close(fd)
                writer.info.size += st.st_size
            elif stat.S_ISLNK(mode):
                writer.header(rel, st, tarfile.SYMTYPE, linkname=os.readlink(path),
                              xattrs=_kept(xattrs))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                writer.header(rel, st, kind, xattrs=_kept(xattrs))
            elif stat.S_ISFIFO(mode):
                writer.header(rel, st, tarfile.FIFOTYPE, xattrs=_kept(xattrs))
            # sockets cannot be in a tar: skipped, as Docker does

    walk(str(upper), "")
    writer.finish()
    return writer


def strip_bookkeeping(root: Path) -> None:
    """Drop overlayfs's own xattrs (origin, impure...) but the opaque mark, before the
    folder serves as a lower layer."""
    for top, dirs, files in os.walk(root):
        for name in (top, *(os.path.join(top, n) for n in dirs + files)):
            for key in _xattrs(name):
                if key.startswith("trusted.overlay.") and key != _OPAQUE:
                    with contextlib.suppress(OSError):
                        os.removexattr(name, key, follow_symlinks=False)


def commit_upper(store: Store, upper: Path, level: int = GZIP_LEVEL) -> LayerResult | None:
    """Store what the step wrote in `upper` as a layer (blob, unpacked layer); None when it
    wrote nothing, which Docker records as an empty layer. `upper` is consumed."""
    fd, temp_name = tempfile.mkstemp(dir=store.root / "tmp", prefix="layer-blob-")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out, level)
            writer = write_tar(upper, sink)
        if writer.entries == 0:
            temp.unlink()
            remove_tree(upper)
            return None
        diff_id = f"sha256:{sink.tar_hash.hexdigest()}"
        digest = f"sha256:{sink.blob_hash.hexdigest()}"
        store.adopt_blob(temp, digest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    if not store.has_layer(diff_id):
        layer_temp = store.new_temp_dir("layer-")
        os.rename(upper, layer_temp / "fs")
        strip_bookkeeping(layer_temp / "fs")
        (layer_temp / "layer.json").write_text(
            json.dumps({**writer.info.to_json(), "diff_id": diff_id}))
        store.commit_layer(layer_temp, diff_id)
    else:
        remove_tree(upper)
    return LayerResult(diff_id, digest, sink.blob_size, writer.info)
