"""`registry.errors` rendered, and what the server makes of malformed names and digests in
every URL: the spec's 4xx and JSON body, never a 500."""

from __future__ import annotations

import json
from urllib.parse import unquote

import httpx
import pytest

from api.helpers import (
    ZERO_DIGEST,
    assert_4xx_json,
    assert_error,
    digest_of,
    push_blob,
    raw_request,
    start_upload,
    unique_repo,
)
from registry import errors

UPLOAD = "0" * 32


def test_error_body() -> None:
    error = errors.BlobUnknown(detail={"digest": ZERO_DIGEST})
    assert error.http_status == 404
    entry = {"code": "BLOB_UNKNOWN", "message": error.message, "detail": {"digest": ZERO_DIGEST}}
    assert json.loads(error.body()) == {"errors": [entry]}


def test_error_body_lists_related_errors_and_defaults_detail() -> None:
    error = errors.ManifestBlobUnknown(also=[errors.ManifestUnknown("child missing")])
    body = json.loads(error.body())
    assert body["errors"] == [
        {"code": "MANIFEST_BLOB_UNKNOWN", "message": error.message, "detail": {}},
        {"code": "MANIFEST_UNKNOWN", "message": "child missing", "detail": {}},
    ]


def test_status_and_headers_can_be_overridden() -> None:
    error = errors.BlobUploadInvalid("out of order", status=416, headers={"Range": "0-9"})
    assert (error.http_status, error.status, error.headers) == (416, 400, {"Range": "0-9"})


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (errors.BlobUnknown, 404, "BLOB_UNKNOWN"),
        (errors.BlobUploadInvalid, 400, "BLOB_UPLOAD_INVALID"),
        (errors.BlobUploadUnknown, 404, "BLOB_UPLOAD_UNKNOWN"),
        (errors.DigestInvalid, 400, "DIGEST_INVALID"),
        (errors.ManifestBlobUnknown, 400, "MANIFEST_BLOB_UNKNOWN"),
        (errors.ManifestInvalid, 400, "MANIFEST_INVALID"),
        (errors.ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
        (errors.NameInvalid, 400, "NAME_INVALID"),
        (errors.NameUnknown, 404, "NAME_UNKNOWN"),
        (errors.SizeInvalid, 400, "SIZE_INVALID"),
        (errors.Unauthorized, 401, "UNAUTHORIZED"),
        (errors.Denied, 403, "DENIED"),
        (errors.Unsupported, 405, "UNSUPPORTED"),
        (errors.TooManyRequests, 429, "TOOMANYREQUESTS"),
        (errors.PayloadTooLarge, 413, "MANIFEST_INVALID"),
    ],
)
def test_spec_codes_and_statuses(cls: type[errors.RegistryError], status: int, code: str) -> None:
    error = cls()
    assert (error.http_status, error.code) == (status, code)
    assert error.message


# Every route taking a repository name, as (method, path after the name).
NAME_ROUTES = [
    ("GET", "/tags/list"),
    ("POST", "/blobs/uploads/"),
    ("GET", f"/blobs/uploads/{UPLOAD}"),
    ("PATCH", f"/blobs/uploads/{UPLOAD}"),
    ("PUT", f"/blobs/uploads/{UPLOAD}?digest={ZERO_DIGEST}"),
    ("DELETE", f"/blobs/uploads/{UPLOAD}"),
    ("GET", f"/blobs/{ZERO_DIGEST}"),
    ("HEAD", f"/blobs/{ZERO_DIGEST}"),
    ("DELETE", f"/blobs/{ZERO_DIGEST}"),
    ("GET", "/manifests/latest"),
    ("HEAD", "/manifests/latest"),
    ("PUT", "/manifests/latest"),
    ("DELETE", "/manifests/latest"),
    ("GET", f"/referrers/{ZERO_DIGEST}"),
]

INVALID_NAMES = [
    "../x",
    "x/..",
    "x/../y",
    "./x",
    "Upper",
    "a/B",
    "a//b",
    "x/",
    "-x",
    "x-",
    "x.",
    "_x",
    "a___b",
    "a..b/c/",
    "a%20b",
    "a%00b",
    "caf%C3%A9",
    "a" * 256,
    "/".join(["abcdefghijklmnop"] * 16),  # 271 characters of valid components
]

VALID_NAMES = ["a", "a/b/c", "a__b", "a--b", "a.b-c_d", "0", "x" * 255]


def _send(base: str, method: str, name: str, rest: str) -> httpx.Response:
    # http.client sends the path as it is; httpx would resolve `..` before it left.
    return raw_request(base, method, f"/v2/{name}{rest}", b"", {"Content-Length": "0"})


# A few of them on every route; all of them on one.
NAME_CASES = [(method, rest, name) for method, rest in NAME_ROUTES for name in INVALID_NAMES[:4]]
NAME_CASES += [("GET", "/tags/list", name) for name in INVALID_NAMES[4:]]


@pytest.mark.parametrize(("method", "rest", "name"), NAME_CASES)
def test_invalid_name(registry_url: str, method: str, rest: str, name: str) -> None:
    response = _send(registry_url, method, name, rest)
    if method == "HEAD":
        assert response.status_code == 400
        assert response.content == b""
    else:
        errors = assert_error(response, 400, "NAME_INVALID")
        assert errors[0]["detail"] == {"name": unquote(name)}


