"""The ORAS Python SDK against the registry: artifacts of files, chunked uploads, referrers.

ORAS 0.2.x has no `artifact_type` argument, so `ArtifactClient` sets `artifactType` on the
manifest the SDK builds, just before the SDK uploads it (the OCI 1.1 way: an empty config
and the type on the manifest). The older ORAS way, the type as the config's media type, is
what `manifest_config="path:type"` gives without help.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.container
import oras.defaults
import oras.oci
import pytest
import requests
import requests.adapters

pytestmark = pytest.mark.clients

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
ARTIFACT_TYPE = "application/vnd.pocket.test.bundle.v1"
SIGNATURE_TYPE = "application/vnd.pocket.test.signature.v1"
DATA_TYPE = "application/vnd.pocket.test.data.v1"
NOTES_TYPE = "text/markdown"
TITLE = "org.opencontainers.image.title"
REQUEST_TIMEOUT = 60  # seconds; the SDK sets none, and a hung registry must fail, not hang


class TimeoutAdapter(requests.adapters.HTTPAdapter):
    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs["timeout"] = kwargs.get("timeout") or REQUEST_TIMEOUT
        return super().send(request, *args, **kwargs)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ArtifactClient(oras.client.OrasClient):
    """The SDK's client, plus `artifactType` on the manifests it pushes when one is set."""

    artifact_type: str | None = None

    def upload_manifest(
        self, manifest: dict[str, Any], container: oras.container.Container
    ) -> requests.Response:
        if self.artifact_type is not None:
            manifest = {**manifest, "artifactType": self.artifact_type}
        return super().upload_manifest(manifest, container)


@pytest.fixture
def oras_client(registry_server: Any) -> ArtifactClient:
    sdk = ArtifactClient(hostname=registry_server.host, insecure=True)
    sdk.session.mount("http://", TimeoutAdapter())
    return sdk


@pytest.fixture
def target(registry_server: Any, repo_prefix: str, request: pytest.FixtureRequest) -> str:
    """`HOST/<prefix>/oras/<test name>`, without a tag."""
    name = request.node.originalname.removeprefix("test_").replace("_", "-")
    return f"{registry_server.host}/{repo_prefix}/oras/{name}"


def repository_of(target: str) -> str:
    return target.split("/", 1)[1]


