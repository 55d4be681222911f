"""Request ids and JSON log lines, on a real server; the pieces that need no server, alone."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api.helpers import encode, push_manifest, unique_repo
from api.helpers import image_doc as pushed_image_doc

from registry.observe import JsonFormatter, RequestIds, client_request_id, current_request_id

from support.server import RegistryServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    env = {"REGISTRY_SERVER_ACCESS_LOG": "true", "REGISTRY_SERVER_LOG_FORMAT": "json"}
    server = RegistryServer(tmp_path_factory.mktemp("observe") / "data", env=env)
    server.start()
    yield server
    server.stop()


def log_lines(server: RegistryServer, request_id: str) -> list[dict[str, Any]]:
    """The server's log as JSON objects, once the line of `request_id` is in it."""
    deadline = time.monotonic() + 10
    while request_id not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line]


def test_the_clients_request_id_comes_back_and_is_logged(server: RegistryServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        repo = unique_repo("observe")
        doc = pushed_image_doc(client, repo)
        body = encode(doc)
        answer = client.put(
            f"/v2/{repo}/manifests/v1",
            content=body,
            headers={"Content-Type": doc["mediaType"], "X-Request-Id": "deploy-42.a:b/c=="},
        )
    assert answer.status_code == 201
    assert answer.headers["x-request-id"] == "deploy-42.a:b/c=="
    lines = log_lines(server, "deploy-42.a:b/c==")  # every line of the log parses as JSON
    [line] = [entry for entry in lines if entry.get("request_id") == "deploy-42.a:b/c=="]
    assert line["logger"] == "registry.access"
    assert line["method"] == "PUT"
    assert line["route"] == "/v2/{name:path}/manifests/{reference}"
    assert line["repository"] == repo
    assert line["reference"] == "v1"
    assert line["status"] == 201
    assert line["bytes_in"] == len(body)
    assert line["bytes_out"] == 0
    assert line["duration_ms"] >= 0
    assert line["account"] == ""  # auth is off
    assert any(entry["logger"].startswith("uvicorn") for entry in lines)  # events too


@pytest.mark.parametrize(
    "given",
    ["x" * 129, "has space", "quote\"", "semi;colon", "üñí", ""],
    ids=["too-long", "space", "quote", "semicolon", "non-ascii", "empty"],
)
def test_an_unusable_request_id_is_replaced(server: RegistryServer, given: str) -> None:
    answer = httpx.get(f"{server.url}/v2/", headers={"X-Request-Id": given.encode()})
    replaced = answer.headers["x-request-id"]
    assert replaced != given and 0 < len(replaced) <= 128
    assert client_request_id([(b"x-request-id", replaced.encode())]) is not None


def test_requests_without_an_id_get_distinct_ones(server: RegistryServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        ids = {client.get("/v2/").headers["x-request-id"] for _ in range(20)}
        errors = client.get("/v2/nothing/manifests/none")
    assert len(ids) == 20
    assert errors.status_code == 404 and errors.headers["x-request-id"] not in ids
    assert errors.headers["docker-distribution-api-version"] == "registry/2.0"


def test_ids_are_unique_and_header_safe() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(client_request_id([(b"x-request-id", i.encode())]) for i in made)
    assert client_request_id([(b"x-request-id", b"a\r\nb")]) is None
    assert client_request_id([(b"x-request-id", b"a" * 128)]) == b"a" * 128
    assert client_request_id([(b"other", b"a")]) is None


def test_event_lines_carry_the_request_they_were_written_in() -> None:
    record = logging.LogRecord("registry", logging.WARNING, "f", 1, "disk %s", ("full",), None)
    token = current_request_id.set("req-7")
    try:
        inside = json.loads(JsonFormatter().format(record))
    finally:
        current_request_id.reset(token)
    outside = json.loads(JsonFormatter().format(record))
    assert inside["message"] == "disk full" and inside["level"] == "warning"
    assert inside["request_id"] == "req-7"
    assert "request_id" not in outside


def test_text_request_lines_name_the_request(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data", env={"REGISTRY_SERVER_ACCESS_LOG": "true"})
    server.start()
    try:
        with httpx.Client(base_url=server.url) as client:
            repo = unique_repo("text")
            push_manifest(client, repo, "v1", pushed_image_doc(client, repo))
            client.get(f"/v2/{repo}/tags/list", headers={"X-Request-Id": "text-line-1"})
        deadline = time.monotonic() + 10
        while "text-line-1" not in server.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        [line] = [x for x in server.log_path.read_text().splitlines() if "text-line-1" in x]
        assert f'"GET /v2/{repo}/tags/list" 200' in line
    finally:
        server.stop()
