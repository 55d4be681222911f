"""Faults: clients that vanish mid-request, restarts mid-upload, races, and a big push.

Tests that restart the server or look at its files use one of this module's own (`own`),
restarting it as they need; the others use the session's server and check it still answers.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api.helpers import (
    assert_blob,
    assert_error,
    digest_of,
    encode,
    image_doc,
    patch_chunk,
    push_blob,
    start_upload,
    unique_repo,
    upload_range,
)
from registry.oci import mediatypes as mt

from support.backends import ServerFactory
from support.server import RegistryServer
from support.tmpfs import small_disk

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def own(make_server: ServerFactory) -> Iterator[RegistryServer]:
    """A server for this module alone: restarting it disturbs no other test."""
    server = make_server("faults")
    server.start()
    yield server
    server.stop()


def send_and_vanish(base_url: str, method: str, path: str, declared: int, body: bytes) -> None:
    """Send headers announcing `declared` bytes, then only `body`, then close the socket."""
    url = urlsplit(base_url)
    assert url.hostname and url.port
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.2)  # let the server start on the body before the connection drops


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[1]


class TestDisconnect:
    def test_mid_patch(
        self, client: httpx.Client, registry_server: RegistryServer, registry_url: str
    ) -> None:
        repo = unique_repo("faults")
        # More than the server buffers before writing (4 MiB), so some of it reaches disk.
        first, second = os.urandom(100_000), os.urandom(8 * MiB)
        location = start_upload(client, repo)
        assert patch_chunk(client, location, first, 0).status_code == 202
        send_and_vanish(registry_url, "PATCH", location, len(second), second[: 6 * MiB])
        # The part-sent chunk leaves no trace, in the session or in storage.
        storage = registry_server.storage
        wait_for(lambda: storage.upload_bytes(upload_id_of(location)) == len(first))
        assert upload_range(client, location) == f"0-{len(first) - 1}"
        response = patch_chunk(client, location, second, len(first))
        assert response.status_code == 202
        assert response.headers["range"] == f"0-{len(first) + len(second) - 1}"
        digest = digest_of(first + second)
        assert client.put(location, params={"digest": digest}).status_code == 201
        assert_blob(client, repo, first + second)

    def test_mid_first_patch_with_content_range(
        self, client: httpx.Client, registry_url: str
    ) -> None:
        repo = unique_repo("faults")
        data = os.urandom(MiB)
        location = start_upload(client, repo)
        send_and_vanish(registry_url, "PATCH", location, MiB, data[:1000])
        assert upload_range(client, location) == "0-0"
        assert patch_chunk(client, location, data, 0).status_code == 202
        assert client.put(location, params={"digest": digest_of(data)}).status_code == 201
        assert_blob(client, repo, data)

    def test_mid_monolithic_post(self, client: httpx.Client, registry_url: str) -> None:
        repo, data = unique_repo("faults"), os.urandom(MiB)
        digest = digest_of(data)
        path = f"/v2/{repo}/blobs/uploads/?digest={digest}"
        send_and_vanish(registry_url, "POST", path, MiB, data[: MiB // 2])
        assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        assert client.get("/v2/").status_code == 200

    def test_mid_manifest_put(self, client: httpx.Client, registry_url: str) -> None:
        repo = unique_repo("faults")
        body = encode(image_doc(client, repo))
        send_and_vanish(registry_url, "PUT", f"/v2/{repo}/manifests/t", len(body), body[:-10])
        assert_error(client.get(f"/v2/{repo}/manifests/t"), 404, "MANIFEST_UNKNOWN")
        response = client.put(
            f"/v2/{repo}/manifests/t", content=body, headers={"Content-Type": mt.OCI_MANIFEST}
        )
        assert response.status_code == 201

    def test_server_still_answers(self, client: httpx.Client) -> None:
        assert client.get("/v2/").status_code == 200


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_mid_upload(own: RegistryServer, kill: bool) -> None:
    repo, first, rest = unique_repo("faults"), os.urandom(3 * MiB + 17), os.urandom(2 * MiB)
    with httpx.Client(base_url=own.url, timeout=60) as c:
        location = start_upload(c, repo)
        assert patch_chunk(c, location, first, 0).status_code == 202
    own.restart(kill=kill)
    with httpx.Client(base_url=own.url, timeout=60) as c:
        assert upload_range(c, location) == f"0-{len(first) - 1}"
        assert patch_chunk(c, location, rest, len(first)).status_code == 202
        response = c.put(location, params={"digest": digest_of(first + rest)})
        assert response.status_code == 201, response.text
        assert_blob(c, repo, first + rest)


def test_restart_after_commit_keeps_everything(own: RegistryServer) -> None:
    with httpx.Client(base_url=own.url, timeout=60) as c:
        doc = image_doc(c, "faults/kept")
        body = encode(doc)
        headers = {"Content-Type": mt.OCI_MANIFEST}
        assert c.put("/v2/faults/kept/manifests/v1", content=body, headers=headers).is_success
    own.restart(kill=True)
    with httpx.Client(base_url=own.url, timeout=60) as c:
        assert c.get("/v2/faults/kept/manifests/v1").content == body
        assert c.get("/v2/faults/kept/tags/list").json()["tags"] == ["v1"]
        for blob in (doc["config"], *doc["layers"]):
            assert c.head(f"/v2/faults/kept/blobs/{blob['digest']}").status_code == 200


def test_parallel_pushes_of_one_blob_store_one_copy(own: RegistryServer) -> None:
    data = os.urandom(2 * MiB)
    digest = digest_of(data)
    repos = [f"faults/parallel-{i}" for i in range(20)]
    all_patched = threading.Barrier(len(repos), timeout=60)

    upload_ids: set[str] = set()

    def push(repo: str) -> int:
        with httpx.Client(base_url=own.url, timeout=60) as c:
            location = start_upload(c, repo)
            upload_ids.add(location.rsplit("/", 1)[1])
            assert patch_chunk(c, location, data[:MiB], 0).status_code == 202
            assert patch_chunk(c, location, data[MiB:], MiB).status_code == 202
            all_patched.wait()  # every commit at the same moment
            return c.put(location, params={"digest": digest}).status_code

    with ThreadPoolExecutor(len(repos)) as pool:
        statuses = list(pool.map(push, repos))
    assert statuses == [201] * len(repos)

    storage = own.storage
    assert len(storage.blob_keys(digest)) == 1  # at the digest's key, or where one upload wrote
    assert [k for k in storage.keys("blobs/") if not k.endswith("/data")] == []
    assert [i for i in upload_ids if storage.upload_exists(i)] == []
    with httpx.Client(base_url=own.url, timeout=60) as c:
        for repo in repos:
            assert_blob(c, repo, data, digest)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_blob_bytes_lost_from_storage(own: RegistryServer, damage: str) -> None:
    """Bytes gone from under a recorded blob: a 404 up front, not a 200 that breaks off;
    pushing the blob again puts them back."""
    repo, data = unique_repo("faults"), os.urandom(1000)
    digest = digest_of(data)
    with httpx.Client(base_url=own.url, timeout=60) as c:
        push_blob(c, repo, data)
        key = own.storage.blob_key(digest)
        own.storage.replace(key, None if damage == "deleted" else data[:10])
        assert_error(c.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        push_blob(c, repo, data)
        assert_blob(c, repo, data)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-worker", "two-workers"])
def race_target(request: pytest.FixtureRequest, make_server: ServerFactory) -> Iterator[str]:
    """A server with one worker, and one with two: racing requests on one upload then run
    in different processes, which only the database's single-writer claim keeps apart."""
    workers = int(request.param)
    server = make_server(f"race{workers}", extra_args=["--workers", str(workers)])
    server.start()
    yield server.url
    server.stop()


