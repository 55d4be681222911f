"""Fixtures for the client tests: which registry they talk to, and a daemon to talk to it.

By default the clients drive our own server, on each backend in turn (each storage driver
with each database: support/backends.py). Two environment variables point them elsewhere
instead, to compare behaviour with another registry (then on one backend only):

    REGISTRY_TEST_EXTERNAL_URL=http://127.0.0.1:5000   a registry that is already running
    REGISTRY_TEST_DISTRIBUTION=1                       start CNCF Distribution
                                                       (/usr/bin/docker-registry) here

Either must be on a loopback address: docker treats 127.0.0.0/8 as insecure (plain HTTP)
without configuration, and the tests never reach beyond the machine.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from support.backends import DEFAULT, Backend, ServerFactory
from support.server import free_port

DISTRIBUTION_BINARY = "/usr/bin/docker-registry"


@dataclass
class ExternalRegistry:
    """The part of `RegistryServer` the client tests use, for a registry we did not write."""

    url: str
    kind: str
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _require_loopback(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise pytest.UsageError(f"REGISTRY_TEST_EXTERNAL_URL must be http://127.x.x.x:PORT: {url}")
    return url.rstrip("/")


def _start_distribution(root: Path) -> ExternalRegistry:
    if not os.access(DISTRIBUTION_BINARY, os.X_OK):
        raise pytest.UsageError(f"REGISTRY_TEST_DISTRIBUTION=1 needs {DISTRIBUTION_BINARY}")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log_path = root / "distribution.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [DISTRIBUTION_BINARY, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    registry = ExternalRegistry(f"http://127.0.0.1:{port}", "distribution", log_path, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{registry.url}/v2/", timeout=1).status_code == 200:
                return registry
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    registry.stop()
    raise RuntimeError(f"docker-registry did not start:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def registry_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    backend: Backend,
    make_server: ServerFactory,
) -> Iterator[Any]:
    """Our server, unless the environment names another registry (see the module docstring)."""
    external = os.environ.get("REGISTRY_TEST_EXTERNAL_URL")
    distribution = os.environ.get("REGISTRY_TEST_DISTRIBUTION", "") not in ("", "0")
    if (external or distribution) and backend != DEFAULT:
        pytest.skip("another registry is under test: one backend is enough")
    if external:
        yield ExternalRegistry(_require_loopback(external), "external")
    elif distribution:
        registry = _start_distribution(tmp_path_factory.mktemp("distribution"))
        try:
            yield registry
        finally:
            registry.stop()
    else:
        server = make_server("clients")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def registry_url(registry_server: Any) -> str:
    # Its own, not tests/conftest.py's: a session fixture of that name made for another
    # directory's server would otherwise be reused here.
    return str(registry_server.url)


@pytest.fixture(scope="session")
def repo_prefix() -> str:
    """Repositories of this session live under it, so reruns against one registry never meet."""
    return f"clients/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def registry_kind(registry_server: Any) -> str:
    """ "pocket" for our server, else what the override is ("distribution", "external")."""
    return str(getattr(registry_server, "kind", "pocket"))
