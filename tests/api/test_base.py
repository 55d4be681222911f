"""`GET /v2/` and what every answer carries, whatever the route."""

from __future__ import annotations

import httpx
import pytest

from api.helpers import API_VERSION, ZERO_DIGEST, assert_error


def test_version_check(client: httpx.Client) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == API_VERSION
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/no-such/tags/list", 404, "NAME_UNKNOWN"),
        ("GET", f"/v2/no-such/blobs/{ZERO_DIGEST}", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/no-such/manifests/latest", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/BAD/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/x/blobs/sha256:nope", 400, "DIGEST_INVALID"),
        ("GET", "/v2/not/a/route", 404, "NAME_UNKNOWN"),
        ("GET", "/nothing-here", 404, "NAME_UNKNOWN"),
        ("DELETE", "/v2/", 405, "UNSUPPORTED"),
        ("POST", "/v2/x/tags/list", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/x/manifests/latest", 405, "UNSUPPORTED"),
    ],
)
def test_errors_carry_version_header_and_json_body(
    client: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    assert_error(client.request(method, path), status, code)


def test_head_error_has_no_body(client: httpx.Client) -> None:
    response = client.head(f"/v2/no-such/blobs/{ZERO_DIGEST}")
    assert response.status_code == 404
    assert response.headers["docker-distribution-api-version"] == API_VERSION
    assert response.headers["content-length"] == "0"
    assert response.content == b""
