"""The limits of the server's HTTP protocol (`registry.http_limits`), on a real server over
raw sockets: head size, URL length, header count, head and body timeouts, keep-alive, the
connection cap, and the memory a flood of refused requests leaves behind."""

from __future__ import annotations

import hashlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.config import ConfigError, ServerConfig
from registry.http_limits import HttpLimits

from support.server import RegistryServer

HEAD_LIMIT = 8192
URL_LIMIT = 1024
HEADER_COUNT = 20
WAIT = 30.0  # a guard on every socket read: a server that never answers fails the test


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A server with small limits and short timeouts."""
    server = RegistryServer(tmp_path_factory.mktemp("limited") / "data")
    server.env.update(
        {
            "REGISTRY_SERVER_MAX_HEADER_BYTES": str(HEAD_LIMIT),
            "REGISTRY_SERVER_MAX_URL_BYTES": str(URL_LIMIT),
            "REGISTRY_SERVER_MAX_HEADERS": str(HEADER_COUNT),
            "REGISTRY_SERVER_HEADER_TIMEOUT": "1",
            "REGISTRY_SERVER_BODY_IDLE_TIMEOUT": "2",
            "REGISTRY_SERVER_KEEP_ALIVE_TIMEOUT": "1",
        }
    )
    server.start()
    yield server
    server.stop()


def connect(server: RegistryServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def error(self) -> dict[str, Any]:
        """The first entry of the spec's JSON error body, with the checks every one needs."""
        assert self.headers["content-type"] == "application/json"
        assert self.headers["docker-distribution-api-version"] == "registry/2.0"
        errors = json.loads(self.body)["errors"]
        assert set(errors[0]) == {"code", "message", "detail"}
        return dict(errors[0])


def read_answer(sock: socket.socket, buffer: bytearray | None = None) -> Answer:
    """One answer (with a Content-Length) from `sock`; `buffer` keeps what follows it."""
    buffer = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer; got {bytes(buffer[:200])!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of an answer")
        rest += chunk
    buffer[:] = rest[length:]
    return Answer(int(lines[0].split()[1]), headers, rest[:length])


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server ends the connection (reads until then; False on the guard)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def request_of_size(size: int, target: str = "/v2/") -> bytes:
    """A GET whose request line and headers are exactly `size` bytes."""
    start = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode()
    pad = size - len(start) - 4
    assert pad >= 0
    return start + b"a" * pad + b"\r\n\r\n"


# Settings --------------------------------------------------------------------------------


def test_settings_become_the_protocol_limits() -> None:
    limits = HttpLimits.from_config(ServerConfig(max_header_bytes=4096, body_idle_timeout=0))
    assert (limits.max_header_bytes, limits.body_idle_timeout) == (4096, 0.0)
    assert HttpLimits.from_config(ServerConfig()) == HttpLimits()


@pytest.mark.parametrize(
    "wrong",
    [
        {"max_header_bytes": 100},
        {"max_url_bytes": 0},
        {"max_headers": 0},
        {"header_timeout": -1},
        {"body_idle_timeout": -1},
        {"keep_alive_timeout": -1},
        {"max_connections": -1},
    ],
)
def test_limits_that_cannot_work_are_refused(wrong: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=next(iter(wrong))):
        HttpLimits.from_config(ServerConfig(**wrong))  # type: ignore[arg-type]


# Head size -------------------------------------------------------------------------------


def test_a_head_at_the_limit_is_served_one_byte_more_is_431(limited: RegistryServer) -> None:
    with connect(limited) as sock:
        sock.sendall(request_of_size(HEAD_LIMIT))
        assert read_answer(sock).status == 200
    with connect(limited) as sock:
        sock.sendall(request_of_size(HEAD_LIMIT + 1))
        answer = read_answer(sock)
        assert answer.status == 431
        error = answer.error()
        assert error["code"] == "UNSUPPORTED" and error["detail"] == {"limit": HEAD_LIMIT}
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)


def test_a_head_sent_in_small_pieces_is_counted_across_them(limited: RegistryServer) -> None:
    request = request_of_size(HEAD_LIMIT + 1)
    with connect(limited) as sock:
        for offset in range(0, len(request), 1000):
            try:
                sock.sendall(request[offset : offset + 1000])
            except (BrokenPipeError, ConnectionResetError):
                break
        assert read_answer(sock).status == 431
        assert closed_by_server(sock)


def test_a_header_line_that_never_ends_is_refused_without_reading_it_all(
    limited: RegistryServer,
) -> None:
    # 16 MiB of one header line: refused after the limit, the rest read and dropped, and
    # the answer arrives (rather than a reset) once the client is done sending.
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (16 * 1024 * 1024))
        answer = read_answer(sock)
        assert answer.status == 431
        assert closed_by_server(sock)


