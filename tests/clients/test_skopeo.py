"""skopeo against the registry: OCI layouts in and out, inspect, tags, delete, formats, indexes.

Two sources of images: a busybox image built in the private docker daemon and read with
`docker-daemon:` (uncompressed layers, so skopeo compresses them itself), and an OCI layout
written here with an image index of two platforms, for `--all`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from support.dockerd import DockerDaemon, build_busybox_image, in_ci

pytestmark = pytest.mark.clients

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
PLATFORMS = ("amd64", "arm64")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Skopeo:
    """The skopeo CLI with no host policy, registries.conf or credentials in play."""

    binary: str
    home: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[bytes]:
        command = [self.binary, "--insecure-policy", *args]
        env = {
            **os.environ,
            "REGISTRY_AUTH_FILE": str(self.home / "auth.json"),
            "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
        }
        result = subprocess.run(
            command,
            capture_output=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout.decode()}\n{result.stderr.decode()}"
            )
        return result

    def copy(self, source: str, destination: str, *options: str) -> None:
        self(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *options,
            source,
            destination,
        )

    def inspect(self, image: str, *options: str) -> Any:
        return json.loads(self("inspect", "--tls-verify=false", *options, image).stdout)


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    binary = shutil.which("skopeo")
    if binary is None:
        if in_ci():
            pytest.fail("skopeo not found: CI must run the client tests", pytrace=False)
        pytest.skip("skopeo not found (Debian package skopeo)")
    home = tmp_path_factory.mktemp("skopeo")
    (home / "auth.json").write_text("{}\n")
    (home / "registries.conf").write_text("")
    return Skopeo(binary, home)


# -- OCI layouts -------------------------------------------------------------------------------


class Layout:
    """An OCI image layout folder (oci-layout, index.json, blobs/sha256/...)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, digest: str) -> bytes:
        algorithm, hexdigest = digest.split(":", 1)
        return (self.root / "blobs" / algorithm / hexdigest).read_bytes()

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        path = self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def descriptor(self, tag: str) -> dict[str, Any]:
        index = json.loads((self.root / "index.json").read_text())
        found = [
            entry
            for entry in index["manifests"]
            if entry.get("annotations", {}).get(REF_NAME) == tag
        ]
        assert len(found) == 1, f"{tag} in {index}"
        return dict(found[0])

    def json_blob(self, digest: str) -> Any:
        return json.loads(self.blob(digest))

    def reachable(self, digest: str) -> dict[str, bytes]:
        """Every blob the manifest or index `digest` reaches, itself included, checked."""
        data = self.blob(digest)
        assert sha256(data) == digest
        found = {digest: data}
        document = json.loads(data)
        for child in document.get("manifests", []):
            found.update(self.reachable(child["digest"]))
        for descriptor in [document.get("config"), *document.get("layers", [])]:
            if descriptor is not None:
                blob = self.blob(descriptor["digest"])
                assert sha256(blob) == descriptor["digest"]
                assert len(blob) == descriptor["size"]
                found[descriptor["digest"]] = blob
        return found

    def write_index(self, manifests: list[dict[str, Any]]) -> None:
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": manifests})
        )


def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_multiplatform_layout(
    root: Path, tag: str, platforms: tuple[str, ...] = PLATFORMS
) -> Layout:
    """An image index over one small image per linux architecture in `platforms`."""
    layout = Layout(root)
    children = []
    for architecture in platforms:
        tar = layer_tar({"platform.txt": f"linux/{architecture}\n".encode()})
        layer = layout.add_blob(gzip.compress(tar, mtime=0))
        config = layout.add_blob(
            json.dumps(
                {
                    "architecture": architecture,
                    "os": "linux",
                    "config": {"Cmd": ["/bin/cat", "/platform.txt"]},
                    "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
                }
            ).encode()
        )
        manifest = layout.add_blob(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, **config},
                    "layers": [{"mediaType": OCI_LAYER_GZIP, **layer}],
                }
            ).encode()
        )
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                **manifest,
                "platform": {"architecture": architecture, "os": "linux"},
            }
        )
    index = layout.add_blob(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    )
    layout.write_index([{"mediaType": OCI_INDEX, **index, "annotations": {REF_NAME: tag}}])
    return layout


@pytest.fixture(scope="module")
def busybox_layout(
    dockerd: DockerDaemon, skopeo: Skopeo, tmp_path_factory: pytest.TempPathFactory
) -> Layout:
    """The busybox image, read out of the daemon into an OCI layout (gzip layers)."""
    tag = build_busybox_image(dockerd, "pocket.test/skopeo/busybox:v1", layers=3)
    layout = Layout(tmp_path_factory.mktemp("busybox-layout"))
    skopeo.copy(
        f"docker-daemon:{tag}", f"oci:{layout.root}:v1", f"--src-daemon-host={dockerd.host}"
    )
    return layout


