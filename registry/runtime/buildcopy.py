"""COPY and ADD into a stage's root filesystem, the way Docker's classic builder does.

Runs where the stage's overlay is mounted (`buildmount`); the image under it is hostile,
so the destination is resolved with `secure_join` (its symlinks followed inside the root),
and below it nothing is followed: an entry in the way is replaced, as Docker's untar does,
a symlink by the folder or file being copied. Sources come resolved from `buildcontext`.

- A folder source copies what is in it; a new destination folder is 0755.
- A file goes to `dest` or, when `dest` ends with `/` or is a folder, into it by its name.
- Ownership: 0:0, or `--chown` (names looked up in the stage's /etc/passwd and /etc/group;
  a user alone is also the group's name, as Docker's builder has it); an archive that ADD
  unpacks keeps its own. Parent folders made for a file belong to that owner too.
- Modes are the sources' (or `--chmod`'s); times are the sources' mtimes. Folders made
  here take their source's time and existing ones keep theirs, so the same sources over
  the same parent give the same layer.
- ADD unpacks a local tar (plain, gzip, bzip2, xz) by the same rules as a pulled layer
  (`unpack`), into a scratch folder first, then copies it in keeping owners.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from registry.runtime.buildcontext import CopyOptions, Source, SourceRoot
from registry.runtime.errors import BuildFailure, LayerRejected
from registry.runtime.paths import secure_join
from registry.runtime.unpack import unpack_tar

MAX_ACCOUNT_FILE = 64 << 20
_CHUNK = 1 << 20


@dataclass
class _Session:
    rootfs: str
    owner: tuple[int, int] | None
    chmod: int | None
    touched: dict[str, tuple[int, int]] = field(default_factory=dict)  # dir -> times
    made: dict[str, int] = field(default_factory=dict)  # folders made -> their mtime, set last
    # folders copied, their metadata set last (entries made in them change their times),
    # with the owner their copy gives them (None: the source's own, as ADD's archives)
    dir_meta: list[tuple[str, os.stat_result, tuple[int, int] | None]] = field(
        default_factory=list)

    def entering(self, folder: str) -> None:
        """Remember an existing folder's times before changing what is in it."""
        if folder not in self.made and folder not in self.touched:
            st = os.lstat(folder)
            self.touched[folder] = (st.st_atime_ns, st.st_mtime_ns)


