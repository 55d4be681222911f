"""The server's HTTP protocol (`registry.http_protocol`): zero-copy file sends on a real
uvicorn, and blob pulls through it from a real registry server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from registry.http_protocol import ZERO_COPY_SEND, RegistryHttpProtocol

from support.server import RegistryServer, free_port

SIZE = 3 * 1024 * 1024 + 17


class FileApp:
    """Sends `path` (or the range asked by `?from=&count=`), zero-copy; notes what it saw."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.extensions: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.extensions = list(scope.get("extensions", {}))
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        offset, count = int(query.get("from", 0)), int(query.get("count", SIZE))
        promised = int(query.get("promise", count))
        with open(self.path, "rb", buffering=0) as file:
            headers = [(b"content-length", str(promised).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": ZERO_COPY_SEND, "file": file, "offset": offset, "count": promised})


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FileApp, bytes]]:
    path = tmp_path_factory.mktemp("zerocopy") / "blob"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    app = FileApp(path)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=RegistryHttpProtocol,
        loop="asyncio",
        log_level="critical",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app, data
    server.should_exit = True
    thread.join(10)


def test_scope_announces_the_extension(file_server: tuple[str, FileApp, bytes]) -> None:
    url, app, data = file_server
    response = httpx.get(url)
    assert response.content == data
    assert ZERO_COPY_SEND in app.extensions


def test_ranges_and_keep_alive(file_server: tuple[str, FileApp, bytes]) -> None:
    url, _app, data = file_server
    with httpx.Client(base_url=url) as client:
        for offset, count in [(0, SIZE), (1, 1), (4095, 70000), (SIZE - 5, 5), (0, SIZE)]:
            response = client.get(f"/?from={offset}&count={count}")
            assert response.status_code == 200
            assert response.content == data[offset : offset + count]
            assert response.headers.get("connection") != "close"


def test_http_1_0_closes_after_the_file(file_server: tuple[str, FileApp, bytes]) -> None:
    url, _app, data = file_server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /?from=10&count=1000 HTTP/1.0\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # ends only when the server closes
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == data[10:1010]


def test_a_file_shorter_than_promised_ends_the_connection(
    file_server: tuple[str, FileApp, bytes],
) -> None:
    url, _app, data = file_server
    # Content-Length promises more than the file has left: the connection must close
    # (a client then knows the body is short) rather than hang or run into the next reply.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{url}/?from={SIZE - 100}&count=100&promise=1000", timeout=10)
    assert httpx.get(url).content == data  # the server carries on


def test_a_client_leaving_mid_send_does_not_hurt_the_server(
    file_server: tuple[str, FileApp, bytes],
) -> None:
    url, _app, data = file_server
    port = int(url.rsplit(":", 1)[1])
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1000)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    assert httpx.get(url).content == data


def test_registry_pulls_are_exact_on_one_connection(registry_server: RegistryServer) -> None:
    data = os.urandom(40 * 1024 * 1024 + 3)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=registry_server.url, timeout=60) as client:
        started = client.post("/v2/big/blob/blobs/uploads/")
        put = client.put(started.headers["location"], params={"digest": digest}, content=data)
        assert put.status_code == 201
        for _ in range(2):
            whole = client.get(f"/v2/big/blob/blobs/{digest}")
            assert whole.status_code == 200
            assert hashlib.sha256(whole.content).hexdigest() == digest.split(":")[1]
        part = client.get(f"/v2/big/blob/blobs/{digest}", headers={"Range": "bytes=12345-"})
        assert part.status_code == 206
        assert part.content == data[12345:]
        # Then an ordinary JSON answer on the same connection: the framing held.
        assert client.get("/v2/big/blob/tags/list").status_code in (200, 404)


def test_bytes_that_are_no_http_request_get_a_json_error(registry_server: RegistryServer) -> None:
    with socket.create_connection(("127.0.0.1", registry_server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNSUPPORTED" and "malformed HTTP request" in error["message"]


def test_connections_get_tcp_nodelay_whatever_the_listening_socket(tmp_path: Path) -> None:
    # uvicorn's listening socket for several workers has proto 0, so asyncio leaves Nagle on
    # for its connections: then an answer's body, sent after its headers, waits ~40 ms for
    # the client's delayed ACK. The protocol turns Nagle off on every connection.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as uvicorn's
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        for connection in server.server_state.connections:
            sock = connection.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(
        app, http=RegistryHttpProtocol, loop="asyncio", log_level="critical", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok"
        assert seen and all(value != 0 for value in seen)
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