@pytest.fixture
def empty_config(tmp_path: Path) -> str:
    path = tmp_path / "empty-config.json"
    path.write_bytes(b"{}")
    return f"{path}:{EMPTY_CONFIG}"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A text file, binary data with a media type of its own, and a folder ORAS tars up."""
    source = tmp_path / "source"
    (source / "tree" / "nested").mkdir(parents=True)
    (source / "notes.md").write_text("# notes\nkept byte for byte\n")
    (source / "data.bin").write_bytes(os.urandom(300_000))
    (source / "tree" / "top.txt").write_text("top\n")
    (source / "tree" / "nested" / "deep.txt").write_text("deep\n")
    return {
        "notes.md": source / "notes.md",
        "data.bin": source / "data.bin",
        "tree": source / "tree",
    }


def tree_contents(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def get_manifest(client: httpx.Client, repository: str, reference: str) -> httpx.Response:
    answer = client.get(
        f"/v2/{repository}/manifests/{reference}",
        headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
    )
    assert answer.status_code == 200, answer.text
    return answer


def test_artifact_push_and_pull_round_trip(
    oras_client: ArtifactClient,
    target: str,
    files: dict[str, Path],
    empty_config: str,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    oras_client.artifact_type = ARTIFACT_TYPE
    pushed = oras_client.push(
        target=f"{target}:v1",
        disable_path_validation=True,
        manifest_config=empty_config,
        files=[
            f"{files['notes.md']}:{NOTES_TYPE}",
            f"{files['data.bin']}:{DATA_TYPE}",
            str(files["tree"]),
        ],
        manifest_annotations={"org.opencontainers.image.description": "client test"},
        quiet=True,
    )
    assert pushed.status_code == 201

    answer = get_manifest(client, repository_of(target), "v1")
    assert answer.headers["Content-Type"] == OCI_MANIFEST
    assert answer.headers["Docker-Content-Digest"] == sha256(answer.content)
    assert pushed.headers["Docker-Content-Digest"] == sha256(answer.content)
    manifest = answer.json()
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"] == {"mediaType": EMPTY_CONFIG, "digest": sha256(b"{}"), "size": 2}
    assert manifest["annotations"]["org.opencontainers.image.description"] == "client test"
    assert [(layer["mediaType"], layer["annotations"][TITLE]) for layer in manifest["layers"]] == [
        (NOTES_TYPE, "notes.md"),
        (DATA_TYPE, "data.bin"),
        (oras.defaults.default_blob_dir_media_type, "tree"),
    ]

    out = tmp_path / "pulled"
    pulled = oras_client.pull(target=f"{target}:v1", outdir=str(out))
    assert sorted(Path(path).name for path in pulled) == ["data.bin", "notes.md", "tree"]
    assert (out / "notes.md").read_bytes() == files["notes.md"].read_bytes()
    assert (out / "data.bin").read_bytes() == files["data.bin"].read_bytes()
    assert tree_contents(out / "tree") == tree_contents(files["tree"])


def test_chunked_upload_stores_every_chunk(
    oras_client: ArtifactClient, target: str, client: httpx.Client, tmp_path: Path
) -> None:
    # Three full 64 KiB chunks and a short one: POST, PATCH x4 with Content-Range, PUT.
    data = os.urandom(3 * 65536 + 1234)
    blob = tmp_path / "chunked.bin"
    blob.write_bytes(data)
    oras_client.push(
        target=f"{target}:v1",
        disable_path_validation=True,
        files=[f"{blob}:{DATA_TYPE}"],
        do_chunked=True,
        chunk_size=65536,
        quiet=True,
    )

    layer = get_manifest(client, repository_of(target), "v1").json()["layers"][0]
    assert layer["digest"] == sha256(data)
    stored = client.get(f"/v2/{repository_of(target)}/blobs/{layer['digest']}")
    assert stored.status_code == 200
    assert stored.content == data

    out = tmp_path / "pulled"
    oras_client.pull(target=f"{target}:v1", outdir=str(out))
    assert (out / "chunked.bin").read_bytes() == data


def test_config_media_type_names_the_artifact(
    oras_client: ArtifactClient,
    target: str,
    files: dict[str, Path],
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    config_type = "application/vnd.pocket.test.config.v1+json"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"created-by": "test_oras", "answer": 42}))
    oras_client.push(
        target=f"{target}:v1",
        disable_path_validation=True,
        manifest_config=f"{config}:{config_type}",
        files=[str(files["notes.md"])],
        quiet=True,
    )

    manifest = get_manifest(client, repository_of(target), "v1").json()
    assert "artifactType" not in manifest
    assert manifest["config"]["mediaType"] == config_type
    assert manifest["layers"][0]["mediaType"] == oras.defaults.default_blob_media_type
    stored = client.get(f"/v2/{repository_of(target)}/blobs/{manifest['config']['digest']}")
    assert stored.content == config.read_bytes()


def test_referrers_list_an_artifact_pushed_with_a_subject(
    oras_client: ArtifactClient,
    target: str,
    files: dict[str, Path],
    empty_config: str,
    client: httpx.Client,
    registry_kind: str,
) -> None:
    oras_client.artifact_type = ARTIFACT_TYPE
    oras_client.push(
        target=f"{target}:subject",
        disable_path_validation=True,
        manifest_config=empty_config,
        files=[str(files["notes.md"])],
        quiet=True,
    )
    subject_answer = get_manifest(client, repository_of(target), "subject")
    subject = oras.oci.Subject(
        mediaType=OCI_MANIFEST,
        size=len(subject_answer.content),
        digest=subject_answer.headers["Docker-Content-Digest"],
    )

    oras_client.artifact_type = SIGNATURE_TYPE
    signed = oras_client.push(
        target=f"{target}:signature",
        disable_path_validation=True,
        manifest_config=empty_config,
        files=[str(files["data.bin"])],
        subject=subject,
        manifest_annotations={"org.example.signed-by": "test_oras"},
        quiet=True,
    )
    signature_digest = signed.headers["Docker-Content-Digest"]

    referrers_url = f"/v2/{repository_of(target)}/referrers/{subject.digest}"
    answer = client.get(referrers_url)
    if answer.status_code == 404 and registry_kind != "pocket":
        pytest.skip(f"the {registry_kind} registry has no referrers API")
    assert signed.headers.get("OCI-Subject") == subject.digest
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith(OCI_INDEX)
    index = answer.json()
    assert index["mediaType"] == OCI_INDEX
    referrers = {entry["digest"]: entry for entry in index["manifests"]}
    assert set(referrers) == {signature_digest}
    entry = referrers[signature_digest]
    assert entry["artifactType"] == SIGNATURE_TYPE
    assert entry["mediaType"] == OCI_MANIFEST
    assert entry["annotations"]["org.example.signed-by"] == "test_oras"

    filtered = client.get(referrers_url, params={"artifactType": SIGNATURE_TYPE})
    assert [entry["digest"] for entry in filtered.json()["manifests"]] == [signature_digest]
    other = client.get(referrers_url, params={"artifactType": ARTIFACT_TYPE})
    assert other.headers.get("OCI-Filters-Applied") == "artifactType"
    assert other.json()["manifests"] == []
