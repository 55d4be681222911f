"""`registry.oci.manifest`: parsing manifests and indexes from the bytes a client pushed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.oci import mediatypes as mt
from registry.oci.manifest import (
    Descriptor,
    ManifestError,
    Platform,
    detect_media_type,
    parse_descriptor,
    parse_manifest,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
CONFIG = {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 10}
LAYER = {"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 20}


def manifest(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": CONFIG,
        "layers": [LAYER],
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def index(**fields: Any) -> dict[str, Any]:
    child = {"mediaType": mt.OCI_MANIFEST, "digest": D3, "size": 30}
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child]}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def parse(doc: dict[str, Any] | list[Any], content_type: str | None = None) -> Any:
    return parse_manifest(json.dumps(doc).encode(), content_type)


def test_image_manifest() -> None:
    m = parse(manifest(annotations={"a": "b"}))
    assert m.media_type == mt.OCI_MANIFEST
    assert not m.is_index
    assert m.config == Descriptor(mt.OCI_CONFIG, D1, 10)
    assert m.layers == (Descriptor(mt.OCI_LAYER_GZIP, D2, 20),)
    assert m.manifests == ()
    assert m.subject is None
    assert m.annotations == {"a": "b"}
    assert m.referrer_artifact_type == mt.OCI_CONFIG


def test_index() -> None:
    platform = {"architecture": "arm64", "os": "linux", "variant": "v8"}
    doc = index()
    doc["manifests"][0]["platform"] = platform
    m = parse(doc)
    assert m.is_index
    assert m.config is None and m.layers == ()
    assert m.manifests[0].digest == D3
    assert m.manifests[0].platform == Platform("arm64", "linux", "v8")
    assert m.referrer_artifact_type is None


def test_docker_manifest_and_list() -> None:
    m = parse(
        manifest(mediaType=mt.DOCKER_MANIFEST, config={**CONFIG, "mediaType": mt.DOCKER_CONFIG})
    )
    assert m.media_type == mt.DOCKER_MANIFEST
    doc = index(mediaType=mt.DOCKER_MANIFEST_LIST)
    doc["manifests"][0]["mediaType"] = mt.DOCKER_MANIFEST
    assert parse(doc).media_type == mt.DOCKER_MANIFEST_LIST


def test_artifact_type_and_subject() -> None:
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": D3, "size": 5}
    m = parse(manifest(artifactType="application/x.sbom", subject=subject))
    assert m.artifact_type == "application/x.sbom"
    assert m.referrer_artifact_type == "application/x.sbom"
    assert m.subject == Descriptor(mt.OCI_MANIFEST, D3, 5)
    assert parse(index(artifactType="application/x.list")).referrer_artifact_type == (
        "application/x.list"
    )


def test_artifact_may_omit_layers() -> None:
    m = parse(manifest(layers=None, artifactType="application/x.a"))
    assert m.layers == ()


def test_empty_artifact_type_counts_as_none() -> None:
    assert parse(manifest(artifactType="")).referrer_artifact_type == mt.OCI_CONFIG


def test_descriptor_fields() -> None:
    d = parse_descriptor(
        {
            "mediaType": mt.OCI_LAYER,
            "digest": D1,
            "size": 0,
            "urls": ["https://example.com/l"],
            "annotations": {"k": "v"},
            "artifactType": "application/x",
            "data": "e30=",
            "unknownField": True,
        }
    )
    assert d.urls == ("https://example.com/l",)
    assert d.annotations == {"k": "v"}
    assert d.artifact_type == "application/x"
    assert d.to_json() == {
        "mediaType": mt.OCI_LAYER,
        "digest": D1,
        "size": 0,
        "artifactType": "application/x",
        "annotations": {"k": "v"},
    }


def test_descriptor_to_json_with_platform() -> None:
    d = Descriptor(mt.OCI_MANIFEST, D1, 1, platform=Platform("amd64", "linux"))
    assert d.to_json()["platform"] == {"architecture": "amd64", "os": "linux"}


@pytest.mark.parametrize(
    ("doc", "content_type", "expected"),
    [
        ({"mediaType": mt.OCI_INDEX}, None, mt.OCI_INDEX),
        ({"mediaType": mt.OCI_INDEX}, mt.OCI_INDEX + "; charset=utf-8", mt.OCI_INDEX),
        ({"mediaType": mt.OCI_INDEX}, "application/json", mt.OCI_INDEX),
        ({}, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST),
        ({}, None, mt.OCI_MANIFEST),
        ({"manifests": []}, None, mt.OCI_INDEX),
        ({"manifests": []}, "application/octet-stream", mt.OCI_INDEX),
    ],
)
def test_detect_media_type(doc: dict[str, Any], content_type: str | None, expected: str) -> None:
    assert detect_media_type(doc, content_type) == expected


@pytest.mark.parametrize(
    ("doc", "content_type", "message"),
    [
        (manifest(), mt.OCI_INDEX, "does not match"),
        (manifest(mediaType=7), None, "mediaType must be a string"),
        (manifest(schemaVersion=1), None, "schemaVersion"),
        (manifest(schemaVersion="2"), None, "schemaVersion"),
        (manifest(schemaVersion=None), None, "schemaVersion"),
        (manifest(mediaType=mt.DOCKER_SCHEMA1), None, "schema1"),
        (manifest(mediaType=mt.DOCKER_SCHEMA1_SIGNED), None, "schema1"),
        (manifest(mediaType="application/json"), None, "unsupported"),
        (manifest(config=None), None, "no config"),
        (manifest(config="x"), None, "config must be an object"),
        (manifest(layers=None), None, "layers must be a list"),
        (manifest(layers={"a": 1}), None, "layers must be a list"),
        (manifest(layers=[7]), None, r"layers\[0\] must be an object"),
        (manifest(config={**CONFIG, "mediaType": ""}), None, "mediaType"),
        (manifest(config={**CONFIG, "mediaType": None}), None, "mediaType"),
        (manifest(config={**CONFIG, "digest": 5}), None, "digest must be a string"),
        (manifest(config={**CONFIG, "digest": "sha256:x"}), None, "config.digest"),
        (manifest(config={**CONFIG, "size": -1}), None, "size"),
        (manifest(config={**CONFIG, "size": 1.5}), None, "size"),
        (manifest(config={**CONFIG, "size": True}), None, "size"),
        (manifest(config={**CONFIG, "urls": "x"}), None, "urls"),
        (manifest(config={**CONFIG, "urls": [1]}), None, "urls"),
        (manifest(config={**CONFIG, "platform": "x"}), None, "platform"),
        (manifest(config={**CONFIG, "platform": {"os": "linux"}}), None, "platform"),
        (manifest(annotations=[]), None, "annotations"),
        (manifest(annotations={"a": 1}), None, "annotations"),
        (manifest(config={**CONFIG, "annotations": {"a": None}}), None, "annotations"),
        (manifest(artifactType=5), None, "artifactType"),
        (manifest(subject="x"), None, "subject"),
        (manifest(mediaType=mt.DOCKER_MANIFEST, artifactType="a/b"), None, "artifactType"),
        (index(manifests=None), None, "manifests must be a list"),
        (
            index(mediaType=mt.DOCKER_MANIFEST_LIST, manifests=[CONFIG]),
            None,
            "manifest list entry",
        ),
    ],
)
def test_invalid(doc: dict[str, Any], content_type: str | None, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(doc, content_type)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff", b"[]", b"null", b'"x"', b"1"])
def test_not_a_json_object(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_parsing_keeps_no_state_of_the_bytes() -> None:
    """Whitespace and key order do not matter to parsing; storage keeps the bytes as sent."""
    doc = manifest()
    compact = json.dumps(doc, separators=(",", ":")).encode()
    spaced = json.dumps(dict(reversed(doc.items())), indent=4).encode()
    assert parse_manifest(compact) == parse_manifest(spaced)


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    with pytest.raises(ManifestError, match="nested too deeply"):
        parse_manifest(b"[" * 100_000 + b"]" * 100_000)
