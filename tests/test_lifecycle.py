"""Graceful shutdown on a real server: on SIGTERM readiness turns false, the listener closes,
and an upload in flight finishes before the process exits; one that does not finish is cut
after `server.shutdown_timeout`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from api.helpers import digest_of, unique_repo
from prometheus_client.parser import text_string_to_metric_families

from support.server import RegistryServer


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def uploads_in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "registry_uploads_in_progress":
                return sample.value
    return 0.0


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return 0


def start_patch(server: RegistryServer, repo: str, first: bytes, total: int) -> socket.socket:
    """A PATCH of `total` bytes whose first part only is sent; the socket to send the rest."""
    location = httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/").headers["location"]
    path = urlsplit(location).path
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: {total}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path, workers: int) -> None:
    env = {"REGISTRY_SERVER_SHUTDOWN_DELAY": "2", "REGISTRY_SERVER_SHUTDOWN_TIMEOUT": "60"}
    server = RegistryServer(tmp_path / "data", extra_args=["--workers", str(workers)], env=env)
    server.start()
    data = os.urandom(3 * 1024 * 1024)
    repo = unique_repo("drain")
    sock = start_patch(server, repo, data[:1024 * 1024], len(data))
    try:
        wait_until(lambda: uploads_in_progress(server.url) == 1, "the upload to reach the app")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # Readiness first: 503 while the listener still accepts, the process alive.
        wait_until(lambda: status(f"{server.url}/readyz") == 503, "readiness to turn false")
        assert status(f"{server.url}/healthz") == 200
        # Then the listener closes, the upload still in flight.
        wait_until(lambda: refused(server.port), "the listener to close")
        assert server.process.poll() is None
        sock.sendall(data[1024 * 1024 :])
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        assert f"range: 0-{len(data) - 1}".encode() in answer.lower()
        server.process.wait(timeout=60)
    finally:
        sock.close()
        server.stop()


def test_an_upload_that_never_ends_is_cut_after_the_shutdown_timeout(tmp_path: Path) -> None:
    env = {"REGISTRY_SERVER_SHUTDOWN_TIMEOUT": "1", "REGISTRY_SERVER_BODY_IDLE_TIMEOUT": "0"}
    server = RegistryServer(tmp_path / "data", env=env)
    server.start()
    sock = start_patch(server, unique_repo("cut"), b"x" * 1000, 10_000_000)
    try:
        wait_until(lambda: uploads_in_progress(server.url) == 1, "the upload to reach the app")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server waited for an upload that never ends")
    finally:
        sock.close()
        server.stop()
    assert "timeout graceful shutdown exceeded" in server.log_path.read_text()


def test_the_bytes_of_a_drained_upload_complete_it(tmp_path: Path) -> None:
    """The drained PATCH's bytes are the upload's: a PUT after a restart makes the blob."""
    server = RegistryServer(tmp_path / "data", env={"REGISTRY_SERVER_SHUTDOWN_TIMEOUT": "60"})
    server.start()
    data = os.urandom(2 * 1024 * 1024)
    repo = unique_repo("resume")
    location = httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/").headers["location"]
    path = urlsplit(location).path
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: {len(data)}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + data[:1000])
        wait_until(lambda: uploads_in_progress(server.url) == 1, "the upload to reach the app")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(server.port), "the listener to close")
        sock.sendall(data[1000:])
        assert read_answer(sock).startswith(b"HTTP/1.1 202")
        server.process.wait(timeout=60)
    finally:
        sock.close()
        server.stop()
    server.start()
    try:
        done = httpx.put(f"{server.url}{path}", params={"digest": digest_of(data)})
        assert done.status_code == 201, done.text
        assert httpx.get(f"{server.url}/v2/{repo}/blobs/{digest_of(data)}").content == data
    finally:
        server.stop()