class TestRacingPatches:
    @pytest.fixture
    def client(self, race_target: str) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=race_target, timeout=60) as c:
            yield c

    @pytest.fixture
    def registry_url(self, race_target: str) -> str:
        return race_target

    def test_same_range_one_wins(self, client: httpx.Client, registry_url: str) -> None:
        repo = unique_repo("faults")
        location = start_upload(client, repo)
        chunks = [os.urandom(4 * MiB), os.urandom(4 * MiB)]
        start = threading.Barrier(2, timeout=30)

        def send(chunk: bytes) -> httpx.Response:
            with httpx.Client(base_url=registry_url, timeout=60) as c:
                start.wait()
                return patch_chunk(c, location, chunk, 0)

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(send, chunks))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202, 416]
        winner = chunks[[r.status_code for r in responses].index(202)]
        assert upload_range(client, location) == f"0-{4 * MiB - 1}"
        assert client.put(location, params={"digest": digest_of(winner)}).status_code == 201
        assert_blob(client, repo, winner)

    def test_streamed_chunks_do_not_interleave(
        self, client: httpx.Client, registry_url: str
    ) -> None:
        """Streamed PATCHes (no Content-Range) on one upload all land, whole, one after
        another; the Range each answer gives says where its chunk went."""
        repo = unique_repo("faults")
        location = start_upload(client, repo)
        chunks = [os.urandom(MiB + i * 1000) for i in range(4)]
        start = threading.Barrier(len(chunks), timeout=30)

        def send(chunk: bytes) -> tuple[int, bytes]:
            with httpx.Client(base_url=registry_url, timeout=60) as c:
                start.wait()
                response = c.patch(location, content=iter([chunk[:500_000], chunk[500_000:]]))
                assert response.status_code == 202, response.text
                return int(response.headers["range"].split("-")[1]), chunk

        with ThreadPoolExecutor(len(chunks)) as pool:
            ends = sorted(pool.map(send, chunks))
        data = b"".join(chunk for _, chunk in ends)
        assert [end for end, _ in ends] == [
            sum(len(c) for _, c in ends[: i + 1]) - 1 for i in range(len(ends))
        ]
        assert client.put(location, params={"digest": digest_of(data)}).status_code == 201
        assert_blob(client, repo, data)