def test_name_with_empty_first_component_does_not_route(registry_url: str) -> None:
    """`/v2//x/...` has no name before its first slash; no route matches it."""
    assert_4xx_json(_send(registry_url, "GET", "/x", "/tags/list"))


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(client: httpx.Client, name: str) -> None:
    digest = push_blob(client, name, name.encode())
    assert client.head(f"/v2/{name}/blobs/{digest}").status_code == 200


# Every place a digest goes, as (method, path with {d} for the digest, body).
DIGEST_ROUTES = [
    ("GET", "/v2/{repo}/blobs/{d}"),
    ("HEAD", "/v2/{repo}/blobs/{d}"),
    ("DELETE", "/v2/{repo}/blobs/{d}"),
    ("GET", "/v2/{repo}/manifests/{d}"),
    ("HEAD", "/v2/{repo}/manifests/{d}"),
    ("PUT", "/v2/{repo}/manifests/{d}"),
    ("DELETE", "/v2/{repo}/manifests/{d}"),
    ("GET", "/v2/{repo}/referrers/{d}"),
    ("POST", "/v2/{repo}/blobs/uploads/?digest={d}"),
    ("POST", "/v2/{repo}/blobs/uploads/?mount={d}&from={repo}"),
    ("POST", "/v2/{repo}/blobs/uploads/?mount={d}"),
    ("PUT", "{upload}?digest={d}"),
]

INVALID_DIGESTS = [
    "sha256:abc",
    "sha256:" + "g" * 64,
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha512:" + "0" * 64,
    "SHA256:" + "0" * 64,
    "md5:" + "0" * 32,
    "sha1:" + "0" * 40,
    "sha256:",
    ":" + "0" * 64,
    "sha256::" + "0" * 64,
    "sha256:" + "0" * 2000,
    "sha256:%00",
    "sha256:%FF%FE",
    "sha256:0%2F0",
    "sha256+x:" + "0" * 64,
]


@pytest.fixture(scope="module")
def digest_repo(registry_url: str) -> str:
    repo = unique_repo("errors")
    with httpx.Client(base_url=registry_url) as c:
        push_blob(c, repo, b"present")
    return repo


DIGEST_CASES = [(m, t, d) for m, t in DIGEST_ROUTES for d in INVALID_DIGESTS[:3]]
DIGEST_CASES += [
    (m, t, d) for m, t in DIGEST_ROUTES[:1] + DIGEST_ROUTES[3:4] for d in INVALID_DIGESTS[3:]
]


@pytest.mark.parametrize(("method", "template", "digest"), DIGEST_CASES)
def test_invalid_digest(
    client: httpx.Client,
    registry_url: str,
    digest_repo: str,
    method: str,
    template: str,
    digest: str,
) -> None:
    upload = start_upload(client, digest_repo) if "{upload}" in template else ""
    path = template.format(repo=digest_repo, d=digest, upload=upload)
    response = raw_request(registry_url, method, path, b"", {"Content-Length": "0"})
    if "%2F" in digest:
        # An encoded slash splits the path: it no longer ends in a digest.
        assert_4xx_json(response)
    elif method == "HEAD":
        assert response.status_code == 400
    else:
        assert_error(response, 400, "DIGEST_INVALID")


def test_blob_route_needs_a_digest_not_a_tag(client: httpx.Client, digest_repo: str) -> None:
    assert_error(client.get(f"/v2/{digest_repo}/blobs/latest"), 400, "DIGEST_INVALID")


def test_valid_but_unknown_digests(client: httpx.Client, digest_repo: str) -> None:
    for digest in (ZERO_DIGEST, digest_of(b"nothing", "sha512")):
        assert_error(client.get(f"/v2/{digest_repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        response = client.get(f"/v2/{digest_repo}/manifests/{digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_server_is_healthy_after_bad_input(client: httpx.Client) -> None:
    assert client.get("/v2/").status_code == 200


@pytest.mark.parametrize("size", [5 * 1024 * 1024, 20 * 1024 * 1024])
def test_error_before_the_body_is_read(client: httpx.Client, size: int) -> None:
    """An error answered before the body was read leaves the connection usable: the body is
    read and dropped, or (past a limit) the server closes the connection."""
    body = b"x" * size
    response = client.patch(f"/v2/{unique_repo()}/blobs/uploads/{UPLOAD}", content=body)
    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    if size > 16 * 1024 * 1024:
        assert response.headers["connection"] == "close"
    response = client.put("/v2/BAD/manifests/latest", content=body)
    assert_error(response, 400, "NAME_INVALID")
    assert client.get("/v2/").status_code == 200


def test_trailing_slash_is_not_an_endpoint(client: httpx.Client) -> None:
    repo = unique_repo("errors")
    push_blob(client, repo, b"x")
    response = client.get(f"/v2/{repo}/tags/list/")
    assert_4xx_json(response)
    assert response.status_code == 404  # not a redirect to somewhere else


def test_thousands_of_missing_blobs_give_a_bounded_error_list(client: httpx.Client) -> None:
    repo = unique_repo("errors")
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest_of(b"%d" % i),
            "size": 1,
        }
        for i in range(5000)
    ]
    config = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": digest_of(b"{}"),
        "size": 2,
    }
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        }
    ).encode()
    response = client.put(
        f"/v2/{repo}/manifests/v1",
        content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    found = assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    assert len(found) == errors.MAX_ERRORS
