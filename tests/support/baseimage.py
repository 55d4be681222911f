"""A Debian base image for tests that build container images: there is no Docker Hub here.

`debootstrap` builds a minimal bookworm root filesystem from Debian's mirror (about two
minutes), which is imported into the private dockerd as `BASE_IMAGE`. It is slow, so:

- it is built once per test run, in a background thread started as soon as collection shows
  that a selected test needs it (`pytest_collection_modifyitems`), while other tests run;
- the root filesystem's tarball is kept in a cache folder (`$POCKET_TEST_CACHE`, else
  `~/.cache/pocket-registry-tests`) under a name that says what is in it, and reused by later
  runs on the same machine.

Two variants, each a tarball and an image: `debian_image` (python3 and venv, for the
registry's image) and `debian_services_image` (plus Debian's PostgreSQL and HAProxy, for the
compose test's database and load balancer). The pytest plugin part is those two session
fixtures (enabled with `pytest_plugins = ["support.baseimage"]`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ci import require
from support.dockerd import DockerDaemon

SUITE = "bookworm"
MIRROR = os.environ.get("POCKET_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class Variant:
    """One cached root filesystem and the image it becomes."""

    name: str
    packages: tuple[str, ...]
    image: str
    fixture: str

    def tarball_path(self) -> Path:
        key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(self.packages)}".encode()).hexdigest()
        return cache_dir() / f"debian-{SUITE}-{self.name}-{key[:12]}.tar"


# The registry's image is built on BASE; the compose test's PostgreSQL and HAProxy images on
# SERVICES (the Debian packages, where the official images would be used elsewhere).
BASE = Variant(
    "minbase", ("python3", "python3-venv", "ca-certificates"),
    "pocket-test/debian:bookworm", "debian_image",
)  # fmt: skip
SERVICES = Variant(
    "services", ("python3", "ca-certificates", "postgresql", "haproxy"),
    "pocket-test/debian-services:bookworm", "debian_services_image",
)  # fmt: skip
VARIANTS = (BASE, SERVICES)
# Kept for the callers of the first version of this module.
PACKAGES = BASE.packages
BASE_IMAGE = BASE.image
FIXTURE = BASE.fixture


def cache_dir() -> Path:
    folder = Path(os.environ.get("POCKET_TEST_CACHE")
                  or Path.home() / ".cache" / "pocket-registry-tests")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tarball_path(variant: Variant = BASE) -> Path:
    return variant.tarball_path()


def build_tarball(variant: Variant = BASE) -> Path:
    """The root filesystem as a tar (cached); raises CalledProcessError with the log."""
    target = variant.tarball_path()
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(variant.packages)}",
             SUITE, str(root), MIRROR],
            check=True, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
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
    """The tarballs, built one after the other in a background thread since collection."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.errors: dict[str, BaseException] = {}
        self.wanted: list[Variant] = []

    def start(self, variants: list[Variant]) -> None:
        missing = [v for v in variants if not v.tarball_path().exists()]
        if self.thread is not None or not missing:
            return
        self.wanted = missing

        def work() -> None:
            for variant in missing:
                try:
                    build_tarball(variant)
                except BaseException as exc:  # reported by the fixture
                    self.errors[variant.name] = exc

        self.thread = threading.Thread(target=work, name="debootstrap", daemon=True)
        self.thread.start()

    def wait(self, variant: Variant) -> Path:
        if self.thread is not None and variant in self.wanted:
            while self.thread.is_alive() and not variant.tarball_path().exists():
                if variant.name in self.errors:
                    break
                self.thread.join(timeout=1)
        error = self.errors.get(variant.name)
        if error is not None:
            detail = getattr(error, "stderr", "") or ""
            raise RuntimeError(f"debootstrap failed: {error}\n{detail[-3000:]}")
        return build_tarball(variant)


_prefetch = _Prefetch()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not shutil.which("debootstrap"):
        return
    wanted = {name for item in items for name in getattr(item, "fixturenames", ())}
    variants = [v for v in VARIANTS if v.fixture in wanted]
    if SERVICES in variants and BASE not in variants:
        variants.insert(0, BASE)
    if variants:
        _prefetch.start(variants)


def _import(dockerd: DockerDaemon, variant: Variant) -> str:
    require(shutil.which("debootstrap") is not None, "debootstrap not found (package debootstrap)")
    tarball = _prefetch.wait(variant)
    with open(tarball, "rb") as data:
        subprocess.run([dockerd.docker_cli, "import", "-", variant.image], stdin=data,
                       env=dockerd.env, check=True, capture_output=True, timeout=600)
    return variant.image


@pytest.fixture(scope="session")
def debian_image(dockerd: DockerDaemon) -> Iterator[str]:
    """`BASE.image` in the private dockerd: Debian bookworm minbase with Python 3.11."""
    yield _import(dockerd, BASE)


@pytest.fixture(scope="session")
def debian_services_image(dockerd: DockerDaemon) -> Iterator[str]:
    """`SERVICES.image`: the same with PostgreSQL 15 and HAProxy 2.6 installed."""
    yield _import(dockerd, SERVICES)


if __name__ == "__main__":  # build the tarballs ahead: python tests/support/baseimage.py
    for each in VARIANTS:
        print(build_tarball(each))
