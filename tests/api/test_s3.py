"""What the API does on S3 only: chunked pushes that move between processes without reading
back, pulls redirected to presigned URLs, and S3 failing under the registry (through a TCP
proxy the tests cut). The rest of the API suite runs on S3 too (support/backends.py)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.helpers import (
    assert_blob,
    assert_error,
    digest_of,
    patch_chunk,
    push_blob,
    start_upload,
    unique_repo,
    upload_range,
)

from support.seaweedfs import SeaweedFS
from support.server import RegistryServer
from support.tcpproxy import TcpProxy

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_proxy(seaweedfs: SeaweedFS) -> Iterator[TcpProxy]:
    """The session's SeaweedFS behind a proxy that counts bytes and can be cut."""
    proxy = TcpProxy("127.0.0.1", seaweedfs.ports["s3"])
    proxy.start()
    yield proxy
    proxy.stop()


def s3_server(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, endpoint: str, **env: str
) -> RegistryServer:
    settings = seaweedfs.settings(bucket)
    settings["REGISTRY_STORAGE_S3_ENDPOINT_URL"] = endpoint
    settings.update(env)
    return RegistryServer(tmp_path, env=settings)


@pytest.fixture
def two_processes(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS, s3_proxy: TcpProxy
) -> Iterator[tuple[RegistryServer, RegistryServer]]:
    """Two registry processes sharing one database and one bucket (reached through the
    counting proxy), as two replicas would."""
    root = tmp_path_factory.mktemp("replicas")
    bucket = seaweedfs.new_bucket("replicas")
    database = {"REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'shared.db'}"}
    servers = [s3_server(root / name, seaweedfs, bucket, s3_proxy.url, **database) for name in "ab"]
    for server in servers:
        server.start()
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def test_chunked_push_across_two_processes_reads_nothing_back(
    two_processes: tuple[RegistryServer, RegistryServer], s3_proxy: TcpProxy
) -> None:
    """64 MiB in 16 MiB chunks, each PATCH on the other process: the hash state travels
    with the session, so S3 sends back (headers and listings aside) less than one PATCH
    wrote, not the whole upload again at every switch."""
    a, b = two_processes
    chunk, count = 16 * MiB, 4
    data = os.urandom(chunk * count)
    repo = unique_repo("replicas")
    clients = [httpx.Client(base_url=s.url, timeout=120) for s in (a, b)]
    try:
        location = start_upload(clients[0], repo)
        s3_proxy.reset_counts()
        for i in range(count):
            part = data[i * chunk : (i + 1) * chunk]
            response = patch_chunk(clients[i % 2], location, part, i * chunk)
            assert response.status_code == 202, response.text
        response = clients[count % 2].put(location, params={"digest": digest_of(data)})
        assert response.status_code == 201, response.text
        read_back = s3_proxy.downstream_bytes
        assert read_back < chunk, f"{read_back} bytes came back from S3"
        assert s3_proxy.upstream_bytes >= len(data)
        for client in clients:
            assert_blob(client, repo, data)
    finally:
        for client in clients:
            client.close()


@pytest.fixture(scope="module")
def redirecting(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS
) -> Iterator[RegistryServer]:
    bucket = seaweedfs.new_bucket("redirect")
    server = s3_server(
        tmp_path_factory.mktemp("redirect") / "data",
        seaweedfs,
        bucket,
        seaweedfs.endpoint,
        REGISTRY_STORAGE_S3_REDIRECT="true",
        REGISTRY_STORAGE_S3_REDIRECT_SECONDS="120",
    )
    server.start()
    yield server
    server.stop()


def test_redirected_pulls(redirecting: RegistryServer, seaweedfs: SeaweedFS) -> None:
    """GET answers 307 to a short-lived presigned URL of the object (with Range followed
    there); HEAD is answered by the registry itself."""
    data = os.urandom(3 * MiB + 5)
    repo = unique_repo("redirect")
    with httpx.Client(base_url=redirecting.url, timeout=60) as c:
        digest = push_blob(c, repo, data)
        response = c.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 307
        target = response.headers["location"]
        assert target.startswith(seaweedfs.endpoint + "/")
        assert "X-Amz-Expires=120" in target and "X-Amz-Signature=" in target
        assert response.headers["docker-content-digest"] == digest
        fetched = httpx.get(target, timeout=60)
        assert fetched.status_code == 200 and fetched.content == data
        ranged = httpx.get(target, headers={"Range": "bytes=10-19"}, timeout=60)
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        head = c.head(f"/v2/{repo}/blobs/{digest}")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        assert "location" not in head.headers
        # Authorization first: an unknown blob is a 404 here, never a redirect.
        assert_error(c.get(f"/v2/{repo}/blobs/{digest_of(b'none')}"), 404, "BLOB_UNKNOWN")
        # A client that follows redirects gets the bytes.
        followed = c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert hashlib.sha256(followed.content).hexdigest() == digest.split(":")[1]


@pytest.fixture
def behind_proxy(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS, s3_proxy: TcpProxy
) -> Iterator[RegistryServer]:
    bucket = seaweedfs.new_bucket("faults")
    server = s3_server(
        tmp_path_factory.mktemp("s3faults") / "data", seaweedfs, bucket, s3_proxy.url
    )
    server.start()
    yield server
    s3_proxy.restore() if s3_proxy._listener is None else None
    server.stop()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    if response.request.method != "HEAD":
        errors = response.json()["errors"]
        assert errors[0]["code"] == "UNKNOWN"
        assert "unavailable" in errors[0]["message"]


