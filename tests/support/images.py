"""The registry's container image (deploy/Dockerfile), built once per session in the private
dockerd, on the debootstrap base and without network inside the build: the wheels of the
registry and of every dependency are built on the host (pip, PyPI's cache) into the build
context, and the Dockerfile's PIP_OPTIONS points pip at them.

Fixture: `registry_image` (its tag). `build_context(folder)` lays out what the build sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.dockerd import DockerDaemon

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_IMAGE = "pocket-test/registry:latest"
OFFLINE = "--no-index --find-links /src/wheels"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float  # the docker build alone
    size: int  # bytes, as `docker image inspect` counts them


def build_context(folder: Path) -> Path:
    """The repository's files the Dockerfile copies, plus `wheels/` for an offline install."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(ROOT / name, folder / name)
    for name in ("registry", "migrations", "deploy"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    wheels = folder / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
         f"{folder}[postgres,s3]", "setuptools>=68", "wheel"],
        check=True, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return folder


def build_image(dockerd: DockerDaemon, base: str, tag: str, context: Path) -> BuiltImage:
    started = time.monotonic()
    dockerd.docker(
        "build", "--force-rm", "-f", str(context / "deploy" / "Dockerfile"),
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"PIP_OPTIONS={OFFLINE}",
        "--network", "none", "-t", tag, str(context), timeout=1200,
    )  # fmt: skip
    seconds = time.monotonic() - started
    size = int(dockerd.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    return BuiltImage(tag, seconds, size)


@pytest.fixture(scope="session")
def registry_image(
    dockerd: DockerDaemon, debian_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImage]:
    context = build_context(tmp_path_factory.mktemp("image-context"))
    built = build_image(dockerd, debian_image, REGISTRY_IMAGE, context)
    print(f"\nregistry image: {built.size / 2**20:.0f} MiB, built in {built.seconds:.0f} s")
    yield built
