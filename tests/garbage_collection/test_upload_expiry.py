"""Upload expiry (a step of every collection, and the background upkeep when collection is
off): abandoned uploads go with their bytes, on disk and on S3 (where their multipart uploads
are aborted), and so do multipart uploads a crashed push left at a blob key."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from registry.app import build_services
from registry.auth import AllowAll
from registry.config import load_config
from registry.gc import collector as collector_module
from registry.gc.collector import build_collector
from registry.metadata.db import upgrade_schema_async
from registry.oci.digest import Digest
from registry.storage import layout

from support.seaweedfs import SeaweedFS

MiB = 1024 * 1024


async def body(data: bytes):  # type: ignore[no-untyped-def]
    yield data


@pytest.fixture(params=["filesystem", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    values: dict[str, object] = {"data_dir": str(tmp_path / "data")}
    if request.param == "s3":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        bucket = seaweedfs.new_bucket("maintenance")
        for name, value in seaweedfs.settings(bucket).items():
            values[
                name.removeprefix("REGISTRY_").lower().replace("_", ".", 1).replace("s3_", "s3.", 1)
            ] = value
        values["seaweedfs"] = seaweedfs
        values["bucket"] = bucket
    return values


async def test_expired_sessions_leave_nothing_behind(
    settings: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    seaweedfs = settings.pop("seaweedfs", None)
    bucket = str(settings.pop("bucket", ""))
    config = load_config(environ={}, overrides=settings)
    await upgrade_schema_async(config.database_url)
    services, db = build_services(config, AllowAll())
    try:
        upload = await services.metadata.create_upload("maint/repo")
        progress = await services.blobs.append_upload(upload.id, 0, body(os.urandom(11 * MiB)))
        assert await services.metadata.advance_upload(
            upload.id, 0, progress.size, None, progress.hash_state, progress.storage_state
        )
        # A monolithic push that died midway: its multipart upload at the blob's key.
        blob = layout.blob_key(Digest.of(b"never finished"))
        orphan = await services.blobs.driver.append("uploads/" + "f" * 32 + "/data", 0, None, blob)
        await orphan.write(os.urandom(12 * MiB))  # parts sent
        await orphan.close()
        fresh = await services.metadata.create_upload("maint/repo")

        collector = build_collector(config, services.blobs, db)
        assert await collector.expire_uploads() == 0  # nothing is old enough yet
        assert seaweedfs is None or seaweedfs.multipart_uploads(bucket)  # type: ignore[attr-defined]

        later = collector_module.now() + timedelta(seconds=config.limits.upload_expiry_seconds + 1)
        monkeypatch.setattr(collector_module, "now", lambda: later)
        # Two sessions, and on S3 the multipart upload at the blob's key.
        assert await collector.expire_uploads() == (3 if seaweedfs is not None else 2)
        assert await services.metadata.get_upload("maint/repo", upload.id) is None
        assert await services.metadata.get_upload("maint/repo", fresh.id) is None
        if seaweedfs is not None:
            assert seaweedfs.multipart_uploads(bucket) == []  # type: ignore[attr-defined]
            assert seaweedfs.keys(bucket) == []  # type: ignore[attr-defined]
        else:
            assert not (config.storage_root / "uploads" / upload.id).exists()
    finally:
        await db.dispose()