@pytest.fixture
def repository(registry_server: Any, repo_prefix: str, request: pytest.FixtureRequest) -> str:
    """`docker://HOST/<prefix>/skopeo/<test name>` without a tag."""
    name = request.node.originalname.removeprefix("test_").replace("_", "-")
    return f"docker://{registry_server.host}/{repo_prefix}/skopeo/{name}"


def path_of(repository: str) -> str:
    """The repository name in a /v2/ URL, from a docker:// reference without tag."""
    return repository.removeprefix("docker://").split("/", 1)[1]


def head_manifest(client: httpx.Client, repository: str, reference: str) -> httpx.Response:
    return client.head(
        f"/v2/{path_of(repository)}/manifests/{reference}", headers={"Accept": ACCEPT}
    )


# -- tests -------------------------------------------------------------------------------------


def test_layout_to_registry_and_back_keeps_every_digest(
    skopeo: Skopeo, busybox_layout: Layout, repository: str, client: httpx.Client, tmp_path: Path
) -> None:
    source = busybox_layout.descriptor("v1")
    skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:v1", "--preserve-digests")

    head = head_manifest(client, repository, "v1")
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == source["digest"]
    assert head.headers["Content-Type"] == OCI_MANIFEST
    assert int(head.headers["Content-Length"]) == source["size"]

    back = Layout(tmp_path / "back")
    skopeo.copy(f"{repository}:v1", f"oci:{back.root}:v1", "--preserve-digests")
    assert back.descriptor("v1")["digest"] == source["digest"]
    assert back.reachable(source["digest"]) == busybox_layout.reachable(source["digest"])


def test_inspect_reports_digest_layers_and_raw_bytes(
    skopeo: Skopeo, busybox_layout: Layout, repository: str
) -> None:
    source = busybox_layout.descriptor("v1")
    manifest = busybox_layout.json_blob(source["digest"])
    config = busybox_layout.json_blob(manifest["config"]["digest"])
    skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:v1")

    info = skopeo.inspect(f"{repository}:v1")
    assert info["Digest"] == source["digest"]
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert (info["Architecture"], info["Os"]) == (config["architecture"], config["os"])
    assert info["RepoTags"] == ["v1"]

    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"{repository}:v1").stdout
    assert sha256(raw) == source["digest"]
    raw_config = skopeo(
        "inspect", "--tls-verify=false", "--raw", "--config", f"{repository}@{source['digest']}"
    ).stdout
    assert sha256(raw_config) == manifest["config"]["digest"]


def test_list_tags_lists_every_tag(skopeo: Skopeo, busybox_layout: Layout, repository: str) -> None:
    pushed = ["beta", "alpha", "v10", "v9", "Latest"]
    for tag in pushed:
        skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:{tag}")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", repository).stdout)
    assert listed["Repository"] == repository.removeprefix("docker://")
    assert sorted(listed["Tags"]) == sorted(pushed)


def test_delete_makes_every_tag_of_the_manifest_unknown(
    skopeo: Skopeo, busybox_layout: Layout, repository: str, client: httpx.Client
) -> None:
    source = busybox_layout.descriptor("v1")
    for tag in ("doomed", "doomed-too"):
        skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:{tag}")
    # A different manifest (docker media types) in the same repository must survive.
    skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:keeper", "--format", "v2s2")
    keeper = skopeo.inspect(f"{repository}:keeper")["Digest"]
    assert keeper != source["digest"]

    skopeo("delete", "--tls-verify=false", f"{repository}:doomed")

    for reference in (":doomed", ":doomed-too", f"@{source['digest']}"):
        gone = skopeo("inspect", "--tls-verify=false", f"{repository}{reference}", check=False)
        assert gone.returncode != 0
        assert b"manifest unknown" in gone.stderr, gone.stderr
    assert head_manifest(client, repository, source["digest"]).status_code == 404
    assert head_manifest(client, repository, "doomed-too").status_code == 404
    assert skopeo.inspect(f"{repository}:keeper")["Digest"] == keeper


def test_format_changes_the_stored_manifest_type(
    skopeo: Skopeo, busybox_layout: Layout, repository: str, client: httpx.Client
) -> None:
    source = busybox_layout.json_blob(busybox_layout.descriptor("v1")["digest"])
    layer_digests = [layer["digest"] for layer in source["layers"]]

    skopeo.copy(f"oci:{busybox_layout.root}:v1", f"{repository}:docker", "--format", "v2s2")
    skopeo.copy(f"{repository}:docker", f"{repository}:oci", "--format", "oci")

    for tag, manifest_type, layer_type in (
        ("docker", DOCKER_MANIFEST, DOCKER_LAYER),
        ("oci", OCI_MANIFEST, OCI_LAYER_GZIP),
    ):
        answer = client.get(
            f"/v2/{path_of(repository)}/manifests/{tag}", headers={"Accept": ACCEPT}
        )
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == manifest_type
        assert answer.headers["Docker-Content-Digest"] == sha256(answer.content)
        manifest = answer.json()
        assert manifest["mediaType"] == manifest_type
        # Converting the manifest type re-labels layers; it does not recompress them.
        assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type] * 3
        assert [layer["digest"] for layer in manifest["layers"]] == layer_digests


