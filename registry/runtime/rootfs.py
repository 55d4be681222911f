"""A container's root filesystem: an overlay of its image layers with its own upper dir,
or, where overlayfs is unavailable (or `POCKET_RUNTIME_STORAGE=copy`), a copy of the
layers applied in order. Also `secure_join`, resolving paths as if `root` were `/` (from
`paths`, which needs nothing of Linux's mount calls)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from registry.runtime import linux
from registry.runtime.paths import MAX_SYMLINKS as MAX_SYMLINKS
from registry.runtime.paths import makedirs_in as makedirs_in
from registry.runtime.paths import secure_join as secure_join
from registry.runtime.store import remove_tree
from registry.runtime.unpack import read_layer_info

MOUNT_OPTIONS_MAX = 3000  # bytes; the kernel takes one page of mount data


def mount_overlay(lowers: Sequence[Path], upper: Path, work: Path, target: Path,
                  flags: int = 0) -> None:
    """Mount lowers (top layer first) + upper at target; raises OSError if unsupported."""
    for folder in (upper, work, target):  # 0755: the merged root takes upper's mode
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    options = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}"
    if len(options) < MOUNT_OPTIONS_MAX:
        linux.mount("overlay", str(target), "overlay", flags, options)
        return
    # Mount options end at a page: past ~35 layers under the store's long paths, name the
    # lower dirs by short links (0, 1, ...) next to `work`, relative to the working
    # directory of the call, as Docker's overlay2 does with its l/ folder.
    links = work.parent / (work.name + ".lowers")
    remove_tree(links)
    links.mkdir(mode=0o700)
    for index, lower in enumerate(lowers):
        os.symlink(lower, links / str(index))
    back = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(links)
        relative = ":".join(str(i) for i in range(len(lowers)))
        linux.mount("overlay", str(target), "overlay", flags,
                    f"lowerdir={relative},upperdir={upper},workdir={work}")
    finally:
        os.fchdir(back)
        os.close(back)


def copy_layers(layer_dirs: Sequence[Path], target: Path) -> None:
    """Apply layers (bottom first) into `target` by copying, honouring whiteouts."""
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    for layer in layer_dirs:
        info = read_layer_info(layer)
        for rel in info.opaque_dirs:
            path = secure_join(str(target), rel)
            if os.path.isdir(path) and not os.path.islink(path):
                for child in os.listdir(path):
                    remove_tree(Path(path) / child)
        whiteouts = set(info.whiteouts)
        for rel in info.whiteouts:
            parent = secure_join(str(target), os.path.dirname(rel))
            victim = os.path.join(parent, os.path.basename(rel))
            if os.path.lexists(victim):
                remove_tree(Path(victim))
        _copy_tree(layer / "fs", target, whiteouts)


def _copy_tree(source: Path, target: Path, whiteouts: set[str]) -> None:
    inodes: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []
    for top, subdirs, files in os.walk(source):
        rel_top = os.path.relpath(top, source)
        for name in subdirs + files:
            src = os.path.join(top, name)
            rel = os.path.normpath(os.path.join(rel_top, name))
            dst = os.path.join(target, rel)
            st = os.lstat(src)
            if rel in whiteouts and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # an overlayfs whiteout marker, already applied
            existing = os.lstat(dst) if os.path.lexists(dst) else None
            if stat.S_ISDIR(st.st_mode):
                if existing is None or not stat.S_ISDIR(existing.st_mode):
                    if existing is not None:
                        os.unlink(dst)
                    os.mkdir(dst, 0o700)
                dirs.append((dst, st))
                continue
            if existing is not None:
                remove_tree(Path(dst))
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                os.link(inodes[key], dst)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst)
            else:
                os.mknod(dst, st.st_mode, st.st_rdev)
            inodes[key] = dst
            _copy_metadata(dst, st)
    for dst, st in reversed(dirs):
        _copy_metadata(dst, st)


def _copy_metadata(dst: str, st: os.stat_result) -> None:
    with contextlib.suppress(OSError):
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
