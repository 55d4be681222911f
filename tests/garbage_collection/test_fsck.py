"""`registry fsck`: corrupt, missing and orphan bytes found, what is safe repaired, the rest
named by repository and tag; and the command's output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from garbage_collection.conftest import Stack
from registry.config import S3Config
from registry.gc.fsck import Fsck, FsckReport
from registry.metadata.fsckstore import FsckStore
from registry.oci.digest import Digest
from registry.storage import layout
from registry.storage.blobstore import BlobStore
from registry.storage.s3 import S3Driver

from support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS

DAY = 86400
OLD = time.time() - 2 * DAY


def fsck(stack: Stack, rehash: bool = True) -> Fsck:
    return Fsck(FsckStore(stack.db), stack.gc, stack.blobs, timedelta(days=1), rehash=rehash)


def found(report: FsckReport) -> dict[str, str]:
    return {p.target: p.kind for p in report.problems}


def orphan(stack: Stack, data: bytes, modified: float = OLD) -> str:
    digest = str(Digest.of(data))
    path = stack.path(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    os.utime(path, (modified, modified))
    return digest


async def test_a_clean_registry(stack: Stack) -> None:
    await stack.push("r", "v1", [b"layer one", b"layer two"])
    report = await fsck(stack).run()
    assert report.problems == []
    assert report.blobs_checked == 3 == report.objects_seen
    assert report.bytes_checked == len(b"layer one") + len(b"layer two") + len(b"{}")


async def test_corrupt_missing_and_orphan_bytes(stack: Stack) -> None:
    await stack.push("r", "v1", [b"good layer", b"to be damaged", b"to be lost"])
    damaged, lost = str(Digest.of(b"to be damaged")), str(Digest.of(b"to be lost"))
    stack.path(damaged).write_bytes(b"to be DAMAGED")  # same size, other bytes
    stack.path(lost).unlink()
    old_orphan = orphan(stack, b"nobody's bytes")
    orphan(stack, b"bytes an upload is moving", modified=time.time())  # within the grace
    stray = stack.root / "blobs" / "sha256" / "zz"
    stray.mkdir(parents=True)
    (stray / "junk").write_bytes(b"?")

    report = await fsck(stack).run()
    assert found(report) == {
        damaged: "corrupt",
        lost: "missing",
        old_orphan: "orphan",
        "blobs/sha256/zz/junk": "unknown",
    }
    by_target = {p.target: p for p in report.problems}
    assert by_target[damaged].used_by == ["r:v1"] == by_target[lost].used_by
    assert "hash to" in by_target[damaged].detail
    assert report.remaining == report.problems


async def test_repair_removes_what_nothing_needs_and_names_the_rest(stack: Stack) -> None:
    image = await stack.push("r", "v1", [b"needed but lost"])
    # The same image tagged twice: both tags are named.
    content = (await stack.metadata.get_manifest("r", "v1")).content  # type: ignore[union-attr]
    await stack.put_manifest("r", "v2", content)
    needed = str(Digest.of(b"needed but lost"))
    stack.path(needed).unlink()
    unneeded = await stack.upload("r", b"served, but by no manifest")
    stack.path(unneeded).write_bytes(b"X" * len(b"served, but by no manifest"))
    old_orphan = orphan(stack, b"orphan")
    session = "b" * 32
    stale_upload = stack.root / "uploads" / session / "data"
    stale_upload.parent.mkdir(parents=True)
    stale_upload.write_bytes(b"an upload nobody knows")
    os.utime(stale_upload, (OLD, OLD))

    report = await fsck(stack).run(repair=True)
    repaired = {p.target for p in report.problems if p.repaired}
    assert repaired == {old_orphan, session, unneeded}
    assert [(p.target, p.kind, p.used_by) for p in report.remaining] == [
        (needed, "missing", ["r:v1", "r:v2"])
    ]
    assert not stack.stored(old_orphan) and not stack.stored(unneeded)
    assert not stale_upload.parent.exists()
    assert await stack.metadata.blob_size_in_repository("r", unneeded) is None
    assert image in {row[0] for row in await stack.rows("SELECT digest FROM manifests")}

    again = await fsck(stack).run(repair=True)
    assert [(p.target, p.kind) for p in again.problems] == [(needed, "missing")]


async def test_an_upload_in_flight_is_not_missing(stack: Stack) -> None:
    digest = str(Digest.of(b"on its way"))
    assert await stack.metadata.reserve_blob(digest, 10) is not None  # bytes not moved yet
    assert (await fsck(stack).run()).problems == []


async def test_without_rehashing_only_sizes_are_checked(stack: Stack) -> None:
    await stack.push("r", "v1", [b"same size", b"shorter"])
    stack.path(str(Digest.of(b"same size"))).write_bytes(b"SAME SIZE")
    stack.path(str(Digest.of(b"shorter"))).write_bytes(b"short")
    report = await fsck(stack, rehash=False).run()
    assert found(report) == {str(Digest.of(b"shorter")): "corrupt"}


# The command ---------------------------------------------------------------------------------


def registry(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "registry", *args, "--data", str(data)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


async def test_the_command_reports_repairs_and_exits_for_scripts(
    stack: Stack, tmp_path: Path
) -> None:
    if stack.db.dialect != "sqlite":
        pytest.skip("the command runs against the data folder's own SQLite database")
    await stack.push("r", "v1", [b"fine", b"will rot", b"will vanish"])
    stack.path(str(Digest.of(b"will rot"))).write_bytes(b"WILL ROT")
    stack.path(str(Digest.of(b"will vanish"))).unlink()
    lost_orphan = orphan(stack, b"orphan")
    # (the stack's database and storage are the data folder's: registry.db and storage/)

    checked = registry(tmp_path, "fsck", "--json")
    assert checked.returncode == 1, checked.stderr
    kinds = {p["target"]: p["kind"] for p in json.loads(checked.stdout)["problems"]}
    assert sorted(kinds.values()) == ["corrupt", "missing", "orphan"]
    assert stack.stored(lost_orphan)  # found, not touched

    repaired = registry(tmp_path, "fsck", "--repair")
    assert repaired.returncode == 1  # the rotten and the vanished blob remain
    assert "needed by r:v1" in repaired.stdout
    assert "3 problems, 1 repaired, 2 remaining" in repaired.stdout
    assert not stack.stored(lost_orphan)

    stored = await stack.metadata.get_manifest("r", "v1")
    assert stored is not None and await stack.metadata.delete_manifest("r", stored.digest)
    clean = registry(tmp_path, "fsck", "--repair")  # unreferenced now: both can go
    assert clean.returncode == 0, clean.stdout
    assert "2 problems, 2 repaired, 0 remaining" in clean.stdout
    assert registry(tmp_path, "fsck").returncode == 0

    broken = tmp_path / "broken.yaml"
    broken.write_text("gc:\n  batch_size: nope\n")
    failed = registry(tmp_path, "fsck", "--config", str(broken))
    assert failed.returncode == 2 and "configuration error" in failed.stderr


async def test_on_s3_corrupt_missing_and_orphan_objects(
    stack: Stack, seaweedfs: SeaweedFS
) -> None:
    """The same checks over the S3 driver (its listing and batch deletes), on a real S3.
    S3 cannot date an object back, so the grace period is none here."""
    bucket = seaweedfs.new_bucket("fsck")
    driver = S3Driver(
        S3Config(bucket=bucket, endpoint_url=seaweedfs.endpoint, region="us-east-1",
                 access_key=ACCESS_KEY, secret_key=SECRET_KEY, addressing="path")
    )  # fmt: skip
    stack.blobs = BlobStore(driver)
    await stack.push("r", "v1", [b"good layer", b"to be damaged", b"to be lost"])
    damaged, lost = (Digest.of(b"to be damaged"), Digest.of(b"to be lost"))
    await driver.put(layout.blob_key(damaged), b"to be DAMAGED")
    await driver.delete_many([layout.blob_key(lost)])
    stray = Digest.of(b"nobody's bytes")
    await driver.put(layout.blob_key(stray), b"nobody's bytes")
    checker = Fsck(FsckStore(stack.db), stack.gc, stack.blobs, timedelta(0), rehash=True)

    report = await checker.run(repair=True)
    assert found(report) == {str(damaged): "corrupt", str(lost): "missing", str(stray): "orphan"}
    assert {p.target for p in report.problems if p.repaired} == {str(stray)}
    assert await driver.stat(layout.blob_key(stray)) is None
    assert await driver.stat(layout.blob_key(Digest.of(b"good layer"))) == len(b"good layer")
