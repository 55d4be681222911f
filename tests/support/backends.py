"""The backends the API and client tests run on: each storage driver with each database.

`backend` is a session fixture with one parameter per combination, so every test that asks
for a server made by `make_server` runs once per backend (pytest groups the tests by
backend, so each backend's session servers start once). S3 is the session's SeaweedFS (a
bucket per server) and PostgreSQL the session's server (a database per server); both start
only when a test needs them. `RegistryServer.storage` shows what is stored, on either.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.server import RegistryServer


@dataclass(frozen=True)
class Backend:
    storage: str  # "filesystem" or "s3"
    database: str  # "sqlite" or "postgres"

    @property
    def id(self) -> str:
        return f"{self.storage}-{self.database}"


BACKENDS = [
    Backend("filesystem", "sqlite"),
    Backend("filesystem", "postgres"),
    Backend("s3", "sqlite"),
    Backend("s3", "postgres"),
]
DEFAULT = BACKENDS[0]


class StorageView:
    """What a server keeps in storage, by layout key (`blobs/...`, `uploads/<id>/...`)."""

    def __init__(self, backend: Backend, root: Path, seaweedfs: object = None, bucket: str = ""):
        self.backend = backend
        self.root = root
        self.seaweedfs = seaweedfs
        self.bucket = bucket

    @property
    def on_s3(self) -> bool:
        return self.backend.storage == "s3"

    def _client(self) -> object:
        return self.seaweedfs.client()  # type: ignore[attr-defined]

    def keys(self, prefix: str = "") -> list[str]:
        """Every stored object (file) under `prefix`, and every unfinished multipart upload."""
        if self.on_s3:
            found = self.seaweedfs.keys(self.bucket, prefix)  # type: ignore[attr-defined]
            unfinished = self.seaweedfs.multipart_uploads(self.bucket)  # type: ignore[attr-defined]
            return sorted(found + [k for k in unfinished if k.startswith(prefix)])
        base = self.root / prefix if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def upload_exists(self, upload_id: str) -> bool:
        """Whether bytes of the upload in progress are stored: under `uploads/<id>/`, and on
        S3 (which writes uploads in place) its tail objects and unfinished multipart upload
        under `uploaded/<id>/`; not the finished object there, a blob's bytes now."""
        if not self.on_s3:
            return bool(self.keys(f"uploads/{upload_id}"))
        return bool(self.keys(f"uploads/{upload_id}/")) or bool(self._in_place(upload_id))

    def _in_place(self, upload_id: str) -> list[tuple[str, str | None]]:
        """(key, multipart upload id or None) of what an upload in progress holds under
        `uploaded/<id>/` on S3."""
        prefix = f"uploaded/{upload_id}/"
        found: list[tuple[str, str | None]] = [
            (k, None)
            for k in self.seaweedfs.keys(self.bucket, prefix)
            if ".tail-" in k  # type: ignore[attr-defined]
        ]
        uploads = self._client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)  # type: ignore[attr-defined]
        return found + [(u["Key"], u["UploadId"]) for u in uploads.get("Uploads", [])]

    def upload_bytes(self, upload_id: str) -> int:
        """Bytes stored for an upload in progress (S3: its tail objects and uploaded parts)."""
        if not self.on_s3:
            path = self.root / f"uploads/{upload_id}/data"
            return path.stat().st_size if path.exists() else 0
        client = self._client()
        total = 0
        for key, multipart in self._in_place(upload_id):
            if multipart is None:
                total += client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]  # type: ignore[attr-defined]
            else:
                parts = client.list_parts(Bucket=self.bucket, Key=key, UploadId=multipart)  # type: ignore[attr-defined]
                total += sum(part["Size"] for part in parts.get("Parts", []))
        return total

    def blob_key(self, digest: str) -> str:
        algorithm, hex_digest = digest.split(":", 1)
        return f"blobs/{algorithm}/{hex_digest[:2]}/{hex_digest}/data"

    def read(self, key: str) -> bytes:
        if self.on_s3:
            found = self._client().get_object(Bucket=self.bucket, Key=key)  # type: ignore[attr-defined]
            return found["Body"].read()  # type: ignore[no-any-return]
        return (self.root / key).read_bytes()

    def blob_keys(self, digest: str) -> list[str]:
        """Every key holding the blob's bytes: its digest's key, and any object a chunked
        upload left in place (`uploaded/<id>/data`, on S3) whose bytes hash to it."""
        algorithm, hex_digest = digest.split(":", 1)
        found = [k for k in self.keys(self.blob_key(digest)) if k == self.blob_key(digest)]
        for key in self.keys("uploaded/"):
            if (
                key.endswith("/data")
                and hashlib.new(algorithm, self.read(key)).hexdigest() == hex_digest
            ):
                found.append(key)
        return found

    def replace(self, key: str, data: bytes | None) -> None:
        """Damage storage behind the registry's back: new bytes at `key`, or none."""
        if self.on_s3:
            client = self._client()
            if data is None:
                client.delete_object(Bucket=self.bucket, Key=key)  # type: ignore[attr-defined]
            else:
                client.put_object(Bucket=self.bucket, Key=key, Body=data)  # type: ignore[attr-defined]
            return
        path = self.root / key
        if data is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


ServerFactory = Callable[..., RegistryServer]


@pytest.fixture(scope="session", params=BACKENDS, ids=[b.id for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def make_server(
    backend: Backend, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ServerFactory:
    """Builds (does not start) a server on this session's backend: `make_server(name,
    extra_args=None, env=None)`; its `storage` shows what it stores."""

    def make(
        name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> RegistryServer:
        data_dir = tmp_path_factory.mktemp(name) / "data"
        settings: dict[str, str] = {}
        seaweedfs, bucket = None, ""
        if backend.storage == "s3":
            seaweedfs = request.getfixturevalue("seaweedfs")
            bucket = seaweedfs.new_bucket(name)
            settings.update(seaweedfs.settings(bucket))
        if backend.database == "postgres":
            postgres = request.getfixturevalue("postgres")
            settings["REGISTRY_DATABASE_URL"] = postgres.create_database(
                f"{name[:20]}_{uuid.uuid4().hex[:8]}".lower().replace("-", "_")
            )
        server = RegistryServer(data_dir, extra_args, {**settings, **(env or {})})
        server.storage = StorageView(backend, data_dir / "storage", seaweedfs, bucket)  # type: ignore[attr-defined]
        server.backend = backend  # type: ignore[attr-defined]
        return server

    return make