def test_s3_out_of_reach(behind_proxy: RegistryServer, s3_proxy: TcpProxy) -> None:
    """S3 unreachable: pushes and pulls answer 503 with Retry-After in the spec's JSON,
    nothing half-done becomes visible, and everything goes on once S3 is back. (A blob HEAD
    answers from the sizes the registry saw lately: the blob's bytes cannot change.)"""
    repo = unique_repo("s3faults")
    stored, first, rest = os.urandom(2 * MiB), os.urandom(6 * MiB), os.urandom(3 * MiB)
    with httpx.Client(base_url=behind_proxy.url, timeout=120) as c:
        seen = push_blob(c, repo, stored)
        assert c.head(f"/v2/{repo}/blobs/{seen}").status_code == 200  # its size is known now
        unseen = push_blob(c, repo, os.urandom(1000))
        location = start_upload(c, repo)
        assert patch_chunk(c, location, first, 0).status_code == 202
        s3_proxy.cut()
        try:
            assert_unavailable(patch_chunk(c, location, rest, len(first)))
            assert upload_range(c, location) == f"0-{len(first) - 1}"
            assert_unavailable(c.put(location, params={"digest": digest_of(first)}))
            # The GET fails on its first block, before a status line promised the bytes.
            assert_unavailable(c.get(f"/v2/{repo}/blobs/{seen}"))
            assert_unavailable(c.get(f"/v2/{repo}/blobs/{unseen}"))
            assert_unavailable(c.head(f"/v2/{repo}/blobs/{unseen}"))
            assert c.head(f"/v2/{repo}/blobs/{seen}").status_code == 200
            monolithic = os.urandom(2 * MiB)
            response = c.post(
                f"/v2/{repo}/blobs/uploads/",
                params={"digest": digest_of(monolithic)},
                content=monolithic,
            )
            assert_unavailable(response)
            assert c.get("/v2/").status_code == 200  # the registry itself is fine
        finally:
            s3_proxy.restore()
        assert_error(c.get(f"/v2/{repo}/blobs/{digest_of(first)}"), 404, "BLOB_UNKNOWN")
        assert patch_chunk(c, location, rest, len(first)).status_code == 202
        response = c.put(location, params={"digest": digest_of(first + rest)})
        assert response.status_code == 201, response.text
        assert_blob(c, repo, first + rest)
        assert_blob(c, repo, stored, seen)


def test_commit_cut_midway_is_retried_whole(
    behind_proxy: RegistryServer, s3_proxy: TcpProxy
) -> None:
    """The finishing PUT fails with S3 gone (after the parts are in): no blob is visible,
    the session is intact, and the client's retry of the PUT completes it."""
    repo = unique_repo("s3faults")
    data = os.urandom(7 * MiB + 3)  # a part and a tail
    with httpx.Client(base_url=behind_proxy.url, timeout=120) as c:
        location = start_upload(c, repo)
        assert patch_chunk(c, location, data[: 6 * MiB], 0).status_code == 202
        assert patch_chunk(c, location, data[6 * MiB :], 6 * MiB).status_code == 202
        s3_proxy.cut()
        try:
            assert_unavailable(c.put(location, params={"digest": digest_of(data)}))
        finally:
            s3_proxy.restore()
        assert_error(c.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")
        assert c.put(location, params={"digest": digest_of(data)}).status_code == 201
        assert_blob(c, repo, data)


def test_throttling_is_retried_then_answered_503(
    behind_proxy: RegistryServer, s3_proxy: TcpProxy
) -> None:
    """S3 answering SlowDown: a few times, and the registry's retries (with backoff) carry
    the push through; all the time, and the client gets 503 with Retry-After, the upload as
    it was."""
    repo = unique_repo("s3faults")
    data = os.urandom(7 * MiB + 1)
    with httpx.Client(base_url=behind_proxy.url, timeout=120) as c:
        location = start_upload(c, repo)
        s3_proxy.throttle(2)
        assert patch_chunk(c, location, data[: 6 * MiB], 0).status_code == 202
        assert s3_proxy.throttled_answers == 2
        s3_proxy.throttle(1000)
        try:
            assert_unavailable(patch_chunk(c, location, data[6 * MiB :], 6 * MiB))
        finally:
            s3_proxy.throttle(0)
        assert upload_range(c, location) == f"0-{6 * MiB - 1}"
        assert patch_chunk(c, location, data[6 * MiB :], 6 * MiB).status_code == 202
        assert c.put(location, params={"digest": digest_of(data)}).status_code == 201
        assert_blob(c, repo, data)


def test_each_worker_touches_s3_before_it_serves(
    tmp_path: Path, seaweedfs: SeaweedFS, s3_proxy: TcpProxy
) -> None:
    """Both workers open their S3 connection (loading botocore's models) while starting,
    not at the first push they serve: with no request to either, each connects."""
    bucket = seaweedfs.new_bucket("warm")
    server = s3_server(tmp_path / "data", seaweedfs, bucket, s3_proxy.url)
    server.extra_args = ["--workers", "2"]
    before = sum(s3_proxy.connections)
    server.start()
    try:
        deadline = time.monotonic() + 30  # the second worker may still be starting
        while sum(s3_proxy.connections) - before < 2:
            assert time.monotonic() < deadline, f"{sum(s3_proxy.connections) - before} connected"
            time.sleep(0.05)
    finally:
        server.stop()
