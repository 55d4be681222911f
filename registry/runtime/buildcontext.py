"""What a COPY or ADD names in its source: resolved, walked and hashed, never outside it.

The source root is the build context (with its `.dockerignore`) or, for `--from`, another
image's root filesystem; both are hostile. As Docker's builder does:

- a source is relative to the root (a leading `/` does not leave it); one that climbs out
  with `..` is refused;
- a source path's symlinks are followed inside the root, as if it were `/` (`secure_join`):
  `COPY link/file` or `COPY link` copy what the link names in the root, never the host's;
- inside a copied folder, nothing is followed: a symlink is copied as a symlink;
- wildcards (`*`, `?`, `[...]`) match whole relative paths in the root, Go's way;
- what `.dockerignore` excludes is not there at all.

`content_key` hashes what would be copied (names, types, modes, sizes, contents, link
targets; not times or owners, as Docker's cache ignores them) for the build cache; file
contents come through `Digests`, which may remember them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from registry.runtime.dockerignore import IgnoreRules, clean, has_glob, path_match
from registry.runtime.errors import BuildFailure
from registry.runtime.paths import secure_join

_CHUNK = 1 << 20


@dataclass
class CopyOptions:
    """The flags of a COPY or ADD that change what is written."""

    chown: str = ""  # the --chown value, substituted
    chmod: int | None = None
    unpack_archives: bool = False  # ADD


@dataclass(frozen=True)
class Source:
    """One source of a COPY, resolved inside its root."""

    given: str  # as the instruction names it (a wildcard's match), for messages
    path: str  # the resolved host path, inside the root
    rel: str  # the resolved path relative to the root ("." for the root itself)
    name: str  # the last component of what was named: a file keeps this name in a folder
    is_dir: bool


class SourceRoot:
    """A root to copy from: a folder and, for the build context, its ignore rules."""

    def __init__(self, root: str, ignore: IgnoreRules | None = None,
                 what: str = "build context") -> None:
        self.root = os.path.realpath(root)
        self.ignore = ignore or IgnoreRules([])
        self.what = what

    @classmethod
    def context(cls, folder: Path) -> SourceRoot:
        try:
            text = (folder / ".dockerignore").read_text()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise BuildFailure(f"cannot read {folder / '.dockerignore'}: {exc}") from None
        try:
            return cls(str(folder), IgnoreRules.parse(text))
        except ValueError as exc:
            raise BuildFailure(f".dockerignore: {exc}") from None

    def _rel(self, host_path: str) -> str:
        rel = os.path.relpath(host_path, self.root)
        return "." if rel == "." else rel

    def _missing(self, given: str) -> BuildFailure:
        return BuildFailure(f"file not found in {self.what} or excluded by .dockerignore: "
                            f"stat {given}: file does not exist")

    def resolve(self, sources: list[str], allow_glob: bool = True) -> list[Source]:
        out: list[Source] = []
        for given in sources:
            cleaned = clean(given)
            if cleaned == ".." or cleaned.startswith("../"):
                raise BuildFailure(f"forbidden path outside the {self.what}: {given}")
            if allow_glob and has_glob(cleaned):
                matches = [rel for rel, _ in self.walk(".") if path_match(cleaned, rel)]
                out += [self._one(rel, rel) for rel in matches]
                continue
            out.append(self._one(given, cleaned))
        if not out:
            raise BuildFailure("no source files were specified")
        return out

    def _hidden(self, rel: str, st: os.stat_result) -> bool:
        """Excluded, unless a folder that an exception re-includes part of."""
        if rel == "." or not self.ignore.excluded(rel):
            return False
        return not (stat.S_ISDIR(st.st_mode) and self.ignore.may_reinclude_under(rel))

    def _one(self, given: str, cleaned: str) -> Source:
        path = secure_join(self.root, cleaned)
        try:
            st = os.lstat(path)
        except OSError:
            raise self._missing(given) from None
        rel = self._rel(path)
        if self._hidden(cleaned, st) or self._hidden(rel, st):
            raise self._missing(given)
        name = os.path.basename(cleaned) if cleaned != "." else ""
        return Source(given, path, rel, name, stat.S_ISDIR(st.st_mode))

    def walk(self, start: str) -> Iterator[tuple[str, os.stat_result]]:
        """(path relative to the root, lstat) of everything under `start` (itself
        excluded), depth first in byte order, skipping what is ignored; a symlink is an
        entry, never followed. An ignored folder is entered only when an exception could
        re-include something in it (its own entry is then left out)."""
        top = self.root if start == "." else os.path.join(self.root, start)
        try:
            names = sorted(os.listdir(top))
        except OSError as exc:
            raise BuildFailure(f"cannot read {self.what} folder {start}: {exc.strerror}") from None
        for name in names:
            rel = name if start == "." else f"{start}/{name}"
            st = os.lstat(os.path.join(top, name))
            directory = stat.S_ISDIR(st.st_mode)
            if self.ignore.excluded(rel):
                if directory and self.ignore.may_reinclude_under(rel):
                    yield from self.walk(rel)
                continue
            yield rel, st
            if directory:
                yield from self.walk(rel)


def _file_digest(path: str) -> str:
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "-"
        while chunk := os.read(fd, _CHUNK):
            hasher.update(chunk)
    finally:
        os.close(fd)
    return hasher.hexdigest()


class Digests(Protocol):
    """Where file digests come from (`buildcache.FileDigests` remembers them)."""

    def digest(self, path: str, st: os.stat_result, compute: Callable[[], str]) -> str: ...


def _entry_line(rel: str, st: os.stat_result, path: str, digests: Digests | None) -> str:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        digest = digests.digest(path, st, lambda: _file_digest(path)) if digests \
            else _file_digest(path)
        detail = f"{st.st_size} {digest}"
    elif stat.S_ISLNK(mode):
        detail = os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        detail = str(st.st_rdev)
    else:
        detail = ""
    return f"{stat.S_IFMT(mode):o} {stat.S_IMODE(mode):o} {rel!r} {detail}\n"


def content_key(root: SourceRoot, sources: list[Source], digests: Digests | None = None) -> str:
    """A digest of everything the sources would copy, for the build cache."""
    hasher = hashlib.sha256()
    for source in sources:
        hasher.update(f"source {source.name!r} {source.is_dir}\n".encode())
        st = os.stat(source.path, follow_symlinks=False)
        hasher.update(_entry_line(".", st, source.path, digests).encode())
        if source.is_dir:
            for rel, entry in root.walk(source.rel):
                inner = rel if source.rel == "." else rel[len(source.rel) + 1:]
                path = os.path.join(root.root, rel)
                hasher.update(_entry_line(inner, entry, path, digests).encode())
    return "sha256:" + hasher.hexdigest()