def test_a_keep_alive_connection_counts_each_head_afresh(limited: RegistryServer) -> None:
    with connect(limited) as sock:
        for _ in range(5):  # together far over the limit, each within it
            sock.sendall(request_of_size(HEAD_LIMIT - 100))
            assert read_answer(sock).status == 200


def test_pipelined_requests_beyond_the_limit_together_are_all_answered(
    limited: RegistryServer,
) -> None:
    one = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    count = 3 * HEAD_LIMIT // len(one)  # three limits' worth, in one send
    with connect(limited) as sock:
        sock.sendall(one * count)
        buffer = bytearray()
        statuses = [read_answer(sock, buffer).status for _ in range(count)]
    assert statuses == [200] * count


def test_pipelined_request_after_an_upload_body_is_parsed(limited: RegistryServer) -> None:
    data = b"z" * 300_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = httpx.post(f"{limited.url}/v2/limits/pipe/blobs/uploads/").headers["location"]
    put = (
        f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with connect(limited) as sock:
        sock.sendall(put + data + b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        buffer = bytearray()
        assert read_answer(sock, buffer).status == 201
        assert read_answer(sock, buffer).status == 200


# URL and header count --------------------------------------------------------------------


def test_a_url_over_its_limit_is_414(limited: RegistryServer) -> None:
    target = "/v2/_catalog?x=" + "a" * (URL_LIMIT - len("/v2/_catalog?x="))
    assert len(target) == URL_LIMIT
    with connect(limited) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_answer(sock).status == 200
    with connect(limited) as sock:
        sock.sendall(f"GET {target}a HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = read_answer(sock)
        assert answer.status == 414
        assert answer.error()["detail"] == {"limit": URL_LIMIT}
        assert closed_by_server(sock)


def test_more_header_fields_than_allowed_is_431(limited: RegistryServer) -> None:
    def request(count: int) -> bytes:
        fields = "".join(f"X-F{i}: v\r\n" for i in range(count - 1))
        return f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode()

    with connect(limited) as sock:
        sock.sendall(request(HEADER_COUNT))
        assert read_answer(sock).status == 200
    with connect(limited) as sock:
        sock.sendall(request(HEADER_COUNT + 1))
        answer = read_answer(sock)
        assert answer.status == 431
        assert answer.error()["detail"] == {"limit": HEADER_COUNT}
        assert closed_by_server(sock)


# Timeouts --------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(limited: RegistryServer) -> None:
    with connect(limited) as sock:
        assert closed_by_server(sock)


def test_a_head_that_stops_halfway_is_closed(limited: RegistryServer) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(sock)


def test_an_idle_keep_alive_connection_is_closed(limited: RegistryServer) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).status == 200
        sock.settimeout(4)  # the setting's 1 s, not uvicorn's default of 5 or our old 30
        assert closed_by_server(sock)


def test_without_keep_alive_each_answer_says_the_connection_closes(tmp_path: Path) -> None:
    """keep_alive_timeout 0: every answer carries `Connection: close` before the server
    closes (a silent close races the client's next request: Go clients then fail a PUT)."""
    server = RegistryServer(tmp_path / "data", env={"REGISTRY_SERVER_KEEP_ALIVE_TIMEOUT": "0"})
    server.start()
    try:
        for request in (
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v2/ka/zero/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ):
            with connect(server) as sock:
                sock.sendall(request)
                answer = read_answer(sock)
                assert answer.status in (200, 202)
                assert answer.headers.get("connection") == "close", answer.headers
                assert closed_by_server(sock)
    finally:
        server.stop()


def test_a_stalled_patch_leaves_the_upload_resumable(limited: RegistryServer) -> None:
    """The server closes a PATCH whose body stalls; the upload stays at its last acknowledged
    size (the Range of the last 202; the bytes of the interrupted PATCH are dropped), and
    carries on from there."""
    data = bytes(range(256)) * 8192  # 2 MiB
    first, second = 700_000, 1_500_000
    client = httpx.Client(base_url=limited.url, timeout=WAIT)
    location = client.post("/v2/limits/stall/blobs/uploads/").headers["location"]
    acknowledged = client.patch(
        location, content=data[:first], headers={"Content-Range": f"0-{first - 1}"}
    )
    assert acknowledged.status_code == 202
    assert acknowledged.headers["range"] == f"0-{first - 1}"
    with connect(limited) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {second - first}\r\n"
            f"Content-Range: {first}-{second - 1}\r\n\r\n".encode()
        )
        sock.sendall(data[first : first + 400_000])  # of 800,000 promised; then nothing
        assert closed_by_server(sock)
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == f"0-{first - 1}"
    rest = client.patch(
        location, content=data[first:], headers={"Content-Range": f"{first}-{len(data) - 1}"}
    )
    assert rest.status_code == 202
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.put(location, params={"digest": digest}).status_code == 201
    pulled = client.get(f"/v2/limits/stall/blobs/{digest}")
    assert hashlib.sha256(pulled.content).hexdigest() == digest.split(":")[1]
    client.close()


def test_a_body_that_keeps_coming_is_not_cut_off(limited: RegistryServer) -> None:
    # Two seconds of idle timeout, a body that takes three: each piece comes well within it.
    data = b"q" * 10_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = httpx.post(f"{limited.url}/v2/limits/slow/blobs/uploads/").headers["location"]
    with connect(limited) as sock:
        sock.sendall(
            f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        for offset in range(0, len(data), 1000):
            time.sleep(0.3)
            sock.sendall(data[offset : offset + 1000])
        assert read_answer(sock).status == 201


# Connections -----------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data")
    server.env["REGISTRY_SERVER_MAX_CONNECTIONS"] = "4"
    server.env["REGISTRY_SERVER_KEEP_ALIVE_TIMEOUT"] = "600"
    server.start()
    held: list[socket.socket] = []
    try:
        for _ in range(50):  # four open connections, each seen through a first answer
            if len(held) == 4:
                break
            sock = connect(server)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                status = read_answer(sock).status
            except ConnectionError:  # the server's start-up probe was still counted
                status = 0
            if status == 200:
                held.append(sock)
            else:
                sock.close()
                time.sleep(0.1)
        assert len(held) == 4
        with connect(server) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_answer(sock)
            assert answer.status == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.error()["code"] == "UNAVAILABLE"
            assert closed_by_server(sock)
        for sock in held:  # the held ones still work
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock).status == 200
        held.pop().close()
        for _ in range(100):  # once one has gone, a new one is served
            if httpx.get(f"{server.url}/v2/").status_code == 200:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no connection was served after one closed")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_the_server_may_open_files_for_its_connections(tmp_path: Path) -> None:
    # Started with a soft limit of 512 open files (a service manager's 1,024, say), it raises
    # it to the hard limit, as Go's runtime does: else accept() fails before the cap.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 2048, "this test needs a hard limit above 2048"
    server = RegistryServer(tmp_path / "data")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text().splitlines()
        line = next(line for line in limits if line.startswith("Max open files"))
        assert int(line.split()[3]) == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        server.stop()


def test_several_workers_apply_the_limits(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data", extra_args=["--workers", "2"])
    server.env["REGISTRY_SERVER_MAX_HEADER_BYTES"] = str(HEAD_LIMIT)
    server.start()
    try:
        for _ in range(8):  # whichever worker takes the connection
            with connect(server) as sock:
                sock.sendall(request_of_size(HEAD_LIMIT + 1))
                assert read_answer(sock).status == 431
    finally:
        server.stop()


# Memory ----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def oversize_requests(server: RegistryServer, rounds: int, header_bytes: int) -> list[int]:
    """`rounds` requests with a header of `header_bytes`, one connection each; the statuses
    (0: no answer)."""
    statuses = []
    line = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: "
    for _ in range(rounds):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            try:
                sock.sendall(line + b"b" * header_bytes + b"\r\n\r\n")
                statuses.append(read_answer(sock).status)
            except OSError:
                statuses.append(0)
    return statuses


def test_a_flood_of_oversize_heads_leaves_memory_as_it_was(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data")  # the default limits
    server.start()
    assert server.process is not None
    pid = server.process.pid
    try:
        oversize_requests(server, 3, 4 * 1024 * 1024)  # every code path has run once
        before = rss_bytes(pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(rss_bytes(pid))
                done.wait(0.02)

        results: list[list[int]] = []
        flooders = [
            threading.Thread(
                target=lambda: results.append(oversize_requests(server, 4, 4 * 1024 * 1024))
            )
            for _ in range(50)
        ]
        sampler = threading.Thread(target=sample)
        sampler.start()
        for thread in flooders:
            thread.start()
        for thread in flooders:
            thread.join()
        done.set()
        sampler.join()
        after = rss_bytes(pid)
        assert [s for statuses in results for s in statuses] == [431] * 200
        mib = 1024 * 1024
        # 800 MiB of refused heads, 200 connections, 50 at a time: a few MiB at most
        assert max(samples) - before < 8 * mib, (before // mib, max(samples) // mib)
        assert after - before < 8 * mib, (before // mib, after // mib)
    finally:
        server.stop()
