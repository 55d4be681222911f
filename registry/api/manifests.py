"""`/v2/<name>/manifests/<reference>`: push, pull, check and delete manifests by tag or digest."""

from __future__ import annotations

from typing import NoReturn

from starlette.requests import Request
from starlette.responses import Response

from registry.api.context import (
    Services,
    authorize,
    digest_headers,
    location,
    parse_digest,
    repository,
    require_deletes,
)
from registry.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    PayloadTooLarge,
)
from registry.metadata.store import MissingReferences
from registry.numbers import parse_decimal
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import Manifest, ManifestError, parse_manifest
from registry.oci.names import is_tag

MAX_TAGS_PER_PUSH = 100


def _reference(request: Request, pushing: bool = False) -> tuple[str, Digest | None]:
    """The path's reference, as (text, digest) for a digest or (tag, None) for a tag.

    A malformed tag cannot name anything: pulls and deletes get 404, pushes 400.
    """
    reference: str = request.path_params["reference"]
    if ":" in reference:
        return reference, parse_digest(reference)
    if not is_tag(reference):
        detail = {"tag": reference[:200]}
        if pushing:
            raise ManifestInvalid("invalid tag", detail=detail)
        raise ManifestUnknown("invalid tag", detail=detail)
    return reference, None


async def get_manifest(request: Request) -> Response:
    name = repository(request)
    reference, digest = _reference(request)
    svc = await authorize(request, name, ("pull",))
    stored = await svc.metadata.get_manifest(name, str(digest) if digest else reference)
    if stored is None:
        await _raise_unknown(svc, name, reference)
    if request.method == "GET" or digest is None:  # pull statistics (policies/pulls.py)
        svc.pulls.record(
            name, reference if digest is None else stored.digest, request.method == "GET"
        )
    headers = digest_headers(stored.digest, len(stored.content), stored.media_type)
    body = b"" if request.method == "HEAD" else stored.content
    return Response(body, 200, headers=headers)


async def _raise_unknown(svc: Services, name: str, reference: str) -> NoReturn:
    if await svc.metadata.repository_id(name) is None:
        raise NameUnknown(detail={"name": name})
    raise ManifestUnknown(detail={"reference": reference})


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    size = parse_decimal(declared)  # None: not ours to judge; the count below still holds
    if size is not None and size > limit:
        raise PayloadTooLarge(detail={"limit": limit})
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(detail={"limit": limit})
    return bytes(body)


async def put_manifest(request: Request) -> Response:
    name = repository(request)
    reference, by_digest = _reference(request, pushing=True)
    svc = await authorize(request, name, ("pull", "push"))
    content = await _read_body(request, svc.config.limits.max_manifest_bytes)
    try:
        manifest = parse_manifest(content, request.headers.get("content-type"))
    except ManifestError as exc:
        raise ManifestInvalid(str(exc)) from None
    digest = Digest.of(content, by_digest.algorithm if by_digest else "sha256")
    if by_digest is not None and digest != by_digest:
        raise DigestInvalid(detail={"digest": reference, "actual": str(digest)})
    tag_names = [] if by_digest else [reference]
    if by_digest is not None:
        tag_names = _extra_tags(request)
    blobs, children = _references(manifest)
    check = svc.policies.push_check(
        name, str(digest), len(content), _blob_digests(manifest), tag_names
    )
    missing = await svc.metadata.put_manifest(
        name,
        str(digest),
        content,
        manifest,
        tag_names,
        required_blobs=blobs,
        required_manifests=children,
        check=check,
    )
    if missing is not None:
        _raise_missing(missing)
    headers = {
        "Location": location(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
    }
    if manifest.subject is not None:
        headers["OCI-Subject"] = manifest.subject.digest
    response = Response(status_code=201, headers=headers)
    if by_digest is not None and tag_names:
        response.headers.append("OCI-Tag", ", ".join(tag_names))
    return response


def _extra_tags(request: Request) -> list[str]:
    """`?tag=` parameters of a push by digest (distribution-spec main)."""
    tag_names = list(dict.fromkeys(request.query_params.getlist("tag")))
    if len(tag_names) > MAX_TAGS_PER_PUSH:
        raise ManifestInvalid(f"at most {MAX_TAGS_PER_PUSH} tags per push", status=414)
    for tag in tag_names:
        if not is_tag(tag):
            raise ManifestInvalid("invalid tag", detail={"tag": tag[:200]})
    return tag_names


def _blob_digests(manifest: Manifest) -> list[str]:
    """The blobs a manifest adds to its namespace's usage: its config and layers."""
    config = [manifest.config.digest] if manifest.config else []
    return config + [layer.digest for layer in manifest.layers]


def _references(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The blobs and the child manifests that must already be in the repository."""
    if manifest.is_index:
        return [], [m.digest for m in manifest.manifests]
    wanted = [manifest.config.digest] if manifest.config else []
    wanted += [
        layer.digest
        for layer in manifest.layers
        if layer.media_type not in mt.NON_DISTRIBUTABLE_LAYERS
    ]
    return wanted, []


def _raise_missing(missing: MissingReferences) -> NoReturn:
    if missing.manifests:
        # The spec wants MANIFEST_BLOB_UNKNOWN; MANIFEST_UNKNOWN names each missing child too.
        errors = [ManifestUnknown(detail={"digest": d}) for d in missing.manifests]
        raise ManifestBlobUnknown(detail={"digest": missing.manifests[0]}, also=errors)
    extra = [ManifestBlobUnknown(detail={"digest": d}) for d in missing.blobs[1:]]
    raise ManifestBlobUnknown(detail={"digest": missing.blobs[0]}, also=extra)


async def delete_manifest(request: Request) -> Response:
    name = repository(request)
    reference, digest = _reference(request)
    svc = await authorize(request, name, ("delete",))
    require_deletes(svc)
    if digest is not None:
        guard = await svc.policies.manifest_delete_guard(name, str(digest))  # its tags go too
        deleted = await svc.metadata.delete_manifest(name, str(digest), guard)
    else:
        await svc.policies.check_delete_tag(name, reference)
        deleted = await svc.metadata.delete_tag(name, reference)
    if not deleted:
        await _raise_unknown(svc, name, reference)
    return Response(status_code=202, headers={"Content-Length": "0"})
