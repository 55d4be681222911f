"""Real clients following the registry's redirects to S3 (`storage.s3.redirect: true`):
docker and skopeo pull blobs from presigned URLs of the session's SeaweedFS, and the
registry's own log shows it answered those GETs with 307."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from clients.test_docker import LAYERS, PULLED_DIGEST, inspect, layer_outcomes, pushed_digest
from clients.test_skopeo import Layout, Skopeo, busybox_layout, skopeo  # noqa: F401 (fixtures used here)

from support.dockerd import BusyboxImagePlan, DockerDaemon, build_busybox_image
from support.seaweedfs import SeaweedFS
from support.server import RegistryServer

pytestmark = pytest.mark.clients

REDIRECTED = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64})" 307')


@pytest.fixture(scope="module")
def redirecting(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS
) -> Iterator[RegistryServer]:
    settings = seaweedfs.settings(seaweedfs.new_bucket("redirect-clients"))
    settings["REGISTRY_STORAGE_S3_REDIRECT"] = "true"
    settings["REGISTRY_SERVER_ACCESS_LOG"] = "true"
    server = RegistryServer(tmp_path_factory.mktemp("redirect-clients") / "data", env=settings)
    server.start()
    yield server
    server.stop()


def redirected_digests(server: RegistryServer) -> set[str]:
    return set(REDIRECTED.findall(server.log_path.read_text()))


def test_docker_pulls_through_redirects(
    redirecting: RegistryServer, dockerd: DockerDaemon, seaweedfs: SeaweedFS
) -> None:
    dockerd.expose(seaweedfs.ports["s3"])  # the daemon follows the 307s to S3 itself
    ref = build_busybox_image(dockerd, f"{redirecting.host}/redirect/docker:v1", LAYERS)
    digest, _ = pushed_digest(dockerd.docker("push", ref).stdout)
    image_id = inspect(dockerd, ref, ".Id")
    layers = inspect(dockerd, ref, ".RootFS.Layers")
    dockerd.docker("rmi", "--force", image_id)
    pull = dockerd.docker("pull", ref)
    match = PULLED_DIGEST.search(pull.stdout)
    assert match and match["digest"] == digest, pull.stdout
    assert list(layer_outcomes(pull.stdout).values()) == ["Pull complete"] * LAYERS
    assert inspect(dockerd, ref, ".RootFS.Layers") == layers
    run = dockerd.docker("run", "--rm", "--network", "none", ref, timeout=120)
    assert run.stdout == BusyboxImagePlan(LAYERS).expected_output()
    with httpx.Client(base_url=redirecting.url) as c:
        manifest = c.get(
            f"/v2/redirect/docker/manifests/{digest}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        ).json()
    blobs = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    assert blobs <= redirected_digests(redirecting)


def test_skopeo_copies_through_redirects(
    redirecting: RegistryServer,
    skopeo: Skopeo,  # noqa: F811
    busybox_layout: Layout,  # noqa: F811
    tmp_path: Path,
) -> None:
    source = busybox_layout.descriptor("v1")
    repository = f"docker://{redirecting.host}/redirect/skopeo"
    skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:v1", "--preserve-digests")
    back = Layout(tmp_path / "back")
    skopeo.copy(f"{repository}:v1", f"oci:{back.root}:v1", "--preserve-digests")
    assert back.descriptor("v1")["digest"] == source["digest"]
    fetched = back.reachable(source["digest"])
    assert fetched == busybox_layout.reachable(source["digest"])
    assert set(fetched) - {source["digest"]} <= redirected_digests(redirecting)
