"""Garbage collection seen by real docker: an image's tag is deleted and `registry gc` runs;
the layers only it had are gone from storage (disk, or S3), the layers it shared stay, and
every image left pulls and runs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.backends import Backend, ServerFactory, StorageView
from support.dockerd import BusyboxImagePlan, DockerDaemon, build_busybox_image
from support.server import RegistryServer

pytestmark = pytest.mark.clients

ENV = {
    "REGISTRY_GC_ENABLED": "false",  # only the run the test asks for
    "REGISTRY_GC_UNTAGGED_MANIFESTS": "true",
    "REGISTRY_GC_MANIFEST_GRACE_SECONDS": "0",
    "REGISTRY_GC_BLOB_GRACE_SECONDS": "0",
}
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"


# Disk with SQLite, and S3 with PostgreSQL: each driver and each database once.
BACKENDS = {Backend("filesystem", "sqlite"), Backend("s3", "postgres")}


@pytest.fixture
def server(backend: Backend, make_server: ServerFactory) -> Iterator[RegistryServer]:
    if backend not in BACKENDS:
        pytest.skip("run on disk with SQLite and on S3 with PostgreSQL")
    server = make_server("docker-gc", env=ENV)
    server.start()
    yield server
    server.stop()


def build_on(dockerd: DockerDaemon, base: str, tag: str, file: str) -> None:
    """`tag`: `base` plus one layer writing `file`."""
    with tempfile.TemporaryDirectory(prefix="derived-") as context:
        Path(context, "Dockerfile").write_text(f"FROM {base}\nRUN echo {tag} > {file}\n")
        dockerd.docker("build", "--force-rm", "--tag", tag, context, timeout=300)


def blobs_of(server: RegistryServer, repository: str) -> list[str]:
    manifest = httpx.get(
        f"{server.url}/v2/{repository}/manifests/v1", headers={"Accept": ACCEPT}, timeout=30
    )
    assert manifest.status_code == 200, manifest.text
    doc = manifest.json()
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]


def on_disk(server: RegistryServer, digest: str) -> bool:
    """Whether the blob's bytes are in storage (on disk or in the S3 bucket, where docker's
    chunked pushes leave them in place): one copy, when they are."""
    storage: StorageView = server.storage  # type: ignore[attr-defined]
    keys = storage.blob_keys(digest)
    assert len(keys) <= 1, keys
    return bool(keys)


def test_deleting_a_tag_then_collecting_frees_only_its_own_layers(
    dockerd: DockerDaemon, server: RegistryServer
) -> None:
    host = server.host
    base, gone, kept = (f"{host}/gc/{name}:v1" for name in ("base", "gone", "kept"))
    build_busybox_image(dockerd, base, layers=3)
    build_on(dockerd, base, gone, "/gone.txt")
    build_on(dockerd, base, kept, "/kept.txt")
    for ref in (base, gone, kept):
        dockerd.docker("push", ref)
    base_blobs, gone_blobs, kept_blobs = (
        blobs_of(server, f"gc/{name}") for name in ("base", "gone", "kept")
    )
    shared = set(base_blobs[1:])  # the three base layers: in all three images
    only_gone = set(gone_blobs) - shared
    assert len(only_gone) == 2 and shared < set(gone_blobs) and shared < set(kept_blobs)
    assert all(on_disk(server, d) for d in set(base_blobs + gone_blobs + kept_blobs))

    deleted = httpx.delete(f"{server.url}/v2/gc/gone/manifests/v1", timeout=30)
    assert deleted.status_code == 202
    run = subprocess.run(
        [sys.executable, "-m", "registry", "gc", "--json", "--data", str(server.data_dir)],
        capture_output=True, text=True, env=server.env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["manifests_deleted"] == 1
    assert set(report["deleted_blobs"]) == only_gone

    assert not any(on_disk(server, d) for d in only_gone)
    assert all(on_disk(server, d) for d in set(base_blobs + kept_blobs))

    # Every image left pulls from scratch, and runs; the one collected is gone.
    for ref in (base, gone, kept):
        dockerd.docker("rmi", "--force", ref)
    for ref in (base, kept):
        dockerd.docker("pull", ref)
    expected = BusyboxImagePlan(3).expected_output()
    assert dockerd.docker("run", "--rm", "--network", "none", base).stdout == expected
    assert dockerd.docker("run", "--rm", "--network", "none", kept).stdout == expected
    extra = dockerd.docker("run", "--rm", "--network", "none", kept, "cat", "/kept.txt")
    assert extra.stdout == f"{kept}\n"
    missing = dockerd.docker("pull", gone, check=False)
    assert missing.returncode != 0 and "not found" in (missing.stdout + missing.stderr).lower()
