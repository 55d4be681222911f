"""Numbers past Python's int-conversion limit (4,300 digits), and digits `int()` refuses, in
what clients send: 4xx answers in the spec's format, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest

from api.helpers import (
    assert_blob,
    assert_error,
    digest_of,
    image_doc,
    push_blob,
    put_manifest,
    raw_request,
    start_upload,
    unique_repo,
    upload_range,
)
from registry.oci import mediatypes as mt

LONG = "9" * 5000


@pytest.mark.parametrize("n", [LONG, "1" + "0" * 30, "²", "٣", "+1", " 1"])
def test_page_size(client: httpx.Client, n: str) -> None:
    repo = unique_repo()
    push_blob(client, repo, b"x")
    assert_error(
        client.get(f"/v2/{repo}/tags/list", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID"
    )
    assert_error(client.get("/v2/_catalog", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_page_size_with_leading_zeros(client: httpx.Client) -> None:
    answer = client.get("/v2/_catalog", params={"n": "0" * 5000 + "1"})
    assert answer.status_code == 200
    assert len(answer.json()["repositories"]) <= 1


def test_range_of_huge_positions(client: httpx.Client) -> None:
    repo, data = unique_repo(), bytes(range(100))
    digest = push_blob(client, repo, data)
    url = f"/v2/{repo}/blobs/{digest}"
    assert_error(client.get(url, headers={"Range": f"bytes={LONG}-"}), 416, "RANGE_INVALID")
    assert_error(client.get(url, headers={"Range": f"bytes={LONG}-{LONG}"}), 416, "RANGE_INVALID")
    # A last position past the end is the end (RFC 9110); a suffix longer than the blob is
    # all of it.
    for header in (f"bytes=0-{LONG}", f"bytes=-{LONG}", f"bytes=0{'0' * 5000}-1"):
        answer = client.get(url, headers={"Range": header})
        assert answer.status_code == 206, (header[:40], answer.text)
        assert answer.content == data[: 2 if header.endswith("-1") else 100]


@pytest.mark.parametrize("header", [f"0-{LONG}", f"{LONG}-{LONG}", f"0-{'1' + '0' * 19}"])
def test_content_range_of_huge_positions(client: httpx.Client, header: str) -> None:
    location = start_upload(client, unique_repo())
    answer = client.patch(location, content=b"x" * 10, headers={"Content-Range": header})
    assert_error(answer, 416, "BLOB_UPLOAD_INVALID")
    assert upload_range(client, location) == "0-0"


def test_content_length_with_many_leading_zeros(client: httpx.Client, registry_url: str) -> None:
    repo, data = unique_repo(), b"hello"
    location = start_upload(client, repo)
    answer = raw_request(
        registry_url,
        "PUT",
        f"{location}?digest={digest_of(data)}",
        data,
        {"Content-Length": "0" * 5000 + "5"},
    )
    assert answer.status_code == 201, answer.text
    assert_blob(client, repo, data)


def test_manifest_with_a_number_too_long_to_read(client: httpx.Client) -> None:
    repo = unique_repo()
    doc = image_doc(client, repo)
    body = json.dumps(doc).encode()[:-1] + b', "x": ' + LONG.encode() + b"}"
    answer = put_manifest(client, repo, "t", body, mt.OCI_MANIFEST)
    assert_error(answer, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize("size", [2**63, 10**4000])
def test_manifest_with_a_size_no_blob_has(client: httpx.Client, size: int) -> None:
    repo = unique_repo()
    doc = image_doc(client, repo)
    doc["layers"][0]["size"] = size
    answer = put_manifest(client, repo, "t", json.dumps(doc).encode(), mt.OCI_MANIFEST)
    assert_error(answer, 400, "MANIFEST_INVALID")
