"""A Debian base image for tests that build container images: there is no Docker Hub here.

`debootstrap` builds a minimal bookworm root filesystem from Debian's mirror (about two
minutes), which is imported into the private dockerd as `BASE_IMAGE`. It is slow, so:

- it is built once per test run, in a background thread started as soon as collection shows
  that a selected test needs it (`pytest_collection_modifyitems`), while other tests run;
- the root filesystem's tarball is kept in a cache folder (`$POCKET_TEST_CACHE`, else
  `~/.cache/pocket-registry-tests`) under a name that says what is in it, and reused by later
  runs on the same machine.

The pytest plugin part is the session fixture `debian_image` (enable with
`pytest_plugins = ["support.baseimage"]`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ci import require
from support.dockerd import DockerDaemon

SUITE = "bookworm"
MIRROR = os.environ.get("POCKET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = "pocket-test/debian:bookworm"
FIXTURE = "debian_image"


def cache_dir() -> Path:
    folder = Path(os.environ.get("POCKET_TEST_CACHE")
                  or Path.home() / ".cache" / "pocket-registry-tests")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tarball_path() -> Path:
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    return cache_dir() / f"debian-{SUITE}-minbase-{key}.tar"


def build_tarball() -> Path:
    """The root filesystem as a tar (cached); raises CalledProcessError with the log."""
    target = tarball_path()
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(root), MIRROR],
            check=True, capture_output=True, text=True, timeout=1200,
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = target.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                       check=True, timeout=600)
        partial.rename(target)
    return target


class _Prefetch:
    """The tarball, being built in a background thread since collection."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if self.thread is not None or tarball_path().exists():
            return

        def work() -> None:
            try:
                build_tarball()
            except BaseException as exc:  # reported by the fixture
                self.error = exc

        self.thread = threading.Thread(target=work, name="debootstrap", daemon=True)
        self.thread.start()

    def wait(self) -> Path:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            detail = getattr(self.error, "stderr", "") or ""
            raise RuntimeError(f"debootstrap failed: {self.error}\n{detail[-3000:]}")
        return build_tarball()


_prefetch = _Prefetch()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if shutil.which("debootstrap") and any(
            FIXTURE in getattr(item, "fixturenames", ()) for item in items):
        _prefetch.start()


@pytest.fixture(scope="session")
def debian_image(dockerd: DockerDaemon) -> Iterator[str]:
    """`BASE_IMAGE` in the private dockerd: Debian bookworm minbase with Python 3.11."""
    require(shutil.which("debootstrap") is not None, "debootstrap not found (package debootstrap)")
    tarball = _prefetch.wait()
    with open(tarball, "rb") as data:
        subprocess.run([dockerd.docker_cli, "import", "-", BASE_IMAGE], stdin=data,
                       env=dockerd.env, check=True, capture_output=True, timeout=600)
    yield BASE_IMAGE
