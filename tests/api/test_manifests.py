"""`/v2/<name>/manifests/<reference>`: every manifest kind, stored byte for byte."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from api.helpers import (
    ZERO_DIGEST,
    Pushed,
    assert_error,
    descriptor,
    digest_of,
    encode,
    image_doc,
    image_manifest,
    index_manifest,
    push_blob,
    push_descriptor,
    push_image,
    push_manifest,
    put_manifest,
    unique_repo,
)
from registry.oci import mediatypes as mt

from support.server import RegistryServer

ARTIFACT_TYPE = "application/vnd.example.sbom.v1"
CUSTOM_CONFIG = "application/vnd.example.config.v1+json"


@pytest.fixture
def repo() -> str:
    return unique_repo("manifests")


def assert_manifest(client: httpx.Client, repo: str, reference: str, pushed: Pushed) -> None:
    """GET and HEAD by `reference` answer exactly the pushed bytes and their media type."""
    response = client.get(f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 200, response.text
    assert response.content == pushed.body
    assert response.headers["content-type"] == pushed.media_type
    assert response.headers["docker-content-digest"] == pushed.digest
    assert response.headers["content-length"] == str(pushed.size)
    assert response.headers["etag"] == f'"{pushed.digest}"'
    head = client.head(f"/v2/{repo}/manifests/{reference}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == pushed.media_type
    assert head.headers["docker-content-digest"] == pushed.digest
    assert head.headers["content-length"] == str(pushed.size)


def push_index(
    client: httpx.Client, repo: str, tag: str | None, media_type: str = mt.OCI_INDEX
) -> tuple[Pushed, list[Pushed]]:
    child_type = mt.DOCKER_MANIFEST if media_type == mt.DOCKER_MANIFEST_LIST else mt.OCI_MANIFEST
    children = [push_image(client, repo, media_type=child_type) for _ in range(2)]
    platforms = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    doc = index_manifest(
        [c.descriptor(platform=p) for c, p in zip(children, platforms, strict=True)], media_type
    )
    return push_manifest(client, repo, tag, doc), children


class TestKinds:
    def test_oci_manifest(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, repo, "v1", layers=3)
        assert_manifest(client, repo, "v1", pushed)
        assert_manifest(client, repo, pushed.digest, pushed)

    def test_docker_manifest(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, repo, "v1", media_type=mt.DOCKER_MANIFEST)
        assert pushed.media_type == mt.DOCKER_MANIFEST
        assert_manifest(client, repo, "v1", pushed)
        assert_manifest(client, repo, pushed.digest, pushed)

    @pytest.mark.parametrize("media_type", [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST])
    def test_index(self, client: httpx.Client, repo: str, media_type: str) -> None:
        index, children = push_index(client, repo, "multi", media_type)
        assert_manifest(client, repo, "multi", index)
        assert_manifest(client, repo, index.digest, index)
        for child in children:
            assert_manifest(client, repo, child.digest, child)

    def test_artifact(self, client: httpx.Client, repo: str) -> None:
        config = push_descriptor(client, repo, CUSTOM_CONFIG, b'{"tool":"x"}')
        layer = push_descriptor(client, repo, "application/vnd.example.data", b"payload")
        doc = image_manifest(config, [layer], artifactType=ARTIFACT_TYPE)
        pushed = push_manifest(client, repo, "artifact", doc)
        assert_manifest(client, repo, "artifact", pushed)

    def test_artifact_with_empty_config_and_no_layers(
        self, client: httpx.Client, repo: str
    ) -> None:
        config = push_descriptor(client, repo, mt.OCI_EMPTY, b"{}")
        doc = image_manifest(config, [], artifactType=ARTIFACT_TYPE)
        pushed = push_manifest(client, repo, "empty", doc)
        assert_manifest(client, repo, "empty", pushed)

    def test_media_type_from_content_type(self, client: httpx.Client, repo: str) -> None:
        """A manifest without `mediaType` takes the media type it was pushed with."""
        doc = image_doc(client, repo)
        del doc["mediaType"]
        pushed = push_manifest(client, repo, "bare", doc, mt.OCI_MANIFEST)
        assert_manifest(client, repo, "bare", pushed)

    def test_non_distributable_layer_need_not_be_pushed(
        self, client: httpx.Client, repo: str
    ) -> None:
        doc = image_doc(client, repo, media_type=mt.DOCKER_MANIFEST)
        foreign = descriptor(mt.DOCKER_FOREIGN_LAYER, b"elsewhere", urls=["https://x/l"])
        doc["layers"].append(foreign)
        pushed = push_manifest(client, repo, "foreign", doc)
        assert_manifest(client, repo, "foreign", pushed)

    def test_sha512_digest(self, client: httpx.Client, repo: str) -> None:
        body = encode(image_doc(client, repo))
        digest = digest_of(body, "sha512")
        response = put_manifest(client, repo, digest, body, mt.OCI_MANIFEST)
        assert response.status_code == 201, response.text
        assert response.headers["docker-content-digest"] == digest
        got = client.get(f"/v2/{repo}/manifests/{digest}")
        assert got.status_code == 200
        assert got.content == body
        assert got.headers["docker-content-digest"] == digest


def test_stored_byte_for_byte(client: httpx.Client, repo: str) -> None:
    doc = image_doc(client, repo)
    layers = json.dumps(doc["layers"])
    config = json.dumps(doc["config"], indent=7)
    body = (
        f'\n\t{{ "layers" :{layers} ,\r\n   "config":   {config},'
        f'"schemaVersion":2,\n"mediaType"  :  "{mt.OCI_MANIFEST}" ,'
        f' "annotations": {{"z": "\\u00e9t\\u00e9", "a": "\u00e9"}}   }}\n\n  '
    ).encode()
    pushed = push_manifest(client, repo, "odd", body, mt.OCI_MANIFEST)
    assert pushed.digest == digest_of(body)
    assert_manifest(client, repo, "odd", pushed)
    assert_manifest(client, repo, digest_of(body), pushed)


def test_push_by_digest(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, repo, None)
    assert_manifest(client, repo, pushed.digest, pushed)
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


def test_push_by_digest_with_tags(client: httpx.Client, repo: str) -> None:
    body = encode(image_doc(client, repo))
    digest = digest_of(body)
    response = put_manifest(
        client, repo, digest, body, mt.OCI_MANIFEST, params=[("tag", "a"), ("tag", "b")]
    )
    assert response.status_code == 201
    assert response.headers.get_list("oci-tag", split_commas=True) == ["a", "b"]
    pushed = Pushed(body, mt.OCI_MANIFEST)
    assert_manifest(client, repo, "a", pushed)
    assert_manifest(client, repo, "b", pushed)
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


def test_push_by_digest_with_invalid_tag(client: httpx.Client, repo: str) -> None:
    body = encode(image_doc(client, repo))
    response = put_manifest(
        client, repo, digest_of(body), body, mt.OCI_MANIFEST, params={"tag": "-bad"}
    )
    assert_error(response, 400, "MANIFEST_INVALID")


def test_push_by_digest_with_too_many_tags(client: httpx.Client, repo: str) -> None:
    body = encode(image_doc(client, repo))
    tags = [("tag", f"t{i}") for i in range(101)]
    response = put_manifest(client, repo, digest_of(body), body, mt.OCI_MANIFEST, params=tags)
    assert_error(response, 414, "MANIFEST_INVALID")


def test_tag_moves_on_repush(client: httpx.Client, repo: str) -> None:
    first = push_image(client, repo, "latest")
    second = push_image(client, repo, "latest")
    assert first.digest != second.digest
    assert_manifest(client, repo, "latest", second)
    assert_manifest(client, repo, first.digest, first)  # still there by digest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]


def test_repush_is_idempotent(client: httpx.Client, repo: str) -> None:
    pushed = push_image(client, repo, "x")
    push_manifest(client, repo, "x", pushed.body, pushed.media_type)
    push_manifest(client, repo, "y", pushed.body, pushed.media_type)
    assert_manifest(client, repo, "y", pushed)


def test_longest_tag(client: httpx.Client, repo: str) -> None:
    tag = "T" + "a" * 127
    pushed = push_image(client, repo, tag)
    assert_manifest(client, repo, tag, pushed)


@pytest.mark.parametrize("tag", ["-x", ".x", "a" * 129, "t+u", "latest%0A"])
def test_invalid_tag(client: httpx.Client, repo: str, tag: str) -> None:
    body = encode(image_doc(client, repo))
    assert_error(put_manifest(client, repo, tag, body, mt.OCI_MANIFEST), 400, "MANIFEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.delete(f"/v2/{repo}/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")


class TestMissingReferences:
    def test_missing_config(self, client: httpx.Client, repo: str) -> None:
        doc = image_doc(client, repo)
        doc["config"] = descriptor(mt.OCI_CONFIG, b"never pushed")
        response = put_manifest(client, repo, "t", encode(doc), mt.OCI_MANIFEST)
        errors = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert errors[0]["detail"] == {"digest": doc["config"]["digest"]}
        assert_error(client.get(f"/v2/{repo}/manifests/t"), 404, "MANIFEST_UNKNOWN")
        body_digest = digest_of(encode(doc))
        assert_error(client.get(f"/v2/{repo}/manifests/{body_digest}"), 404, "MANIFEST_UNKNOWN")

    def test_missing_layers(self, client: httpx.Client, repo: str) -> None:
        doc = image_doc(client, repo)
        missing = [descriptor(mt.OCI_LAYER_GZIP, os.urandom(8)) for _ in range(2)]
        doc["layers"] += missing
        response = put_manifest(client, repo, "t", encode(doc), mt.OCI_MANIFEST)
        errors = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert [e["detail"]["digest"] for e in errors] == [m["digest"] for m in missing]
        assert_error(client.get(f"/v2/{repo}/manifests/t"), 404, "MANIFEST_UNKNOWN")

    def test_blob_of_another_repository(self, client: httpx.Client, repo: str) -> None:
        """Blobs are checked per repository: a layer pushed elsewhere does not count."""
        doc = image_doc(client, unique_repo("manifests"))
        push_blob(client, repo, b"something")
        response = put_manifest(client, repo, "t", encode(doc), mt.OCI_MANIFEST)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")

    def test_index_with_missing_child(self, client: httpx.Client, repo: str) -> None:
        present = push_image(client, repo, None)
        absent = descriptor(mt.OCI_MANIFEST, b'{"not":"pushed"}')
        doc = index_manifest([present.descriptor(), absent])
        response = put_manifest(client, repo, "idx", encode(doc), mt.OCI_INDEX)
        errors = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN")
        assert {e["detail"]["digest"] for e in errors} == {absent["digest"]}
        assert_error(client.get(f"/v2/{repo}/manifests/idx"), 404, "MANIFEST_UNKNOWN")

    def test_index_with_child_of_another_repository(self, client: httpx.Client, repo: str) -> None:
        elsewhere = push_image(client, unique_repo("manifests"), None)
        doc = index_manifest([elsewhere.descriptor()])
        response = put_manifest(client, repo, "idx", encode(doc), mt.OCI_INDEX)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN")


GOOD_DESCRIPTOR = {"mediaType": mt.OCI_CONFIG, "digest": ZERO_DIGEST, "size": 1}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", mt.OCI_MANIFEST),
        (b"", mt.OCI_MANIFEST),
        (b"\xff\xfe", mt.OCI_MANIFEST),
        (b"[]", mt.OCI_MANIFEST),
        (b'"a string"', mt.OCI_MANIFEST),
        (
            encode(
                {
                    "schemaVersion": 1,
                    "mediaType": mt.OCI_MANIFEST,
                    "config": GOOD_DESCRIPTOR,
                    "layers": [],
                }
            ),
            mt.OCI_MANIFEST,
        ),
        (
            encode(
                {
                    "schemaVersion": "2",
                    "mediaType": mt.OCI_MANIFEST,
                    "config": GOOD_DESCRIPTOR,
                    "layers": [],
                }
            ),
            mt.OCI_MANIFEST,
        ),
        (
            encode({"mediaType": mt.OCI_MANIFEST, "config": GOOD_DESCRIPTOR, "layers": []}),
            mt.OCI_MANIFEST,
        ),
        (encode(image_manifest({**GOOD_DESCRIPTOR, "digest": "sha256:abc"}, [])), mt.OCI_MANIFEST),
        (encode(image_manifest({**GOOD_DESCRIPTOR, "size": -1}, [])), mt.OCI_MANIFEST),
        (encode(image_manifest({**GOOD_DESCRIPTOR, "size": "1"}, [])), mt.OCI_MANIFEST),
        (encode(image_manifest({"digest": ZERO_DIGEST, "size": 1}, [])), mt.OCI_MANIFEST),
        (encode(image_manifest(GOOD_DESCRIPTOR, ["not an object"])), mt.OCI_MANIFEST),  # type: ignore[list-item]
        (encode(image_manifest(GOOD_DESCRIPTOR, None)), mt.OCI_MANIFEST),  # type: ignore[arg-type]
        (encode({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": []}), mt.OCI_MANIFEST),
        (encode(index_manifest("nope")), mt.OCI_INDEX),  # type: ignore[arg-type]
        (encode(index_manifest([{**GOOD_DESCRIPTOR, "digest": "md5:00"}])), mt.OCI_INDEX),
        (encode(image_manifest(GOOD_DESCRIPTOR, [], annotations={"a": 1})), mt.OCI_MANIFEST),
        (encode(image_manifest(GOOD_DESCRIPTOR, [])), mt.OCI_INDEX),  # disagrees with its header
        (
            encode(image_manifest(GOOD_DESCRIPTOR, [], media_type=mt.DOCKER_SCHEMA1)),
            mt.DOCKER_SCHEMA1,
        ),
        (encode(image_manifest(GOOD_DESCRIPTOR, [], media_type="text/plain")), "text/plain"),
        (
            encode(
                image_manifest(
                    GOOD_DESCRIPTOR, [], media_type=mt.DOCKER_MANIFEST, artifactType=ARTIFACT_TYPE
                )
            ),
            mt.DOCKER_MANIFEST,
        ),
        (
            encode(index_manifest([GOOD_DESCRIPTOR], media_type=mt.DOCKER_MANIFEST_LIST)),
            mt.DOCKER_MANIFEST_LIST,
        ),  # a list entry must be a manifest
    ],
)
def test_invalid_manifest(client: httpx.Client, repo: str, body: bytes, content_type: str) -> None:
    response = put_manifest(client, repo, "bad", body, content_type)
    assert_error(response, 400, "MANIFEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/bad"), 404, "NAME_UNKNOWN")


def test_digest_mismatch_on_push_by_digest(client: httpx.Client, repo: str) -> None:
    body = encode(image_doc(client, repo))
    wrong = digest_of(body + b" ")
    errors = assert_error(
        put_manifest(client, repo, wrong, body, mt.OCI_MANIFEST), 400, "DIGEST_INVALID"
    )
    assert errors[0]["detail"]["actual"] == digest_of(body)
    assert_error(client.get(f"/v2/{repo}/manifests/{digest_of(body)}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("reference", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64])
def test_malformed_digest_reference(client: httpx.Client, repo: str, reference: str) -> None:
    body = encode(image_doc(client, repo))
    assert_error(
        put_manifest(client, repo, reference, body, mt.OCI_MANIFEST), 400, "DIGEST_INVALID"
    )
    assert_error(client.get(f"/v2/{repo}/manifests/{reference}"), 400, "DIGEST_INVALID")
    assert_error(client.delete(f"/v2/{repo}/manifests/{reference}"), 400, "DIGEST_INVALID")


class TestSizeLimit:
    LIMIT = 4 * 1024 * 1024

    def _padded(self, client: httpx.Client, repo: str, size: int) -> bytes:
        """An image manifest of exactly `size` bytes, padded with an annotation."""
        doc = image_doc(client, repo, annotations={"pad": ""})
        padding = size - len(encode(doc))
        doc["annotations"]["pad"] = "x" * padding
        body = encode(doc)
        assert len(body) == size
        return body

    def test_at_the_limit(self, client: httpx.Client, repo: str) -> None:
        body = self._padded(client, repo, self.LIMIT)
        pushed = push_manifest(client, repo, "big", body, mt.OCI_MANIFEST)
        assert_manifest(client, repo, "big", pushed)

    def test_over_the_limit(self, client: httpx.Client, repo: str) -> None:
        body = self._padded(client, repo, self.LIMIT + 1)
        response = put_manifest(client, repo, "big", body, mt.OCI_MANIFEST)
        assert_error(response, 413, "MANIFEST_INVALID")
        assert_error(client.get(f"/v2/{repo}/manifests/big"), 404, "MANIFEST_UNKNOWN")

    def test_over_the_limit_without_content_length(self, client: httpx.Client, repo: str) -> None:
        body = self._padded(client, repo, self.LIMIT + 100_000)
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        response = put_manifest(client, repo, "big", pieces, mt.OCI_MANIFEST)  # type: ignore[arg-type]
        assert_error(response, 413, "MANIFEST_INVALID")
        assert client.get("/v2/").status_code == 200  # the connection is still usable


class TestDelete:
    def test_delete_by_digest_untags(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, repo, "a")
        push_manifest(client, repo, "b", pushed.body, pushed.media_type)
        other = push_image(client, repo, "c")
        response = client.delete(f"/v2/{repo}/manifests/{pushed.digest}")
        assert response.status_code == 202
        for reference in ("a", "b", pushed.digest):
            assert_error(client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
            assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404
        assert_manifest(client, repo, "c", other)
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["c"]
        response = client.delete(f"/v2/{repo}/manifests/{pushed.digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")

    def test_delete_tag_keeps_manifest(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, repo, "a")
        push_manifest(client, repo, "b", pushed.body, pushed.media_type)
        assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
        assert_error(client.get(f"/v2/{repo}/manifests/a"), 404, "MANIFEST_UNKNOWN")
        assert_manifest(client, repo, "b", pushed)
        assert_manifest(client, repo, pushed.digest, pushed)
        assert_error(client.delete(f"/v2/{repo}/manifests/a"), 404, "MANIFEST_UNKNOWN")

    def test_delete_in_unknown_repository(self, client: httpx.Client) -> None:
        name = unique_repo()
        assert_error(client.delete(f"/v2/{name}/manifests/latest"), 404, "NAME_UNKNOWN")
        assert_error(client.delete(f"/v2/{name}/manifests/{ZERO_DIGEST}"), 404, "NAME_UNKNOWN")

    def test_repush_after_delete(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, repo, "a")
        assert client.delete(f"/v2/{repo}/manifests/{pushed.digest}").status_code == 202
        push_manifest(client, repo, "a", pushed.body, pushed.media_type)
        assert_manifest(client, repo, "a", pushed)


def test_deletes_disabled(configured_server: RegistryServer) -> None:
    with httpx.Client(base_url=configured_server.url, timeout=30) as c:
        pushed = push_image(c, "no/deletes", "v1")
        layer = json.loads(pushed.body)["layers"][0]["digest"]
        for path in ("manifests/v1", f"manifests/{pushed.digest}", f"blobs/{layer}"):
            assert_error(c.delete(f"/v2/no/deletes/{path}"), 405, "UNSUPPORTED")
        assert_manifest(c, "no/deletes", "v1", pushed)
        assert c.head(f"/v2/no/deletes/blobs/{layer}").status_code == 200


class TestUnknown:
    def test_unknown_repository(self, client: httpx.Client) -> None:
        name = unique_repo()
        for reference in ("latest", ZERO_DIGEST):
            errors = assert_error(
                client.get(f"/v2/{name}/manifests/{reference}"), 404, "NAME_UNKNOWN"
            )
            assert errors[0]["detail"] == {"name": name}
            head = client.head(f"/v2/{name}/manifests/{reference}")
            assert head.status_code == 404
            assert head.content == b""

    def test_unknown_tag_and_digest(self, client: httpx.Client, repo: str) -> None:
        push_image(client, repo, "known")
        for reference in ("unknown", ZERO_DIGEST):
            errors = assert_error(
                client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN"
            )
            assert errors[0]["detail"] == {"reference": reference}

    def test_manifest_of_another_repository(self, client: httpx.Client, repo: str) -> None:
        pushed = push_image(client, unique_repo("manifests"), "a")
        push_image(client, repo, "b")
        response = client.get(f"/v2/{repo}/manifests/{pushed.digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")