def test_zstd_compressed_layers_round_trip(
    skopeo: Skopeo, dockerd: DockerDaemon, repository: str, client: httpx.Client, tmp_path: Path
) -> None:
    # A fresh image read from the daemon has uncompressed layers, so skopeo must compress
    # each one with zstd (a gzip form it had seen before would be reused instead).
    tag = build_busybox_image(dockerd, "pocket.test/skopeo/zstd:v1", layers=3)
    skopeo.copy(
        f"docker-daemon:{tag}",
        f"{repository}:zstd",
        f"--src-daemon-host={dockerd.host}",
        "--format",
        "oci",
        "--dest-compress-format",
        "zstd",
    )

    answer = client.get(f"/v2/{path_of(repository)}/manifests/zstd", headers={"Accept": ACCEPT})
    manifest = answer.json()
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_ZSTD] * 3
    config = client.get(f"/v2/{path_of(repository)}/blobs/{manifest['config']['digest']}").json()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = client.get(f"/v2/{path_of(repository)}/blobs/{layer['digest']}").content
        assert blob.startswith(ZSTD_MAGIC)
        assert sha256(blob) == layer["digest"]
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
        assert sha256(tar) == diff_id

    back = Layout(tmp_path / "back")
    skopeo.copy(f"{repository}:zstd", f"oci:{back.root}:zstd", "--preserve-digests")
    digest = answer.headers["Docker-Content-Digest"]
    assert back.descriptor("zstd")["digest"] == digest
    assert set(back.reachable(digest)) == {
        digest,
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
    }


def test_all_copies_the_index_and_every_platform(
    skopeo: Skopeo, repository: str, client: httpx.Client, tmp_path: Path
) -> None:
    layout = write_multiplatform_layout(tmp_path / "multi", "v1")
    index_digest = layout.descriptor("v1")["digest"]
    children = {
        child["platform"]["architecture"]: child["digest"]
        for child in layout.json_blob(index_digest)["manifests"]
    }

    skopeo.copy(f"oci:{layout.root}:v1", f"{repository}:all", "--all", "--preserve-digests")
    head = head_manifest(client, repository, "all")
    assert head.status_code == 200
    assert head.headers["Content-Type"] == OCI_INDEX
    assert head.headers["Docker-Content-Digest"] == index_digest
    for child in children.values():
        answer = head_manifest(client, repository, child)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == OCI_MANIFEST

    # Without --all skopeo copies the one image of the platform it is told to want.
    skopeo(
        "--override-arch",
        "arm64",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci:{layout.root}:v1",
        f"{repository}:arm64-only",
    )
    single = head_manifest(client, repository, "arm64-only")
    assert single.headers["Content-Type"] == OCI_MANIFEST
    assert single.headers["Docker-Content-Digest"] == children["arm64"]

    back = Layout(tmp_path / "back")
    skopeo.copy(f"{repository}:all", f"oci:{back.root}:all", "--all", "--preserve-digests")
    assert back.descriptor("all")["digest"] == index_digest
    assert back.reachable(index_digest) == layout.reachable(index_digest)


def test_docker_pulls_its_own_platform_from_an_index(
    skopeo: Skopeo,
    dockerd: DockerDaemon,
    repository: str,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    native = dockerd.docker("version", "--format", "{{.Server.Arch}}").stdout.strip()
    foreign = "arm64" if native != "arm64" else "amd64"
    layout = write_multiplatform_layout(tmp_path / "multi", "v1", (foreign, native))
    index_digest = layout.descriptor("v1")["digest"]
    children = {
        child["platform"]["architecture"]: child["digest"]
        for child in layout.json_blob(index_digest)["manifests"]
    }
    skopeo.copy(f"oci:{layout.root}:v1", f"{repository}:multi", "--all", "--preserve-digests")

    # docker resolves the tag to the index, then fetches the child for its own platform.
    ref = f"{repository.removeprefix('docker://')}:multi"
    pull = dockerd.docker("pull", ref)
    assert f"Digest: {index_digest}" in pull.stdout, pull.stdout
    native_config = layout.json_blob(children[native])["config"]["digest"]
    assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == (
        native_config
    )
    container = dockerd.docker("create", "--network", "none", ref).stdout.strip()
    try:
        dockerd.docker("cp", f"{container}:/platform.txt", str(tmp_path / "platform.txt"))
    finally:
        dockerd.docker("rm", container)
    assert (tmp_path / "platform.txt").read_text() == f"linux/{native}\n"
