"""Fixtures for the runtime tests: registries to pull from and a private store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.runtime.store import ROOT_ENV, Store
from runtime.distribution import Distribution
from runtime.imaging import Pusher
from runtime.tokenserver import TokenServer

from support.server import RegistryServer

USERS = {"alice": "wonderland"}


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    reg = Distribution(tmp_path_factory.mktemp("distribution"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def pusher(registry_server: RegistryServer) -> Iterator[Pusher]:
    """Pushes test images to our own registry, the one the runtime is paired with."""
    p = Pusher(registry_server.url)
    yield p
    p.close()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Distribution, TokenServer]]:
    workdir = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(workdir, USERS)
    reg = Distribution(workdir, auth="token", token=tokens.distribution_settings())
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    reg = Distribution(tmp_path_factory.mktemp("basic-registry"), auth="htpasswd", users=USERS)
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A private store; the env var makes CLI subprocesses use it too."""
    root = tmp_path / "store"
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return Store(root)
