"""The build cache: which image state each step gave, by the key of what made it.

A step's key is the digest of its parent state's key and everything the step depends on:
the instruction after substitution (and, for RUN, the build arguments it sees), and for
COPY and ADD a digest of the content copied (`buildcontext.content_key`) or the key of
the stage or image copied from. The state after the step is kept as JSON in
`buildcache/<hex>.json` (config, layers, key): a rebuild that finds it uses it as is, so
an unchanged Dockerfile gives the very same image id and no new layer. An entry whose
layers have gone from the store (`rmi` collected them) is a miss.

`FileDigests` keeps the digests of the context's files by their stat, so that a rebuild
reads only the files that changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from registry.runtime.buildconfig import ImageState
from registry.runtime.store import Store, private_dir


class BuildCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.folder = store.root / "buildcache"
        private_dir(self.folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key.removeprefix('sha256:')}.json"

    def get(self, key: str) -> ImageState | None:
        try:
            doc = json.loads(self._path(key).read_text())
            state = ImageState.from_json(doc)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if state.key != key:
            return None
        for layer in state.layers:
            if not (self.store.has_layer(layer.diff_id) and self.store.has_blob(layer.digest)):
                return None
        return state

    def put(self, state: ImageState) -> None:
        fd, temp = tempfile.mkstemp(dir=self.store.root / "tmp", prefix="buildcache-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state.to_json(), out, separators=(",", ":"))
            os.replace(temp, self._path(state.key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


MAX_FILE_DIGESTS = 200_000


class FileDigests:
    """Digests of files by what stat says of them (device, inode, size, mtime and ctime,
    which any write moves), as BuildKit and git keep them: a rebuild hashes only what
    changed. Saved (`save`) in `buildcache/files.json`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.root / "buildcache" / "files.json"
        self.changed = False
        try:
            doc = json.loads(self.path.read_text())
            self.known: dict[str, list[object]] = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            self.known = {}

    def digest(self, path: str, st: os.stat_result, compute: Callable[[], str]) -> str:
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = self.known.get(path)
        if isinstance(entry, list) and entry[:5] == key and isinstance(entry[5], str):
            return entry[5]
        value = compute()
        self.known[path] = [*key, value]
        self.changed = True
        return value

    def save(self) -> None:
        if not self.changed:
            return
        if len(self.known) > MAX_FILE_DIGESTS:
            self.known = dict(list(self.known.items())[-MAX_FILE_DIGESTS // 2:])
        fd, temp = tempfile.mkstemp(dir=self.store.root / "tmp", prefix="files-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.known, out, separators=(",", ":"))
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self.changed = False
