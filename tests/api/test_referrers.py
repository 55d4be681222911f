"""`/v2/<name>/referrers/<digest>` and the `OCI-Subject` answer to pushes with a subject."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.helpers import (
    ZERO_DIGEST,
    Pushed,
    assert_error,
    descriptor,
    encode,
    image_doc,
    index_manifest,
    push_descriptor,
    push_image,
    push_manifest,
    put_manifest,
    unique_repo,
)
from registry.oci import mediatypes as mt

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
CUSTOM_CONFIG = "application/vnd.example.config.v1+json"


@pytest.fixture
def repo() -> str:
    return unique_repo("referrers")


def push_referrer(client: httpx.Client, repo: str, subject: Pushed | str, **fields: Any) -> Pushed:
    """Push a manifest whose subject is `subject` (a pushed manifest or a bare digest)."""
    if isinstance(subject, Pushed):
        subject_descriptor = subject.descriptor()
    else:
        subject_descriptor = {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 123}
    doc = image_doc(client, repo, subject=subject_descriptor, **fields)
    body = encode(doc)
    pushed = Pushed(body, doc["mediaType"])
    response = put_manifest(client, repo, pushed.digest, body, pushed.media_type)
    assert response.status_code == 201, response.text
    assert response.headers["oci-subject"] == subject_descriptor["digest"]
    return pushed


def referrers(client: httpx.Client, repo: str, digest: str, **params: str) -> httpx.Response:
    response = client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == mt.OCI_INDEX
    body = response.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == mt.OCI_INDEX
    return response


def test_push_without_subject_has_no_oci_subject(client: httpx.Client, repo: str) -> None:
    body = encode(image_doc(client, repo))
    response = put_manifest(client, repo, "t", body, mt.OCI_MANIFEST)
    assert response.status_code == 201
    assert "oci-subject" not in response.headers


def test_listing(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    sbom = push_referrer(
        client, repo, subject, artifactType=SBOM, annotations={"org.example.format": "json"}
    )
    signature = push_referrer(client, repo, subject, config_media_type=SIGNATURE)
    push_referrer(client, repo, push_image(client, repo, None))  # refers to something else
    manifests = referrers(client, repo, subject.digest).json()["manifests"]
    expected = [
        sbom.descriptor(artifactType=SBOM, annotations={"org.example.format": "json"}),
        signature.descriptor(artifactType=SIGNATURE),  # the config's media type stands in
    ]
    assert sorted(manifests, key=lambda d: d["digest"]) == sorted(
        expected, key=lambda d: d["digest"]
    )


def test_index_referrer(client: httpx.Client, repo: str) -> None:
    """An index with a subject is a referrer; without artifactType it shows none."""
    subject = push_image(client, repo, "app")
    child = push_image(client, repo, None)
    doc = index_manifest([child.descriptor()], subject=subject.descriptor(), annotations={"k": "v"})
    pushed = push_manifest(client, repo, None, doc)
    manifests = referrers(client, repo, subject.digest).json()["manifests"]
    assert manifests == [pushed.descriptor(annotations={"k": "v"})]


def test_empty_when_nothing_refers(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    response = referrers(client, repo, subject.digest)
    assert response.json()["manifests"] == []
    assert "oci-filters-applied" not in response.headers


def test_empty_for_unknown_repository_and_digest(client: httpx.Client) -> None:
    assert referrers(client, unique_repo(), ZERO_DIGEST).json()["manifests"] == []


def test_subject_pushed_later(client: httpx.Client, repo: str) -> None:
    """A referrer may arrive before its subject; it is listed either way."""
    doc = image_doc(client, repo)
    subject = Pushed(encode(doc), mt.OCI_MANIFEST)
    referrer = push_referrer(client, repo, subject.digest, artifactType=SBOM)
    assert_error(client.get(f"/v2/{repo}/manifests/{subject.digest}"), 404, "MANIFEST_UNKNOWN")
    assert referrers(client, repo, subject.digest).json()["manifests"] == [
        referrer.descriptor(artifactType=SBOM)
    ]
    push_manifest(client, repo, "late", doc)
    assert len(referrers(client, repo, subject.digest).json()["manifests"]) == 1


def test_artifact_type_filter(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    sbom = push_referrer(client, repo, subject, artifactType=SBOM)
    push_referrer(client, repo, subject, artifactType=SIGNATURE)
    push_referrer(client, repo, subject, config_media_type=CUSTOM_CONFIG)
    response = referrers(client, repo, subject.digest, artifactType=SBOM)
    assert response.headers["oci-filters-applied"] == "artifactType"
    assert response.json()["manifests"] == [sbom.descriptor(artifactType=SBOM)]
    response = referrers(client, repo, subject.digest, artifactType=CUSTOM_CONFIG)
    assert [d["artifactType"] for d in response.json()["manifests"]] == [CUSTOM_CONFIG]
    response = referrers(client, repo, subject.digest, artifactType="application/none")
    assert response.headers["oci-filters-applied"] == "artifactType"
    assert response.json()["manifests"] == []
    assert len(referrers(client, repo, subject.digest).json()["manifests"]) == 3


def test_referrers_are_per_repository(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    push_referrer(client, repo, subject, artifactType=SBOM)
    other = unique_repo("referrers")
    push_image(client, other, "app")
    assert referrers(client, other, subject.digest).json()["manifests"] == []


def test_deleted_referrer_is_not_listed(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    referrer = push_referrer(client, repo, subject, artifactType=SBOM)
    assert client.delete(f"/v2/{repo}/manifests/{referrer.digest}").status_code == 202
    assert referrers(client, repo, subject.digest).json()["manifests"] == []


def test_subject_descriptor_must_be_valid(client: httpx.Client, repo: str) -> None:
    doc = image_doc(client, repo, subject={"mediaType": mt.OCI_MANIFEST, "digest": "x", "size": 1})
    response = put_manifest(client, repo, "t", encode(doc), mt.OCI_MANIFEST)
    assert_error(response, 400, "MANIFEST_INVALID")


def test_artifact_manifest_with_custom_config_and_layers(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "app")
    config = push_descriptor(client, repo, CUSTOM_CONFIG, b'{"k":1}')
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": SBOM,
        "config": config,
        "layers": [push_descriptor(client, repo, "text/spdx+json", b"{}")],
        "subject": subject.descriptor(),
    }
    pushed = push_manifest(client, repo, None, doc)
    assert referrers(client, repo, subject.digest).json()["manifests"] == [
        pushed.descriptor(artifactType=SBOM)
    ]
    assert descriptor(mt.OCI_MANIFEST, pushed.body) == pushed.descriptor()


@pytest.mark.parametrize(
    "digest", ["notadigest", "sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:"]
)
def test_invalid_digest(client: httpx.Client, repo: str, digest: str) -> None:
    assert_error(client.get(f"/v2/{repo}/referrers/{digest}"), 400, "DIGEST_INVALID")