def _read_account_file(rootfs: str, path: str) -> str:
    try:
        fd = os.open(secure_join(rootfs, path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return f.read(MAX_ACCOUNT_FILE).decode("utf-8", "replace")


def _lookup(name: str, text: str, what: str) -> int:
    if name.isdigit():
        return int(name)
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise BuildFailure(f"unable to convert uid/gid chown string to host mapping: can't find "
                       f"{'uid' if what == 'user' else 'gid'} for {what} {name}: "
                       f"no such {what}: {name}")


def resolve_chown(rootfs: str, chown: str) -> tuple[int, int]:
    """Docker's `--chown=user[:group]`, looked up in the stage's own account files."""
    parts = chown.split(":")
    if len(parts) > 2 or not all(parts):
        raise BuildFailure(f"invalid chown string format: {chown}")
    user, group = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    uid = _lookup(user, "" if user.isdigit() else _read_account_file(rootfs, "/etc/passwd"),
                  "user")
    gid = _lookup(group, "" if group.isdigit() else _read_account_file(rootfs, "/etc/group"),
                  "group")
    return uid, gid


def _make_dirs(session: _Session, path: str, owner: tuple[int, int], mtime: int) -> str:
    """The folder `path` of the root (symlinks followed inside it), made with its missing
    parents (0755, `owner`, `mtime`) when needed; its host path."""
    host = secure_join(session.rootfs, path)
    missing: list[str] = []
    probe = host
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if not stat.S_ISDIR(os.lstat(probe).st_mode):
        raise BuildFailure(f"cannot copy to {path}: {probe[len(session.rootfs):] or '/'} "
                           "is not a directory")
    for folder in reversed(missing):
        session.entering(os.path.dirname(folder))
        os.mkdir(folder, 0o755)
        os.chown(folder, *owner)
        os.chmod(folder, 0o755)
        session.made[folder] = mtime
    return host


def _clear(session: _Session, target: str, keep_dir: bool) -> bool:
    """Make room at `target`; True when an existing folder stays (`keep_dir`)."""
    session.entering(os.path.dirname(target))
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        shutil.rmtree(target)
    else:
        os.unlink(target)
    return False


def _metadata(session: _Session, target: str, st: os.stat_result,
              owner: tuple[int, int] | None) -> None:
    os.chown(target, *(owner if owner is not None else (st.st_uid, st.st_gid)),
             follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        mode = session.chmod if session.chmod is not None else stat.S_IMODE(st.st_mode)
        os.chmod(target, mode)
    os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file_data(source: str, target: str) -> None:
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise BuildFailure(f"{source} changed while it was being copied")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(target, flags, 0o600)
        try:
            with open(src, "rb", closefd=False) as reader, open(dst, "wb", closefd=False) as out:
                shutil.copyfileobj(reader, out, _CHUNK)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_entry(session: _Session, path: str, st: os.stat_result, target: str,
                links: dict[tuple[int, int], str]) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if not _clear(session, target, keep_dir=True):
            os.mkdir(target, 0o700)
            session.made[target] = st.st_mtime_ns
        session.dir_meta.append((target, st, session.owner))
        return
    if stat.S_ISSOCK(mode):
        return
    _clear(session, target, keep_dir=False)
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(mode) and st.st_nlink > 1 and key in links:
        os.link(links[key], target, follow_symlinks=False)
        return
    if stat.S_ISREG(mode):
        _copy_file_data(path, target)
        links[key] = target
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(path), target)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(target, 0o600)
    else:
        os.mknod(target, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    _metadata(session, target, st, session.owner)


def _copy_folder(session: _Session, root: SourceRoot, source: Source, dest: str) -> None:
    src_st = os.stat(source.path)
    above = os.path.dirname(dest.rstrip("/")) or "/"
    _make_dirs(session, above, (0, 0), src_st.st_mtime_ns)
    target_root = secure_join(session.rootfs, dest)
    if not os.path.lexists(target_root):
        session.entering(os.path.dirname(target_root))
        os.mkdir(target_root, 0o755)
        session.made[target_root] = src_st.st_mtime_ns
        os.chown(target_root, *(session.owner or (0, 0)))
        os.chmod(target_root, 0o755)
    elif not os.path.isdir(target_root) or os.path.islink(target_root):
        raise BuildFailure(f"cannot copy the folder {source.given} to {dest}: "
                           "it is not a directory")
    links: dict[tuple[int, int], str] = {}
    prefix = "" if source.rel == "." else source.rel + "/"
    for rel, st in root.walk(source.rel):
        inner = rel[len(prefix):]
        target = os.path.join(target_root, inner)
        parent = os.path.dirname(target)
        if not os.path.isdir(parent) or os.path.islink(parent):
            # a folder that .dockerignore left out, but not all of its content
            _clear(session, parent, keep_dir=False)
            _make_dirs(session, parent[len(session.rootfs):], session.owner or (0, 0),
                       st.st_mtime_ns)
        _copy_entry(session, os.path.join(root.root, rel), st, target, links)


def _copy_file(session: _Session, source: Source, dest: str) -> None:
    st = os.stat(source.path)  # the resolved source, inside its root
    owner = session.owner or (0, 0)
    resolved = secure_join(session.rootfs, dest)
    if dest.endswith("/") or os.path.isdir(resolved):
        folder = _make_dirs(session, dest, owner, st.st_mtime_ns)
        target = os.path.join(folder, source.name)
    else:  # `dest` names the file, through whatever symlinks it has in the root
        above = os.path.dirname(resolved)[len(session.rootfs):] or "/"
        target = os.path.join(_make_dirs(session, above, owner, st.st_mtime_ns),
                              os.path.basename(resolved))
    _copy_entry(session, source.path, st, target, {})


_DECOMPRESSORS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _open_archive(path: str) -> IO[bytes]:
    """The tar stream inside a local archive: gzip, bzip2 or xz by magic bytes, or plain."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    for prefix, opener in _DECOMPRESSORS:
        if magic.startswith(prefix):
            return opener(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def is_archive(path: str) -> bool:
    """Whether ADD unpacks this file: its (decompressed) start is a valid tar header."""
    try:
        with _open_archive(path) as stream:
            head = stream.read(tarfile.BLOCKSIZE)
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except (tarfile.TarError, OSError, EOFError, ValueError, lzma.LZMAError):
        return False
    return True


def _archive_folders(path: str) -> set[str]:
    """The folders an archive has entries for (the others its files imply)."""
    try:
        with _open_archive(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            return {"/".join(p for p in m.name.split("/") if p not in ("", "."))
                    for m in tar if m.isdir()}
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError):
        return set()  # unpacking says what is wrong with it


def _unpack_archive(session: _Session, source: Source, dest: str, scratch: Path) -> None:
    folder = scratch / f"archive-{len(os.listdir(scratch))}"
    folder.mkdir()
    explicit = _archive_folders(source.path)
    try:
        with _open_archive(source.path) as stream:
            info = unpack_tar(stream, folder, privileged=True)
    except LayerRejected as exc:
        raise BuildFailure(f"ADD {source.given}: refused: {exc.message}") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise BuildFailure(f"ADD {source.given}: cannot unpack it: {exc}") from None
    if info.whiteouts or info.opaque_dirs:
        raise BuildFailure(f"ADD {source.given}: the archive holds whiteout entries (.wh.*), "
                           "which only image layers may have")
    # folders the archive has no entry for were made just now: date them (and the
    # destination made for the archive) as the archive, so the same archive gives the
    # same layer
    stamp = os.stat(source.path).st_mtime_ns
    os.utime(folder, ns=(stamp, stamp))
    for top, dirs, _ in os.walk(folder):
        for name in dirs:
            path = os.path.join(top, name)
            if os.path.relpath(path, folder) not in explicit:
                os.utime(path, ns=(stamp, stamp), follow_symlinks=False)
    unpacked = SourceRoot(str(folder), what=f"archive {source.given}")
    kept = _Session(session.rootfs, None, session.chmod, session.touched, session.made,
                    session.dir_meta)
    _copy_folder(kept, unpacked, unpacked.resolve(["."], allow_glob=False)[0], dest)


def copy_into(rootfs: str, root: SourceRoot, sources: list[Source], dest: str,
              options: CopyOptions, scratch: Path) -> None:
    """Copy `sources` to `dest` (absolute in the stage) under the mounted `rootfs`."""
    if len(sources) > 1 and not dest.endswith("/"):
        raise BuildFailure("when copying more than one source, the destination must be a "
                           "directory and end with a /")
    owner = resolve_chown(rootfs, options.chown) if options.chown else (0, 0)
    session = _Session(rootfs, owner, options.chmod)
    for source in sources:
        if options.unpack_archives and not source.is_dir and is_archive(source.path):
            _unpack_archive(session, source, dest, scratch)
        elif source.is_dir:
            _copy_folder(session, root, source, dest)
        else:
            _copy_file(session, source, dest)
    # times last, as every entry made in a folder moved its time: existing folders get
    # theirs back, folders made here their source's, copied ones (below) their own
    for folder, times in session.touched.items():
        with contextlib.suppress(FileNotFoundError):
            os.utime(folder, ns=times, follow_symlinks=False)
    for folder, mtime in session.made.items():
        with contextlib.suppress(FileNotFoundError):
            os.utime(folder, ns=(mtime, mtime), follow_symlinks=False)
    for target, st, kept_owner in reversed(session.dir_meta):
        _metadata(session, target, st, kept_owner)
