"""Registry operations the workloads are made of, over the raw clients: the same HTTP calls for
both servers (POST + PUT for a monolithic push, as Distribution has no single-POST upload).
"""

from __future__ import annotations

import hashlib
import json
from typing import BinaryIO

from bench.asyncraw import AsyncConnection
from bench.rawhttp import Connection, FileBody, expect, path_of, with_query

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCTETS = {"Content-Type": "application/octet-stream"}


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def file_digest(file: BinaryIO, size: int, block: int = 16 * 1024 * 1024) -> str:
    hasher = hashlib.sha256()
    file.seek(0)
    remaining = size
    while remaining:
        chunk = file.read(min(block, remaining))
        if not chunk:
            raise ValueError("file shorter than expected")
        hasher.update(chunk)
        remaining -= len(chunk)
    return f"sha256:{hasher.hexdigest()}"


def config_blob(layer_digests: list[str]) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "config": {},
    }
    return json.dumps(config, sort_keys=True).encode()


def image_manifest(config: tuple[str, int], layers: list[tuple[str, int]]) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
    }
    return json.dumps(manifest, sort_keys=True).encode()


# -- blocking ----------------------------------------------------------------------------------


def start_upload(conn: Connection, repo: str, headers: dict[str, str] | None = None) -> str:
    response = expect(
        conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers), 202, what="start upload"
    )
    return path_of(response.header("location"))


def push_blob(
    conn: Connection,
    repo: str,
    digest: str,
    body: bytes | FileBody,
    headers: dict[str, str] | None = None,
) -> None:
    """A monolithic push: POST, then PUT with the whole body and the digest."""
    location = start_upload(conn, repo, headers)
    expect(
        conn.request("PUT", with_query(location, digest=digest), {**OCTETS, **(headers or {})},
                     body),
        201,
        what="monolithic push",
    )  # fmt: skip


def push_blob_chunked(
    conn: Connection, repo: str, digest: str, file: BinaryIO, size: int, chunk: int
) -> None:
    """POST, a PATCH per `chunk` bytes with Content-Range, then an empty PUT with the digest."""
    location = start_upload(conn, repo)
    offset = 0
    while offset < size:
        count = min(chunk, size - offset)
        headers = {**OCTETS, "Content-Range": f"{offset}-{offset + count - 1}"}
        response = expect(
            conn.request("PATCH", location, headers, FileBody(file, offset, count)),
            202,
            what="chunk",
        )
        location = path_of(response.header("location"))
        offset += count
    expect(conn.request("PUT", with_query(location, digest=digest)), 201, what="final PUT")


def pull_blob(conn: Connection, repo: str, digest: str) -> int:
    """GET a blob, discarding its bytes; return how many arrived."""
    response = expect(
        conn.request("GET", f"/v2/{repo}/blobs/{digest}", discard_body=True), 200, what="pull"
    )
    return response.body_bytes


def pull_blob_redirected(conn: Connection, repo: str, digest: str) -> int:
    """GET a blob that the registry redirects (307) to storage, and follow the redirect on a
    connection to that host; return how many bytes arrived."""
    from urllib.parse import urlsplit

    response = expect(conn.request("GET", f"/v2/{repo}/blobs/{digest}"), 307, what="redirect")
    target = urlsplit(response.header("location"))
    if target.scheme != "http" or not target.netloc:
        raise RuntimeError(f"unexpected redirect {target.geturl()[:200]}")
    with Connection(target.netloc) as storage:
        path = f"{target.path}?{target.query}" if target.query else target.path
        pulled = expect(storage.request("GET", path, discard_body=True), 200, what="from storage")
    return pulled.body_bytes


def put_manifest(
    conn: Connection,
    repo: str,
    reference: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> str:
    response = expect(
        conn.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            {"Content-Type": OCI_MANIFEST, **(headers or {})},
            body,
        ),
        201,
        what="manifest push",
    )
    return response.header("docker-content-digest")


def push_image(
    conn: Connection, repo: str, tag: str, layer: bytes, headers: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """A one-layer image with a small config: returns (manifest digest, manifest bytes)."""
    layer_digest = sha256_digest(layer)
    config = config_blob([layer_digest])
    config_digest = sha256_digest(config)
    push_blob(conn, repo, layer_digest, layer, headers)
    push_blob(conn, repo, config_digest, config, headers)
    manifest = image_manifest((config_digest, len(config)), [(layer_digest, len(layer))])
    put_manifest(conn, repo, tag, manifest, headers)
    return sha256_digest(manifest), manifest


# -- asyncio -----------------------------------------------------------------------------------


async def apush_blob(conn: AsyncConnection, repo: str, digest: str, data: bytes) -> None:
    started = expect(
        await conn.request("POST", f"/v2/{repo}/blobs/uploads/"), 202, what="start upload"
    )
    location = with_query(path_of(started.header("location")), digest=digest)
    expect(await conn.request("PUT", location, OCTETS, data), 201, what="monolithic push")


async def aput_manifest(conn: AsyncConnection, repo: str, reference: str, body: bytes) -> None:
    response = await conn.request(
        "PUT", f"/v2/{repo}/manifests/{reference}", {"Content-Type": OCI_MANIFEST}, body
    )
    expect(response, 201, what="manifest push")


async def amount_blob(conn: AsyncConnection, repo: str, digest: str, source: str) -> None:
    """Cross-repository mount: links an existing blob into `repo` without sending bytes."""
    path = with_query(f"/v2/{repo}/blobs/uploads/", mount=digest, **{"from": source})
    expect(await conn.request("POST", path), 201, what="mount")
