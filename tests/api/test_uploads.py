"""`/v2/<name>/blobs/uploads/`: sessions, monolithic and chunked pushes, status, cancel, mount."""

from __future__ import annotations

import os
import random
import re

import httpx
import pytest

from api.helpers import (
    ZERO_DIGEST,
    assert_blob,
    assert_error,
    digest_of,
    patch_chunk,
    push_blob,
    raw_request,
    start_upload,
    unique_repo,
    upload_range,
)

from support.server import RegistryServer

UPLOAD_ID = re.compile(r"^[a-f0-9]{32}$")


@pytest.fixture
def repo() -> str:
    return unique_repo("uploads")


def test_session(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    assert response.headers["range"] == "0-0"
    assert response.headers["content-length"] == "0"
    upload_id = response.headers["docker-upload-uuid"]
    assert UPLOAD_ID.match(upload_id)
    assert response.headers["location"] == f"/v2/{repo}/blobs/uploads/{upload_id}"


def test_session_without_trailing_slash(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/blobs/uploads")
    assert response.status_code == 202
    assert response.headers["location"].startswith(f"/v2/{repo}/blobs/uploads/")


def test_monolithic_post(client: httpx.Client, repo: str) -> None:
    data = os.urandom(5000)
    digest = digest_of(data)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{repo}/blobs/{digest}"
    assert response.headers["docker-content-digest"] == digest
    assert_blob(client, repo, data)


def test_post_then_put(client: httpx.Client, repo: str) -> None:
    data = os.urandom(5000)
    digest = digest_of(data)
    location = start_upload(client, repo)
    response = client.put(location, params={"digest": digest}, content=data)
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{repo}/blobs/{digest}"
    assert response.headers["docker-content-digest"] == digest
    assert_blob(client, repo, data)
    # The session is gone once the blob is committed.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_chunked(client: httpx.Client, repo: str) -> None:
    chunks = [os.urandom(1000), os.urandom(1), os.urandom(2500)]
    data = b"".join(chunks)
    location = start_upload(client, repo)
    offset = 0
    for chunk in chunks:
        response = patch_chunk(client, location, chunk, offset)
        offset += len(chunk)
        assert response.status_code == 202, response.text
        assert response.headers["range"] == f"0-{offset - 1}"
        assert response.headers["location"] == location
        assert UPLOAD_ID.match(response.headers["docker-upload-uuid"])
        assert upload_range(client, location) == f"0-{offset - 1}"
    response = client.put(location, params={"digest": digest_of(data)})
    assert response.status_code == 201
    assert_blob(client, repo, data)


def test_streamed_patch_without_content_range(client: httpx.Client, repo: str) -> None:
    """Docker sends one PATCH with the whole blob, chunked, without Content-Range."""
    pieces = [os.urandom(70_000) for _ in range(5)]
    data = b"".join(pieces)
    location = start_upload(client, repo)
    response = client.patch(location, content=iter(pieces))
    assert response.status_code == 202
    assert response.headers["range"] == f"0-{len(data) - 1}"
    more = os.urandom(10)
    response = client.patch(location, content=more)
    assert response.headers["range"] == f"0-{len(data) + 9}"
    response = client.put(location, params={"digest": digest_of(data + more)})
    assert response.status_code == 201
    assert_blob(client, repo, data + more)


def test_streamed_patch_of_tiny_and_large_chunks(client: httpx.Client, repo: str) -> None:
    """Thousands of chunks of a few bytes between large ones arrive whole and in order (the
    server joins runs of small pieces and passes large ones on as they are)."""
    rng = random.Random(4)
    pieces = [
        rng.randbytes(rng.choice((1, 2, 7, 100, 5_000, 70_000, 300_000))) for _ in range(3_000)
    ]
    pieces[1000:1000] = [b"x"] * 2_000  # a long run of single bytes
    data = b"".join(pieces)
    location = start_upload(client, repo)
    response = client.patch(location, content=iter(pieces))
    assert response.status_code == 202
    assert response.headers["range"] == f"0-{len(data) - 1}"
    response = client.put(location, params={"digest": digest_of(data)})
    assert response.status_code == 201
    assert_blob(client, repo, data)


FIRST, LAST = os.urandom(1000), os.urandom(500)


def _put_final_chunk(client: httpx.Client, repo: str, content_range: str) -> httpx.Response:
    """PATCH FIRST, then PUT LAST as the final chunk under `content_range`."""
    location = start_upload(client, repo)
    assert patch_chunk(client, location, FIRST, 0).status_code == 202
    return client.put(
        location,
        params={"digest": digest_of(FIRST + LAST)},
        content=LAST,
        headers={"Content-Range": content_range},
    )


def test_put_with_final_chunk(client: httpx.Client, repo: str) -> None:
    response = _put_final_chunk(client, repo, "1000-1499")
    assert response.status_code == 201, response.text
    assert_blob(client, repo, FIRST + LAST)


@pytest.mark.parametrize("content_range", ["2000-2499", "0-499", "1000-1200", "1000-"])
def test_final_chunk_that_does_not_fit(client: httpx.Client, repo: str, content_range: str) -> None:
    response = _put_final_chunk(client, repo, content_range)
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["range"] == "0-999"
    location = response.headers["location"]
    assert upload_range(client, location) == "0-999"
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(FIRST + LAST)}"), 404, "BLOB_UNKNOWN")


def test_put_without_body_after_chunks(client: httpx.Client, repo: str) -> None:
    data = os.urandom(1000)
    location = start_upload(client, repo)
    patch_chunk(client, location, data, 0)
    response = client.put(
        location, params={"digest": digest_of(data)}, headers={"Content-Length": "0"}
    )
    assert response.status_code == 201
    assert_blob(client, repo, data)


def test_empty_blob_by_put_without_body(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = client.put(location, params={"digest": digest_of(b"")})
    assert response.status_code == 201
    assert_blob(client, repo, b"")


def test_sha512_chunked(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3000)
    location = start_upload(client, repo)
    patch_chunk(client, location, data[:1000], 0)
    patch_chunk(client, location, data[1000:], 1000)
    digest = digest_of(data, "sha512")
    assert client.put(location, params={"digest": digest}).status_code == 201
    assert_blob(client, repo, data, digest)


def test_out_of_order_chunk(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    assert patch_chunk(client, location, b"a" * 100, 0).status_code == 202
    for start in (0, 50, 101, 500):
        response = patch_chunk(client, location, b"b" * 100, start)
        assert_error(response, 416, "BLOB_UPLOAD_INVALID")
        assert response.headers["range"] == "0-99"
        assert response.headers["location"] == location
    assert upload_range(client, location) == "0-99"
    assert patch_chunk(client, location, b"c" * 10, 100).status_code == 202
    assert client.put(location, params={"digest": digest_of(b"a" * 100 + b"c" * 10)}).is_success


def test_status(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = client.get(location)
    assert response.status_code == 204
    assert response.headers["range"] == "0-0"
    assert response.headers["location"] == location
    assert response.headers["docker-upload-uuid"] == location.rsplit("/", 1)[1]
    assert response.content == b""


def test_cancel(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    patch_chunk(client, location, b"x" * 100, 0)
    response = client.delete(location)
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(patch_chunk(client, location, b"x", 100), 404, "BLOB_UPLOAD_UNKNOWN")
    response = client.put(location, params={"digest": digest_of(b"x" * 100)})
    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_wrong_digest_stores_nothing(client: httpx.Client, repo: str) -> None:
    data = os.urandom(1000)
    location = start_upload(client, repo)
    patch_chunk(client, location, data, 0)
    wrong = digest_of(b"something else")
    assert_error(client.put(location, params={"digest": wrong}), 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")
    # The failed session is over; a new push of the right bytes works.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    push_blob(client, repo, data)


def test_wrong_digest_on_monolithic_post(client: httpx.Client, repo: str) -> None:
    wrong = digest_of(b"other")
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=b"a")
    assert_error(response, 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(b'a')}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("how", ["chunked", "monolithic"])
def test_wrong_bytes_under_a_stored_digest_do_not_link_it(
    client: httpx.Client, repo: str, how: str
) -> None:
    """Knowing the digest and size of a blob someone else pushed is not having it: bytes of
    that size pushed under its digest are DIGEST_INVALID, and the blob stays out of reach."""
    private = os.urandom(1000)
    digest = push_blob(client, unique_repo("private"), private)
    forged = os.urandom(len(private))
    if how == "chunked":
        location = start_upload(client, repo)
        assert patch_chunk(client, location, forged, 0).status_code == 202
        response = client.put(location, params={"digest": digest})
    else:
        path = f"/v2/{repo}/blobs/uploads/"
        response = client.post(path, params={"digest": digest}, content=forged)
    assert_error(response, 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("digest", ["", "sha256:abc", "md5:" + "0" * 32, "nonsense"])
def test_put_with_bad_digest(client: httpx.Client, repo: str, digest: str) -> None:
    location = start_upload(client, repo)
    response = client.put(location, params={"digest": digest} if digest else None)
    assert_error(response, 400, "DIGEST_INVALID")


def test_body_longer_than_content_length(
    client: httpx.Client, registry_url: str, repo: str
) -> None:
    """The server reads Content-Length bytes; the stray byte after them is a broken request,
    which uvicorn answers itself with a bare 400. Either way nothing may be stored."""
    data = os.urandom(1000)
    digest = digest_of(data)
    path = f"/v2/{repo}/blobs/uploads/?digest={digest}"
    response = raw_request(registry_url, "POST", path, data, {"Content-Length": "999"})
    assert response.status_code == 400
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data[:999])}"), 404, "BLOB_UNKNOWN")


def test_put_content_length_disagrees_with_content_range(
    client: httpx.Client, registry_url: str, repo: str
) -> None:
    data = os.urandom(100)
    location = start_upload(client, repo)
    path = f"{location}?digest={digest_of(data)}"
    headers = {"Content-Length": "100", "Content-Range": "0-49"}
    response = raw_request(registry_url, "PUT", path, data, headers)
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")
    assert upload_range(client, location) == "0-0"


def test_patch_content_length_disagrees_with_content_range(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    response = client.patch(
        location, content=b"x" * 100, headers={"Content-Range": "0-49", "Content-Length": "100"}
    )
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert upload_range(client, location) == "0-0"


def test_patch_body_shorter_than_content_range(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    request = client.build_request(
        "PATCH", location, content=iter([b"x" * 50]), headers={"Content-Range": "0-99"}
    )
    assert_error(client.send(request), 400, "SIZE_INVALID")
    assert upload_range(client, location) == "0-0"
    assert patch_chunk(client, location, b"y" * 10, 0).status_code == 202


def test_put_body_longer_than_declared(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    data = os.urandom(100)
    request = client.build_request(
        "PUT",
        location,
        params={"digest": digest_of(data)},
        content=iter([data]),
        headers={"Content-Range": "0-49"},
    )
    assert_error(client.send(request), 400, "SIZE_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")
    assert upload_range(client, location) == "0-0"


@pytest.mark.parametrize("header", ["abc", "9-0", "0-", "bytes */100", "-5"])
def test_malformed_content_range(client: httpx.Client, repo: str, header: str) -> None:
    location = start_upload(client, repo)
    response = client.patch(location, content=b"x" * 10, headers={"Content-Range": header})
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["range"] == "0-0"
    assert upload_range(client, location) == "0-0"


def test_malformed_content_length(client: httpx.Client, registry_url: str, repo: str) -> None:
    location = start_upload(client, repo)
    response = raw_request(registry_url, "PATCH", location, b"x", {"Content-Length": "-1"})
    assert response.status_code == 400  # uvicorn's HTTP parser refuses it
    assert upload_range(client, location) == "0-0"


@pytest.mark.parametrize(
    "upload_id", ["0" * 32, "not-an-id", "A" * 32, "f" * 33, "%2E%2E", "0" * 32 + "%0A"]
)
def test_unknown_upload(client: httpx.Client, repo: str, upload_id: str) -> None:
    url = f"/v2/{repo}/blobs/uploads/{upload_id}"
    assert_error(client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.patch(url, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.put(url, params={"digest": ZERO_DIGEST}), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(url), 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_id_with_a_path_does_not_route(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/blobs/uploads/..%2F..%2Fetc")
    assert_error(response, 404, "NAME_UNKNOWN")


def test_upload_of_another_repository(client: httpx.Client, repo: str) -> None:
    location = start_upload(client, repo)
    upload_id = location.rsplit("/", 1)[1]
    other = f"/v2/{unique_repo('uploads')}/blobs/uploads/{upload_id}"
    assert_error(client.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(patch_chunk(client, other, b"x", 0), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
    # The session in its own repository is untouched.
    assert upload_range(client, location) == "0-0"


def test_absolute_and_relative_location(client: httpx.Client, registry_url: str, repo: str) -> None:
    data = os.urandom(200)
    location = start_upload(client, repo)
    assert location.startswith("/")
    assert patch_chunk(client, registry_url + location, data[:100], 0).status_code == 202
    assert patch_chunk(client, location, data[100:], 100).status_code == 202
    response = client.put(registry_url + location, params={"digest": digest_of(data)})
    assert response.status_code == 201
    assert_blob(client, repo, data)


def test_absolute_location_from_public_url(configured_server: RegistryServer) -> None:
    data = os.urandom(100)
    with httpx.Client(timeout=30) as c:
        response = c.post(f"{configured_server.url}/v2/abs/blobs/uploads/")
        location = response.headers["location"]
        assert location.startswith(f"{configured_server.url}/v2/abs/blobs/uploads/")
        response = c.put(location, params={"digest": digest_of(data)}, content=data)
        assert response.status_code == 201
        assert (
            response.headers["location"]
            == f"{configured_server.url}/v2/abs/blobs/{digest_of(data)}"
        )
        assert c.get(response.headers["location"]).content == data


class TestMount:
    def test_mount_from_repository(self, client: httpx.Client, repo: str) -> None:
        source, data = unique_repo("uploads"), os.urandom(300)
        digest = push_blob(client, source, data)
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        assert response.status_code == 201
        assert response.headers["location"] == f"/v2/{repo}/blobs/{digest}"
        assert response.headers["docker-content-digest"] == digest
        assert_blob(client, repo, data)

    def test_mount_of_missing_blob_starts_a_session(self, client: httpx.Client, repo: str) -> None:
        source = unique_repo("uploads")
        push_blob(client, source, b"present")
        missing = digest_of(os.urandom(10))
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": missing, "from": source}
        )
        assert response.status_code == 202
        assert response.headers["range"] == "0-0"
        location = response.headers["location"]
        assert UPLOAD_ID.match(response.headers["docker-upload-uuid"])
        assert upload_range(client, location) == "0-0"
        assert_error(client.get(f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")

    def test_mount_from_repository_without_the_blob(self, client: httpx.Client, repo: str) -> None:
        """The blob exists elsewhere, but not in `from`: no mount, a session instead."""
        holder, source = unique_repo("uploads"), unique_repo("uploads")
        digest = push_blob(client, holder, os.urandom(10))
        push_blob(client, source, b"other")
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        assert response.status_code == 202
        assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")

    def test_mount_without_from(self, client: httpx.Client, repo: str) -> None:
        data = os.urandom(300)
        digest = push_blob(client, unique_repo("uploads"), data)
        response = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest})
        assert response.status_code == 201
        assert response.headers["location"] == f"/v2/{repo}/blobs/{digest}"
        assert_blob(client, repo, data)

    def test_mount_without_from_of_missing_blob(self, client: httpx.Client, repo: str) -> None:
        response = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": ZERO_DIGEST})
        assert response.status_code == 202
        assert response.headers["location"].startswith(f"/v2/{repo}/blobs/uploads/")

    def test_mount_with_invalid_digest(self, client: httpx.Client, repo: str) -> None:
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:xyz", "from": "a"}
        )
        assert_error(response, 400, "DIGEST_INVALID")

    def test_mount_from_invalid_name(self, client: httpx.Client, repo: str) -> None:
        response = client.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": ZERO_DIGEST, "from": "../x"}
        )
        assert_error(response, 400, "NAME_INVALID")

    def test_mounted_blob_survives_source_delete(self, client: httpx.Client, repo: str) -> None:
        source, data = unique_repo("uploads"), os.urandom(300)
        digest = push_blob(client, source, data)
        client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source})
        assert client.delete(f"/v2/{source}/blobs/{digest}").status_code == 202
        assert_blob(client, repo, data)


def test_nothing_left_in_uploads_after_commit(
    client: httpx.Client, registry_server: RegistryServer, repo: str
) -> None:
    location = start_upload(client, repo)
    upload_id = location.rsplit("/", 1)[1]
    data = os.urandom(100)
    assert patch_chunk(client, location, data[:60], 0).status_code == 202
    assert registry_server.storage.upload_exists(upload_id)  # the bytes so far wait there
    assert client.put(location, params={"digest": digest_of(data)}, content=data[60:]).is_success
    assert not registry_server.storage.upload_exists(upload_id)


# A monolithic body up to 1 MiB is verified in memory and stored in one step; larger ones
# stream through an upload file. Both must answer alike.
@pytest.mark.parametrize("size", [1024 * 1024, 1024 * 1024 + 1])
def test_monolithic_put_either_side_of_the_in_memory_limit(
    client: httpx.Client, registry_server: RegistryServer, repo: str, size: int
) -> None:
    data = os.urandom(size)
    location = start_upload(client, repo)
    wrong = digest_of(data[:-1])
    response = client.put(location, params={"digest": wrong}, content=data)
    assert_error(response, 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    location = start_upload(client, repo)
    response = client.put(location, params={"digest": digest_of(data)}, content=data)
    assert response.status_code == 201
    assert_blob(client, repo, data)
    assert not registry_server.storage.upload_exists(location.rsplit("/", 1)[1])


def test_small_put_after_an_empty_patch(
    client: httpx.Client, registry_server: RegistryServer, repo: str
) -> None:
    location = start_upload(client, repo)
    assert client.patch(location, content=b"").status_code == 202
    data = os.urandom(3000)
    assert client.put(location, params={"digest": digest_of(data)}, content=data).is_success
    assert_blob(client, repo, data)
    assert not registry_server.storage.upload_exists(location.rsplit("/", 1)[1])


def test_small_put_of_a_blob_stored_already(client: httpx.Client, repo: str) -> None:
    data = os.urandom(2000)
    push_blob(client, unique_repo("uploads"), data)
    location = start_upload(client, repo)
    assert client.put(location, params={"digest": digest_of(data)}, content=data).is_success
    assert_blob(client, repo, data)
