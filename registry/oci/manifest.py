"""Parsing and validation of image manifests and indexes (image-spec and Docker schema2).

`parse_manifest` turns the exact bytes a client pushed into a `Manifest`, naming every
descriptor it references, or raises `ManifestError` saying what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.oci import mediatypes as mt
from registry.oci.digest import Digest, DigestError


class ManifestError(ValueError):
    """Bytes that are not a valid manifest or index."""


MAX_SIZE = 2**63 - 1  # a descriptor's size must fit the database's 64-bit integers


@dataclass(frozen=True, slots=True)
class Platform:
    architecture: str
    os: str
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            plat = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def referrer_artifact_type(self) -> str | None:
        """The `artifactType` a referrers listing shows for this manifest."""
        if self.artifact_type:
            return self.artifact_type
        if not self.is_index and self.config is not None:
            return self.config.media_type
        return None


def detect_media_type(doc: dict[str, Any], content_type: str | None) -> str:
    """The manifest's media type: its `mediaType` field, else the request's Content-Type."""
    declared = doc.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip()
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("mediaType must be a string")
    if declared and header and header in mt.MANIFESTS and header != declared:
        raise ManifestError(f"mediaType {declared!r} does not match Content-Type {header!r}")
    if declared:
        return declared
    if header in mt.MANIFESTS:
        return header
    return mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST


def parse_manifest(data: bytes, content_type: str | None = None) -> Manifest:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except ValueError:  # a number of more than 4,300 digits: Python's int-conversion limit
        raise ManifestError("manifest holds a number too long to read") from None
    except RecursionError:
        raise ManifestError("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    media_type = detect_media_type(doc, content_type)
    if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise ManifestError("Docker schema1 manifests are not supported")
    if media_type not in mt.MANIFESTS:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError("schemaVersion must be 2")
    artifact_type = _optional_str(doc, "artifactType")
    annotations = _annotations(doc.get("annotations"), "annotations")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    if media_type in mt.INDEXES:
        children = _descriptor_list(doc.get("manifests"), "manifests")
        for child in children:
            if media_type == mt.DOCKER_MANIFEST_LIST and child.media_type not in mt.MANIFESTS:
                raise ManifestError(f"manifest list entry has media type {child.media_type!r}")
        return Manifest(media_type, None, (), children, subject, artifact_type, annotations)
    if "config" not in doc:
        raise ManifestError("image manifest has no config")
    config = _descriptor(doc["config"], "config")
    layers = _descriptor_list(doc.get("layers", [] if artifact_type else None), "layers")
    if media_type == mt.DOCKER_MANIFEST and artifact_type:
        raise ManifestError("Docker schema2 manifests cannot carry artifactType")
    return Manifest(media_type, config, layers, (), subject, artifact_type, annotations)


def parse_descriptor(raw: Any) -> Descriptor:
    return _descriptor(raw, "descriptor")


def _descriptor_list(raw: Any, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(raw, list):
        raise ManifestError(f"{where} must be a list")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must be an object")
    media_type = raw.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{where}.mediaType must be a non-empty string")
    digest = raw.get("digest")
    if not isinstance(digest, str):
        raise ManifestError(f"{where}.digest must be a string")
    try:
        Digest.parse(digest)
    except DigestError as exc:
        raise ManifestError(f"{where}.digest: {exc}") from None
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise ManifestError(f"{where}.size must be a non-negative 64-bit integer")
    urls = raw.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}.urls must be a list of strings")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations=_annotations(raw.get("annotations"), f"{where}.annotations"),
        artifact_type=_optional_str(raw, "artifactType"),
        platform=_platform(raw.get("platform"), where),
        urls=tuple(urls),
    )


def _platform(raw: Any, where: str) -> Platform | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}.platform must be an object")
    arch, os_ = raw.get("architecture"), raw.get("os")
    if not isinstance(arch, str) or not isinstance(os_, str):
        raise ManifestError(f"{where}.platform needs architecture and os strings")
    variant = raw.get("variant")
    return Platform(arch, os_, variant if isinstance(variant, str) else None)


def _annotations(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ManifestError(f"{where} must map strings to strings")
    return dict(raw)


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{key} must be a string")
    return value or None
