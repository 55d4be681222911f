"""/metrics on a real server: after a push and a pull, every counter moved by what was done.

Each test starts a fresh server, so a counter's value is exactly what the test made it do."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api.helpers import digest_of, push_blob, put_manifest, unique_repo
from prometheus_client.parser import text_string_to_metric_families

from registry.oci import mediatypes as mt

from support.server import RegistryServer, free_port

BLOB_ROUTE = "/v2/{name:path}/blobs/{digest}"
UPLOAD_ROUTE = "/v2/{name:path}/blobs/uploads/"
MANIFEST_ROUTE = "/v2/{name:path}/manifests/{reference}"
Page = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Page:
    """Every sample of the page, keyed by name and labels."""
    found: Page = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(page: Page, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryServer]:
    args = ["--workers", str(request.param)]
    server = RegistryServer(tmp_path / "data", extra_args=args)
    server.start()
    yield server
    server.stop()


def push_and_pull(url: str) -> dict[str, int]:
    """A push (config, one layer, manifest by tag) and a pull of the layer; the sizes."""
    repo = unique_repo("metrics")
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = os.urandom(300_000)
    with httpx.Client(base_url=url, timeout=30) as client:
        config_digest = push_blob(client, repo, config)
        layer_digest = push_blob(client, repo, layer)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": mt.OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}
            ],
        }).encode()  # fmt: skip
        assert put_manifest(client, repo, "v1", manifest, mt.OCI_MANIFEST).status_code == 201
        pulled = client.get(f"/v2/{repo}/blobs/{layer_digest}")
        assert pulled.status_code == 200 and pulled.content == layer
        assert client.head(f"/v2/{repo}/manifests/v1").status_code == 200
        assert client.get(f"/v2/{repo}/blobs/{digest_of(b'nothing')}").status_code == 404
    return {"config": len(config), "layer": len(layer), "manifest": len(manifest)}


def test_counters_move_by_what_a_push_and_a_pull_did(server: RegistryServer) -> None:
    sizes = push_and_pull(server.url)
    page = samples(httpx.get(f"{server.url}/metrics").text)

    requests = "registry_http_requests_total"
    assert value(page, requests, route=UPLOAD_ROUTE, method="POST", status="201") == 2
    assert value(page, requests, route=MANIFEST_ROUTE, method="PUT", status="201") == 1
    assert value(page, requests, route=MANIFEST_ROUTE, method="HEAD", status="200") == 1
    assert value(page, requests, route=BLOB_ROUTE, method="GET", status="200") == 1
    assert value(page, requests, route=BLOB_ROUTE, method="GET", status="404") == 1
    count = "registry_http_request_duration_seconds_count"
    assert value(page, count, route=BLOB_ROUTE, method="GET") == 2
    bucket = "registry_http_request_duration_seconds_bucket"
    assert value(page, bucket, route=UPLOAD_ROUTE, method="POST", le="+Inf") == 2

    received = "registry_http_received_bytes_total"
    assert value(page, received, route=UPLOAD_ROUTE) == sizes["config"] + sizes["layer"]
    assert value(page, received, route=MANIFEST_ROUTE) == sizes["manifest"]
    sent = "registry_http_sent_bytes_total"
    not_found = len(httpx.get(f"{server.url}/v2/x/blobs/{digest_of(b'nothing')}").content)
    assert value(page, sent, route=BLOB_ROUTE) == sizes["layer"] + not_found  # sendfile counted

    assert value(page, "registry_blobs_stored") == 2
    assert value(page, "registry_blob_bytes_stored") == sizes["config"] + sizes["layer"]
    assert value(page, "registry_upload_sessions") == 0
    assert value(page, "registry_uploads_in_progress") == 0
    assert value(page, "registry_db_pool_size") >= 2
    assert ("registry_db_connections_in_use", frozenset()) in page


def test_metrics_on_their_own_address_are_not_on_the_clients_one(tmp_path: Path) -> None:
    port = free_port()
    server = RegistryServer(
        tmp_path / "data",
        extra_args=["--workers", "2"],
        env={"REGISTRY_SERVER_METRICS_ADDR": f"127.0.0.1:{port}"},
    )
    server.start()
    try:
        push_and_pull(server.url)
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        page = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        requests = "registry_http_requests_total"
        assert value(page, requests, route=BLOB_ROUTE, method="GET", status="200") == 1
        assert value(page, "registry_blobs_stored") == 2
        assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 404  # metrics only
    finally:
        server.stop()


def test_auth_denials_and_tokens_are_counted(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data", env={"REGISTRY_AUTH_ENABLED": "true"})
    server.start()
    try:
        assert httpx.get(f"{server.url}/v2/").status_code == 401  # a challenge: no denial
        bad = httpx.get(f"{server.url}/v2/", auth=("nobody", "wrong"))
        assert bad.status_code == 401
        anonymous = httpx.get(f"{server.url}/auth/token", params={"service": "pocket-registry"})
        assert anonymous.status_code == 200
        page = samples(httpx.get(f"{server.url}/metrics").text)
        assert value(page, "registry_auth_denials_total", reason="bad_credentials") == 1
        assert value(page, "registry_auth_tokens_issued_total") == 1
    finally:
        server.stop()
