"""Pushing blobs and manifests from API tests, and checking the spec's error answers.

Every test works in repositories of its own (`unique_repo`), so tests sharing the session's
server never see each other's content.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from registry.oci import mediatypes as mt

API_VERSION = "registry/2.0"
ZERO_DIGEST = "sha256:" + "0" * 64


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def unique_repo(prefix: str = "test") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def assert_version(response: httpx.Response) -> None:
    assert response.headers["docker-distribution-api-version"] == API_VERSION


def assert_error(response: httpx.Response, status: int, *codes: str) -> list[dict[str, Any]]:
    """The answer is `status` with the spec's error body, whose first code is `codes[0]`.

    Any further `codes` must appear somewhere in the list. Returns the error entries.
    """
    assert response.status_code == status, response.text
    assert_version(response)
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["errors"]
    assert isinstance(errors, list) and errors
    for entry in errors:
        assert set(entry) == {"code", "message", "detail"}, entry
        assert isinstance(entry["message"], str) and entry["message"]
    found = [entry["code"] for entry in errors]
    if codes:
        assert found[0] == codes[0], found
        assert set(codes) <= set(found), found
    return errors


def assert_4xx_json(response: httpx.Response) -> str:
    """A client error with the spec's JSON body, never a server error; returns its code."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_error(response, response.status_code)[0]["code"]  # type: ignore[no-any-return]


def raw_request(
    base_url: str, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """Send exactly these headers and body, even when they disagree (httpx would refuse)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        conn.send(body)
        answer = conn.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        conn.close()


# Blobs and uploads -----------------------------------------------------------------------


def push_blob(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    """One monolithic `POST ?digest=`; returns the digest."""
    digest = digest_of(data, algorithm)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == digest
    assert_version(response)
    return digest


def start_upload(client: httpx.Client, repo: str) -> str:
    """A new upload session; returns its Location."""
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    assert response.headers["range"] == "0-0"
    assert_version(response)
    return response.headers["location"]


def patch_chunk(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    end = start + len(data) - 1
    headers = {"Content-Range": f"{start}-{end}", "Content-Type": "application/octet-stream"}
    return client.patch(location, content=data, headers=headers)


def upload_range(client: httpx.Client, location: str) -> str:
    response = client.get(location)
    assert response.status_code == 204, response.text
    assert_version(response)
    return response.headers["range"]


def assert_blob(client: httpx.Client, repo: str, data: bytes, digest: str | None = None) -> None:
    digest = digest or digest_of(data)
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["docker-content-digest"] == digest
    assert_version(response)


# Manifests -------------------------------------------------------------------------------


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def push_descriptor(
    client: httpx.Client, repo: str, media_type: str, data: bytes
) -> dict[str, Any]:
    push_blob(client, repo, data)
    return descriptor(media_type, data)


def image_manifest(
    config: dict[str, Any],
    layers: list[dict[str, Any]],
    media_type: str = mt.OCI_MANIFEST,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config,
        "layers": layers,
        **extra,
    }


def index_manifest(
    children: list[dict[str, Any]], media_type: str = mt.OCI_INDEX, **extra: Any
) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": media_type, "manifests": children, **extra}


def put_manifest(
    client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str, **kwargs: Any
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=body,
        headers={"Content-Type": media_type},
        **kwargs,
    )


@dataclass(frozen=True)
class Pushed:
    """A manifest as pushed: its exact bytes, digest and media type."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.body)

    @property
    def size(self) -> int:
        return len(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return descriptor(self.media_type, self.body, **extra)


def push_manifest(
    client: httpx.Client,
    repo: str,
    reference: str | None,
    doc: dict[str, Any] | bytes,
    media_type: str | None = None,
) -> Pushed:
    """PUT a manifest by `reference` (by its own digest when None) and check the 201."""
    body = doc if isinstance(doc, bytes) else encode(doc)
    if media_type is None:
        assert isinstance(doc, dict)
        media_type = doc["mediaType"]
    pushed = Pushed(body, media_type)
    response = put_manifest(client, repo, reference or pushed.digest, body, media_type)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == pushed.digest
    assert response.headers["location"].endswith(f"/v2/{repo}/manifests/{pushed.digest}")
    assert_version(response)
    return pushed


def image_doc(
    client: httpx.Client,
    repo: str,
    layers: int = 1,
    media_type: str = mt.OCI_MANIFEST,
    config_media_type: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An image manifest whose config and `layers` random layers are pushed to `repo`."""
    if config_media_type is None:
        config_media_type = mt.DOCKER_CONFIG if media_type == mt.DOCKER_MANIFEST else mt.OCI_CONFIG
    layer_type = mt.DOCKER_LAYER_GZIP if media_type == mt.DOCKER_MANIFEST else mt.OCI_LAYER_GZIP
    config_bytes = encode({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex})
    config = push_descriptor(client, repo, config_media_type, config_bytes)
    blobs = [push_descriptor(client, repo, layer_type, os.urandom(64)) for _ in range(layers)]
    return image_manifest(config, blobs, media_type, **extra)


def push_image(client: httpx.Client, repo: str, tag: str | None = None, **kwargs: Any) -> Pushed:
    """Push an image (config, layers, manifest) by `tag`, or by digest when None."""
    return push_manifest(client, repo, tag, image_doc(client, repo, **kwargs))
