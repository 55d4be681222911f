"""Paths inside a root folder as if it were `/`: symlinks resolved inside it, never above.
Pure path logic on the host's filesystem, apart from `rootfs` so that what only resolves
paths (the builder's sources) does not load the Linux mount bindings."""

from __future__ import annotations

import os
import stat

MAX_SYMLINKS = 255


def secure_join(root: str, path: str) -> str:
    """`root/path` with symlinks resolved inside `root` (never above it), like chroot."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(40, f"too many levels of symbolic links in {path}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p not in ("", ".")] + pending
    return os.path.join(root, *resolved)


def makedirs_in(root: str, path: str, mode: int = 0o755) -> str:
    """Create `path` inside `root` (resolving symlinks inside it); return the host path."""
    target = secure_join(root, path)
    os.makedirs(target, mode, exist_ok=True)
    return target
