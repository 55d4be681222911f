"""The docker CLI against the registry: push, pull, re-push, tags, digests, cross-repo mounts.

Each test reads what docker printed and checks it against what the registry serves over
HTTP, so a registry that stored or answered something else fails here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.dockerd import BusyboxImagePlan, DockerDaemon, build_busybox_image

pytestmark = pytest.mark.clients

LAYERS = 3
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_ACCEPT = ", ".join(
    [
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

PUSHED_DIGEST = re.compile(
    r"^(?P<tag>\S+): digest: (?P<digest>sha256:[0-9a-f]{64}) size: (?P<size>\d+)$", re.M
)
LAYER_STATUS = re.compile(r"^(?P<id>[0-9a-f]{12}): (?P<status>.+)$", re.M)
PULLED_DIGEST = re.compile(r"^Digest: (?P<digest>sha256:[0-9a-f]{64})$", re.M)


@dataclass(frozen=True)
class PushedImage:
    host: str
    repository: str
    tag: str
    image_id: str  # the config digest
    diff_ids: list[str]
    digest: str  # of the manifest, as `docker push` printed it
    size: int
    push_output: str

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    @property
    def by_digest(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"


def layer_outcomes(output: str) -> dict[str, str]:
    """The last status docker printed for each layer (short id -> status)."""
    return {match["id"]: match["status"] for match in LAYER_STATUS.finditer(output)}


def pushed_digest(output: str) -> tuple[str, int]:
    match = PUSHED_DIGEST.search(output)
    assert match, f"no digest line in docker push output:\n{output}"
    return match["digest"], int(match["size"])


def short_ids(diff_ids: list[str]) -> set[str]:
    return {diff_id.removeprefix("sha256:")[:12] for diff_id in diff_ids}


def inspect(dockerd: DockerDaemon, ref: str, template: str) -> Any:
    return json.loads(
        dockerd.docker("image", "inspect", "--format", f"{{{{json {template}}}}}", ref).stdout
    )


def is_local(dockerd: DockerDaemon, ref: str) -> bool:
    return dockerd.docker("image", "inspect", ref, check=False).returncode == 0


def forget(dockerd: DockerDaemon, image_id: str) -> None:
    """Delete the image and all its tags from the daemon, so a pull must fetch every layer."""
    dockerd.docker("rmi", "--force", image_id)
    assert not is_local(dockerd, image_id)


def ensure_local(dockerd: DockerDaemon, image: PushedImage) -> None:
    if not is_local(dockerd, image.ref):
        dockerd.docker("pull", image.ref)


def get_manifest(client: httpx.Client, repository: str, reference: str) -> httpx.Response:
    return client.get(
        f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )


@pytest.fixture(scope="module")
def image(dockerd: DockerDaemon, registry_server: Any, repo_prefix: str) -> PushedImage:
    """A three-layer busybox image built and pushed once for the module."""
    repository = f"{repo_prefix}/docker/busybox"
    ref = build_busybox_image(dockerd, f"{registry_server.host}/{repository}:v1", LAYERS)
    push = dockerd.docker("push", ref)
    digest, size = pushed_digest(push.stdout)
    return PushedImage(
        host=registry_server.host,
        repository=repository,
        tag="v1",
        image_id=inspect(dockerd, ref, ".Id"),
        diff_ids=inspect(dockerd, ref, ".RootFS.Layers"),
        digest=digest,
        size=size,
        push_output=push.stdout,
    )


def test_first_push_uploads_every_layer(image: PushedImage) -> None:
    outcomes = layer_outcomes(image.push_output)
    assert set(outcomes) == short_ids(image.diff_ids)
    assert set(outcomes.values()) == {"Pushed"}, image.push_output


def test_registry_serves_the_pushed_manifest(image: PushedImage, client: httpx.Client) -> None:
    head = client.head(
        f"/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == image.digest
    assert int(head.headers["Content-Length"]) == image.size
    assert head.headers["Content-Type"] == DOCKER_MANIFEST

    body = get_manifest(client, image.repository, image.tag)
    assert body.status_code == 200
    assert "sha256:" + hashlib.sha256(body.content).hexdigest() == image.digest
    assert len(body.content) == image.size
    manifest = body.json()
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert manifest["config"]["digest"] == image.image_id
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER] * LAYERS

    by_digest = get_manifest(client, image.repository, image.digest)
    assert by_digest.status_code == 200
    assert by_digest.content == body.content


def test_registry_serves_every_blob_intact(image: PushedImage, client: httpx.Client) -> None:
    manifest = get_manifest(client, image.repository, image.digest).json()
    for descriptor in [manifest["config"], *manifest["layers"]]:
        url = f"/v2/{image.repository}/blobs/{descriptor['digest']}"
        head = client.head(url)
        assert head.status_code == 200, url
        assert int(head.headers["Content-Length"]) == descriptor["size"]
        assert head.headers["Docker-Content-Digest"] == descriptor["digest"]

    config = client.get(f"/v2/{image.repository}/blobs/{image.image_id}")
    assert "sha256:" + hashlib.sha256(config.content).hexdigest() == image.image_id
    assert config.json()["rootfs"]["diff_ids"] == image.diff_ids
    # Each layer, once gunzipped, is the tar whose digest the image config names.
    for layer, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        blob = client.get(f"/v2/{image.repository}/blobs/{layer['digest']}")
        assert blob.status_code == 200
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob.content)).hexdigest() == diff_id


def test_pull_after_rmi_fetches_every_layer_and_runs(
    image: PushedImage, dockerd: DockerDaemon
) -> None:
    forget(dockerd, image.image_id)
    pull = dockerd.docker("pull", image.ref)
    match = PULLED_DIGEST.search(pull.stdout)
    assert match and match["digest"] == image.digest, pull.stdout
    assert list(layer_outcomes(pull.stdout).values()) == ["Pull complete"] * LAYERS, pull.stdout
    assert inspect(dockerd, image.ref, ".Id") == image.image_id

    run = dockerd.docker("run", "--rm", "--network", "none", image.ref, timeout=120)
    assert run.stdout == BusyboxImagePlan(LAYERS).expected_output()


def test_repush_uploads_nothing(image: PushedImage, dockerd: DockerDaemon) -> None:
    ensure_local(dockerd, image)
    push = dockerd.docker("push", image.ref)
    outcomes = layer_outcomes(push.stdout)
    assert set(outcomes) == short_ids(image.diff_ids)
    assert set(outcomes.values()) == {"Layer already exists"}, push.stdout
    assert pushed_digest(push.stdout) == (image.digest, image.size)


def test_second_tag_then_pull_by_digest(
    image: PushedImage, dockerd: DockerDaemon, client: httpx.Client
) -> None:
    ensure_local(dockerd, image)
    second = f"{image.host}/{image.repository}:v2"
    dockerd.docker("tag", image.ref, second)
    push = dockerd.docker("push", second)
    assert set(layer_outcomes(push.stdout).values()) == {"Layer already exists"}, push.stdout
    assert pushed_digest(push.stdout) == (image.digest, image.size)

    head = client.head(f"/v2/{image.repository}/manifests/v2", headers={"Accept": MANIFEST_ACCEPT})
    assert head.headers.get("Docker-Content-Digest") == image.digest
    tags = client.get(f"/v2/{image.repository}/tags/list")
    assert tags.status_code == 200
    assert tags.json()["name"] == image.repository
    assert {"v1", "v2"} <= set(tags.json()["tags"])

    forget(dockerd, image.image_id)
    pull = dockerd.docker("pull", image.by_digest)
    match = PULLED_DIGEST.search(pull.stdout)
    assert match and match["digest"] == image.digest, pull.stdout
    assert inspect(dockerd, image.by_digest, ".Id") == image.image_id
    run = dockerd.docker("run", "--rm", "--network", "none", image.by_digest, timeout=120)
    assert run.stdout == BusyboxImagePlan(LAYERS).expected_output()


def test_push_to_another_repository_mounts_the_layers(
    image: PushedImage, dockerd: DockerDaemon, client: httpx.Client
) -> None:
    ensure_local(dockerd, image)
    mirror_repository = image.repository.replace("/busybox", "/mirror")
    mirror = f"{image.host}/{mirror_repository}:v1"
    dockerd.docker("tag", image.ref, mirror)
    push = dockerd.docker("push", mirror)
    outcomes = layer_outcomes(push.stdout)
    assert set(outcomes) == short_ids(image.diff_ids)
    # docker asks for a cross-repository mount (POST ?mount=&from=) of blobs it pushed before.
    assert set(outcomes.values()) == {f"Mounted from {image.repository}"}, push.stdout
    assert pushed_digest(push.stdout) == (image.digest, image.size)
    manifest = get_manifest(client, mirror_repository, "v1")
    assert manifest.headers.get("Docker-Content-Digest") == image.digest
    for layer in manifest.json()["layers"]:
        assert client.head(f"/v2/{mirror_repository}/blobs/{layer['digest']}").status_code == 200


def test_pull_of_unknown_tag_says_manifest_unknown(
    image: PushedImage, dockerd: DockerDaemon
) -> None:
    pull = dockerd.docker("pull", f"{image.host}/{image.repository}:no-such-tag", check=False)
    assert pull.returncode != 0
    assert "manifest unknown" in pull.stderr, pull.stderr
