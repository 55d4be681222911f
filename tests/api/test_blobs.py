"""`/v2/<name>/blobs/<digest>`: HEAD, GET with Range, per-repository links, DELETE."""

from __future__ import annotations

import os

import httpx
import pytest

from api.helpers import (
    ZERO_DIGEST,
    assert_blob,
    assert_error,
    digest_of,
    push_blob,
    unique_repo,
)

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable


@pytest.fixture(scope="module")
def stored(registry_url: str) -> tuple[str, str]:
    """One repository holding DATA; returns (repository, digest)."""
    repo = unique_repo("blobs")
    with httpx.Client(base_url=registry_url) as c:
        return repo, push_blob(c, repo, DATA)


def test_head(client: httpx.Client, stored: tuple[str, str]) -> None:
    repo, digest = stored
    response = client.head(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == b""


def test_get(client: httpx.Client, stored: tuple[str, str]) -> None:
    repo, digest = stored
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=1000-5000", 1000, len(DATA) - 1),  # the end is clamped to the size
        ("bytes=-5000", 0, len(DATA) - 1),
        (f"bytes={len(DATA) - 1}-{len(DATA) - 1}", len(DATA) - 1, len(DATA) - 1),
    ],
)
def test_range(
    client: httpx.Client, stored: tuple[str, str], header: str, first: int, last: int
) -> None:
    repo, digest = stored
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["docker-content-digest"] == digest


def test_range_on_head(client: httpx.Client, stored: tuple[str, str]) -> None:
    repo, digest = stored
    response = client.head(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-9/{len(DATA)}"
    assert response.headers["content-length"] == "10"


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={len(DATA)}-",
        "bytes=5000-6000",
        "bytes=-0",
        "bytes=500-0",  # ends before it starts
        "bytes=9-0",
        "bytes=2000-3000,4000-",  # several, none satisfiable
    ],
)
def test_unsatisfiable_range(client: httpx.Client, stored: tuple[str, str], header: str) -> None:
    repo, digest = stored
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert_error(response, 416, "RANGE_INVALID")
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    response = client.head(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=abc",
        "items=0-9",
        "0-9",
        "bytes=-",
        "bytes=0-1,4-5",  # several ranges: the whole blob, not multipart/byteranges
        "bytes=2000-3000,0-9",
    ],
)
def test_malformed_range_is_ignored(
    client: httpx.Client, stored: tuple[str, str], header: str
) -> None:
    repo, digest = stored
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA
    assert "content-range" not in response.headers


def test_unknown_blob(client: httpx.Client, stored: tuple[str, str]) -> None:
    repo, _ = stored
    errors = assert_error(client.get(f"/v2/{repo}/blobs/{ZERO_DIGEST}"), 404, "BLOB_UNKNOWN")
    assert errors[0]["detail"] == {"digest": ZERO_DIGEST}
    response = client.head(f"/v2/{repo}/blobs/{ZERO_DIGEST}")
    assert response.status_code == 404
    assert response.content == b""


def test_blob_of_another_repository_is_unknown(
    client: httpx.Client, stored: tuple[str, str]
) -> None:
    """Knowing a digest gives no access: each repository sees only what was pushed into it."""
    _, digest = stored
    other = unique_repo("blobs")
    push_blob(client, other, b"something else")
    assert_error(client.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{other}/blobs/{digest}").status_code == 404
    # A repository that does not exist at all answers the same.
    assert_error(client.get(f"/v2/{unique_repo()}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_sha512_blob(client: httpx.Client) -> None:
    repo, data = unique_repo("blobs"), os.urandom(3000)
    digest = push_blob(client, repo, data, algorithm="sha512")
    assert digest.startswith("sha512:") and len(digest) == 7 + 128
    assert_blob(client, repo, data, digest)
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=-100"})
    assert response.status_code == 206
    assert response.content == data[-100:]
    # The same bytes are not visible under their sha256 digest: nobody pushed that.
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404


def test_empty_blob(client: httpx.Client) -> None:
    repo = unique_repo("blobs")
    digest = push_blob(client, repo, b"")
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert_error(response, 416, "RANGE_INVALID")
    assert response.headers["content-range"] == "bytes */0"


def test_delete(client: httpx.Client) -> None:
    repo, other, data = unique_repo("blobs"), unique_repo("blobs"), os.urandom(100)
    digest = push_blob(client, repo, data)
    push_blob(client, other, data)
    response = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 202
    assert response.headers["docker-content-digest"] == digest
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    # Only this repository's link went: the other still serves the bytes.
    assert_blob(client, other, data, digest)


def test_delete_unknown(client: httpx.Client) -> None:
    response = client.delete(f"/v2/{unique_repo()}/blobs/{ZERO_DIGEST}")
    assert_error(response, 404, "BLOB_UNKNOWN")


def test_push_again_after_delete(client: httpx.Client) -> None:
    repo, data = unique_repo("blobs"), os.urandom(100)
    digest = push_blob(client, repo, data)
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    push_blob(client, repo, data)
    assert_blob(client, repo, data, digest)