def test_requests_queued_behind_a_cancel(
    client: httpx.Client, registry_server: RegistryServer, registry_url: str
) -> None:
    """A PATCH and a PUT that wait for the upload's lock behind a DELETE find it gone: 404,
    nothing written back into the cancelled upload's place, no blob made from it."""
    repo = unique_repo("faults")
    location = start_upload(client, repo)
    url = registry_url + location
    late = b"c" * 10

    def slow_body() -> Iterator[bytes]:
        yield b"a" * 1000
        time.sleep(1.5)  # holds the upload's lock while the others queue up behind it
        yield b"b" * 1000

    requests: list[Callable[[], httpx.Response]] = [
        lambda: httpx.patch(url, content=slow_body(), timeout=30),
        lambda: httpx.delete(url, timeout=30),
        lambda: httpx.patch(url, content=late, timeout=30),
        lambda: httpx.put(url, params={"digest": digest_of(late)}, content=late, timeout=30),
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = []
        for send in requests:
            futures.append(pool.submit(send))
            time.sleep(0.3)  # in this order
        first, cancel, patch, put = (f.result() for f in futures)
    assert first.status_code == 202
    assert cancel.status_code == 204
    assert_error(patch, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(put, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(late)}"), 404, "BLOB_UNKNOWN")
    assert not registry_server.storage.upload_exists(upload_id_of(location))


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_big_streamed_upload_keeps_memory_flat(own: RegistryServer) -> None:
    """256 MiB pushed in one streamed PATCH, made up on the fly: the server's peak RSS stays
    under 150 MB while receiving, committing and serving it back. On S3 the process starts
    larger (boto3's client and its service model, ~25 MB) and keeps parts in memory while
    they are sent: there its peak grows by less than half the blob over its size at rest."""
    total, block = 256 * MiB, MiB
    seed = os.urandom(block)
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for i in range(total // block):
            piece = i.to_bytes(8, "big") + seed[8:]
            sent.update(piece)
            yield piece

    own.restart()  # a new process: its peak RSS is this test's alone
    assert own.process is not None
    pid = own.process.pid
    at_rest_mb = vm_hwm_kib(pid) * 1024 / 1e6
    with httpx.Client(base_url=own.url, timeout=120) as c:
        location = start_upload(c, "faults/big")
        response = c.patch(location, content=body())
        assert response.status_code == 202
        assert response.headers["range"] == f"0-{total - 1}"
        digest = f"sha256:{sent.hexdigest()}"
        assert c.put(location, params={"digest": digest}).status_code == 201
        received, size = hashlib.sha256(), 0
        with c.stream("GET", f"/v2/faults/big/blobs/{digest}") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(total)
            for chunk in response.iter_bytes():
                received.update(chunk)
                size += len(chunk)
        assert size == total
        assert received.hexdigest() == sent.hexdigest()
    peak_mb = vm_hwm_kib(pid) * 1024 / 1e6
    if own.backend.storage == "s3":  # type: ignore[attr-defined]
        assert peak_mb - at_rest_mb < total / 2 / 1e6, (
            f"peak {peak_mb:.0f}, {at_rest_mb:.0f} at rest"
        )
    else:
        assert peak_mb < 150, f"server peak RSS {peak_mb:.0f} MB"


def test_full_disk_answers_an_error_and_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Storage on a 2 MiB disk: a push that does not fit gets the JSON error, leaves the
    upload where it was, and the registry goes on serving what fits."""
    root = tmp_path_factory.mktemp("fulldisk")
    with small_disk(root / "storage", "2m") as storage:
        server = RegistryServer(root / "data", env={"REGISTRY_STORAGE_ROOT": str(storage)})
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                location = start_upload(c, "faults/full")
                first = os.urandom(MiB // 2)
                assert patch_chunk(c, location, first, 0).status_code == 202
                big = os.urandom(4 * MiB)
                response = c.patch(location, content=big)
                assert response.status_code == 503, response.text
                assert response.json()["errors"][0]["message"]
                assert upload_range(c, location) == f"0-{len(first) - 1}"
                assert c.put(location, params={"digest": digest_of(first)}).status_code == 201
                assert_blob(c, "faults/full", first)
                assert_blob(
                    c, "faults/small", b"fits", digest=push_blob(c, "faults/small", b"fits")
                )
        finally:
            server.stop()


def test_an_unexpected_failure_is_one_json_500_and_one_log_entry(tmp_path: Path) -> None:
    """A bug or a broken database (here: tables dropped under the running server) answers
    the spec's JSON error, body drained or connection closed, and logs one traceback."""
    server = RegistryServer(tmp_path / "data")
    server.start()
    try:
        import sqlite3

        with httpx.Client(base_url=server.url, timeout=30) as c:
            push_blob(c, "broken", b"makes the repository")
        with sqlite3.connect(server.data_dir / "registry.db") as db:
            db.execute("DROP TABLE tags")
            db.execute("DROP TABLE uploads")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            listing = c.get("/v2/broken/tags/list")
            assert_error(listing, 500, "UNKNOWN")
            blob = os.urandom(3 * MiB)  # a body the handler fails before reading
            post = c.post(f"/v2/broken/blobs/uploads/?digest={digest_of(blob)}", content=blob)
            assert_error(post, 500, "UNKNOWN")
            assert c.get("/v2/").status_code == 200  # still serving, on a fresh connection
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert log.count("ERROR registry: unexpected failure on") == 2, log  # one per request
    assert "Exception in ASGI application" not in log, log  # not logged again by the server
    assert "Receive channel" not in log
