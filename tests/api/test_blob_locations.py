"""Where a blob's bytes end up, on every backend: a chunked push is stored once, at the
digest's key on disk, and on S3 where it was written (`uploaded/<upload id>/data`: moving it
there would copy it, a quarter of the push); pulls, mounts, later and racing pushes of the
same blob, garbage collection and fsck all find it where it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.helpers import (
    assert_blob,
    digest_of,
    patch_chunk,
    push_blob,
    start_upload,
    unique_repo,
)

from support.backends import ServerFactory, StorageView
from support.server import RegistryServer

MiB = 1024 * 1024
ENV = {"REGISTRY_GC_ENABLED": "false", "REGISTRY_GC_BLOB_GRACE_SECONDS": "0"}


@pytest.fixture(scope="module")
def server(make_server: ServerFactory) -> Iterator[RegistryServer]:
    server = make_server("locations", env=ENV)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: RegistryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def storage(server: RegistryServer) -> StorageView:
    return server.storage  # type: ignore[attr-defined,no-any-return]


def patched(client: httpx.Client, repo: str, data: bytes, chunk: int) -> str:
    """An upload of `data` in PATCHes of `chunk` bytes, not finished: its Location."""
    location = start_upload(client, repo)
    for start in range(0, len(data), chunk):
        response = patch_chunk(client, location, data[start : start + chunk], start)
        assert response.status_code == 202, response.text
    return location


def finish(client: httpx.Client, location: str, data: bytes) -> None:
    response = client.put(location, params={"digest": digest_of(data)})
    assert response.status_code == 201, response.text


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[1].split("?")[0]


def registry(server: RegistryServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args, "--json", "--data", str(server.data_dir)],
        capture_output=True, text=True, env=server.env, timeout=300, check=False,
    )  # fmt: skip


def test_a_chunked_push_is_stored_once_where_it_was_written(
    server: RegistryServer, client: httpx.Client
) -> None:
    """6 MiB + 1 MiB + 5 bytes (a multipart upload of two parts on S3): one object, at the
    digest's key on disk and at the upload's own key on S3, with nothing under `blobs/`.
    GET, Range and HEAD read it there; a mount, a second chunked push and a monolithic push
    of the same blob store nothing more."""
    data = os.urandom(7 * MiB + 5)
    digest, repo = digest_of(data), unique_repo("located")
    location = patched(client, repo, data, 6 * MiB)
    finish(client, location, data)
    view = storage(server)
    expected = f"uploaded/{upload_id(location)}/data" if view.on_s3 else view.blob_key(digest)
    assert view.keys() == [expected]

    assert_blob(client, repo, data)
    ranged = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=6291455-6291460"})
    assert ranged.status_code == 206 and ranged.content == data[6 * MiB - 1 : 6 * MiB + 5]
    head = client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

    mounted = unique_repo("mounted")
    response = client.post(f"/v2/{mounted}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert response.status_code == 201, response.text
    assert_blob(client, mounted, data)

    again = unique_repo("again")
    finish(client, patched(client, again, data, 6 * MiB), data)
    assert push_blob(client, unique_repo("whole"), data) == digest
    assert view.keys() == [expected]
    assert_blob(client, again, data)


def test_racing_chunked_pushes_of_one_blob_keep_one_copy(
    server: RegistryServer, client: httpx.Client
) -> None:
    """Four uploads of the same 6 MiB blob, finished at once: every push succeeds, each
    repository serves the blob, and one copy is stored (the first to finish is the blob's;
    the others' are dropped)."""
    for _ in range(2):
        data = os.urandom(6 * MiB)
        repos = [unique_repo("race") for _ in range(4)]
        locations = [patched(client, repo, data, 4 * MiB) for repo in repos]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(finish, [client] * 4, locations, [data] * 4))
        view = storage(server)
        assert len(view.blob_keys(digest_of(data))) == 1
        assert not [k for k in view.keys("uploads/")]
        for repo in repos:
            assert_blob(client, repo, data)


def test_fsck_and_collection_find_blobs_where_they_are(
    server: RegistryServer, client: httpx.Client
) -> None:
    """fsck checks a chunked push's bytes where they are (clean; then corrupt, once they are
    damaged there) and reports bytes left in place by no known upload; garbage collection
    deletes a blob's bytes where they are."""
    view = storage(server)
    data = os.urandom(6 * MiB + 1)
    digest, repo = digest_of(data), unique_repo("fsck")
    finish(client, patched(client, repo, data, 6 * MiB), data)
    [key] = view.blob_keys(digest)
    checked = registry(server, "fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["problems"] == []

    stray = "uploaded/" + "f" * 32 + "/data"  # bytes of an upload the database never knew
    view.replace(stray, b"left behind")
    view.replace(key, os.urandom(len(data)))  # same size, other bytes
    checked = registry(server, "fsck")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    problems = {p["target"]: p["kind"] for p in json.loads(checked.stdout)["problems"]}
    assert problems == {digest: "corrupt", "f" * 32: "orphan-upload"}
    view.replace(key, data)

    repaired = registry(server, "fsck", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert view.keys("uploaded/" + "f" * 32) == []

    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    collected = registry(server, "gc")
    assert collected.returncode == 0, collected.stderr
    assert digest in json.loads(collected.stdout)["deleted_blobs"]
    assert view.blob_keys(digest) == []
    assert client.get(f"/v2/{repo}/blobs/{digest}").status_code == 404


def test_in_place_can_be_turned_off_for_a_rolling_upgrade(make_server: ServerFactory) -> None:
    """`storage.s3.chunked_in_place: false`: a chunked push ends at the digest's key, where
    replicas from before migration 0009 look for it."""
    server = make_server("copying", env={**ENV, "REGISTRY_STORAGE_S3_CHUNKED_IN_PLACE": "false"})
    if not storage(server).on_s3:
        pytest.skip("a setting of the S3 driver")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            data = os.urandom(6 * MiB + 7)
            repo = unique_repo("copying")
            finish(c, patched(c, repo, data, 6 * MiB), data)
            assert storage(server).keys() == [storage(server).blob_key(digest_of(data))]
            assert_blob(c, repo, data)
    finally:
        server.stop()
