"""The local content-addressed store: blobs, unpacked layers and where everything lives.

Layout under the store root (`POCKET_RUNTIME_ROOT`, else `/var/lib/pocket-registry` as root,
else `$XDG_DATA_HOME/pocket-registry`)::

    blobs/<alg>/<hex>             manifests, configs and compressed layers, by their digest
    layers/<alg>/<hex>/fs/        a layer unpacked on its own, keyed by its diff id
    layers/<alg>/<hex>/layer.json whiteouts and opaque dirs of that layer (see `unpack`)
    images.json                   image records and the references that name them (`images`)
    containers/<id>/              one container: state.json, upper/, work/, rootfs/, logs
    volumes/<name>/_data          named volumes, which outlive containers
    tmp/                          downloads and unpacks in progress, renamed when verified
    lock                          flock(2) serialising changes to the records

Every folder here is 0700 (whatever the umask), as Docker's /var/lib/docker is closed:
layers hold set-id files and device nodes from images, and containers' upper dirs and
volumes whatever container root wrote; no other local user may reach them.

Everything in `blobs/` and `layers/` is immutable and written temp-then-rename after its
digest was checked, so a crash leaves an orphan in `tmp/`, never a wrong blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from registry.oci.digest import Digest, new_hasher
from registry.runtime.errors import ContentInvalid

ROOT_ENV = "POCKET_RUNTIME_ROOT"


def default_root() -> Path:
    """Where the store lives: the env override, the system folder as root, else XDG."""
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/lib/pocket-registry")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pocket-registry"


class Store:
    """Paths and atomic writes for the store; knows digests, not manifests."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()
        private_dir(self.root)
        for sub in ("blobs", "layers", "containers", "volumes", "tmp"):
            private_dir(self.root / sub)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (process-wide, blocking) while changing records."""
        with open(self.root / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        parsed = Digest.parse(digest)
        return self.root / "blobs" / parsed.algorithm / parsed.encoded

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a stored blob, checked again against their digest."""
        data = self.blob_path(digest).read_bytes()
        if str(Digest.of(data, Digest.parse(digest).algorithm)) != digest:
            raise ContentInvalid(f"stored blob {digest} is corrupt; pull the image again")
        return data

    def put_blob(self, digest: str, data: bytes) -> Path:
        """Store bytes already in memory, refusing them unless they hash to `digest`."""
        parsed = Digest.parse(digest)
        if str(Digest.of(data, parsed.algorithm)) != digest:
            raise ContentInvalid(f"content does not match its digest {digest}")
        path = self.blob_path(digest)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
        return path

    def adopt_blob(self, temp: Path, digest: str) -> Path:
        """Move a file of ours from `tmp/` into `blobs/` under `digest`, which the caller
        computed while writing it (a built layer); an existing blob wins."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            temp.unlink()
        else:
            os.replace(temp, path)
        return path

    def blob_writer(self, digest: str, size: int | None = None) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def remove_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()

    def blob_digests(self) -> list[str]:
        out: list[str] = []
        for alg_dir in (self.root / "blobs").iterdir():
            out.extend(f"{alg_dir.name}:{p.name}" for p in alg_dir.iterdir())
        return out

    # --- unpacked layers ---------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        parsed = Digest.parse(diff_id)
        return self.root / "layers" / parsed.algorithm / parsed.encoded

    def has_layer(self, diff_id: str) -> bool:
        return (self.layer_dir(diff_id) / "layer.json").is_file()

    def new_temp_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix=prefix))

    def commit_layer(self, temp_dir: Path, diff_id: str) -> Path:
        """Move a verified unpack (`fs/` and `layer.json`) into place; first one wins."""
        final = self.layer_dir(diff_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(temp_dir, final)
        except OSError:
            if not self.has_layer(diff_id):
                raise
            remove_tree(temp_dir)
        return final

    def remove_layer(self, diff_id: str) -> None:
        final = self.layer_dir(diff_id)
        if final.exists():
            doomed = self.new_temp_dir("rm-layer-")
            os.rename(final, doomed / "x")
            remove_tree(doomed)

    def layer_ids(self) -> list[str]:
        out: list[str] = []
        for alg_dir in (self.root / "layers").iterdir():
            out.extend(f"{alg_dir.name}:{p.name}" for p in alg_dir.iterdir())
        return out


class BlobWriter:
    """Streams a download into `tmp/`, hashing as it goes; `commit` checks and renames."""

    def __init__(self, store: Store, digest: str, size: int | None) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = size
        self.written = 0
        self._hasher = new_hasher(Digest.parse(digest).algorithm)
        fd, tmp = tempfile.mkstemp(dir=store.root / "tmp", prefix="blob-")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise ContentInvalid(
                f"blob {self.digest} is larger than the {self.expected_size} bytes declared"
            )
        self._hasher.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Path:
        self._file.close()
        if self.expected_size is not None and self.written != self.expected_size:
            self.abort()
            raise ContentInvalid(
                f"blob {self.digest} has {self.written} bytes, not the "
                f"{self.expected_size} declared"
            )
        actual = f"{Digest.parse(self.digest).algorithm}:{self._hasher.hexdigest()}"
        if actual != self.digest:
            self.abort()
            raise ContentInvalid(f"blob {self.digest} does not match its digest (got {actual})")
        path = self.store.blob_path(self.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, path)
        return path

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def private_dir(path: Path) -> None:
    """Make `path` (and missing parents) a folder only its owner can enter: created 0700,
    and an existing one of ours tightened (a shared sticky folder such as /tmp is left)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX and st.st_mode & 0o077:
        os.chmod(path, 0o700)


def remove_tree(path: Path) -> None:
    """Remove a tree that may hold read-only dirs (layers keep their modes)."""

    def make_writable(func: object, name: str, exc: object) -> None:
        parent = os.path.dirname(name)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, onerror=make_writable)
            else:
                os.unlink(name)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable)
