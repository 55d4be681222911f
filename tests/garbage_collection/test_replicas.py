"""Two replicas on one database and one storage folder, both collecting in the background
every second with no grace period (and a `registry gc` now and then besides), while clients
push, mount, delete and pull through both for hundreds of rounds. On SQLite (two processes
sharing the file) and on PostgreSQL.

After every round: each blob that a stored manifest refers to, or that a repository serves,
is in storage with exactly its bytes, and every tagged image pulls whole through both
replicas. A push refused with MANIFEST_BLOB_UNKNOWN (its blobs were collected before its
manifest came) succeeds when the client pushes again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from api.helpers import digest_of

from registry.oci import mediatypes as mt

from support.postgres import PostgresServer
from support.server import RegistryServer

ROUNDS = 200
WORKERS = 4
LAYERS = [f"shared layer {i}\n".encode() * 40 for i in range(10)]
REPOSITORIES = [f"race/r{i}" for i in range(4)]

COLLECTING = {
    "REGISTRY_GC_INTERVAL_SECONDS": "1",
    "REGISTRY_GC_BLOB_GRACE_SECONDS": "0",
    "REGISTRY_GC_UNTAGGED_MANIFESTS": "true",
    "REGISTRY_GC_MANIFEST_GRACE_SECONDS": "0",
    "REGISTRY_GC_BATCH_SIZE": "1",  # many short batches: collecting most of the time
    "REGISTRY_GC_EXCLUSIVE": "false",  # both replicas collect at once, on their own timers
}


@dataclass
class Deployment:
    replicas: list[RegistryServer]
    env: dict[str, str]
    storage: Path
    query: Any  # (sql) -> list of rows

    def blob_path(self, digest: str) -> Path:
        algorithm, hexdigest = digest.split(":")
        return self.storage / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"


def _sqlite_query(path: Path) -> Any:
    def query(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            return [tuple(row) for row in conn.execute(sql)]

    return query


def _postgres_query(url: str) -> Any:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql")))

    def query(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in loop.run_until_complete(conn.fetch(sql))]

    def close() -> None:
        loop.run_until_complete(conn.close())
        loop.close()

    query.close = close  # type: ignore[attr-defined]
    return query


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp(f"gc-replicas-{request.param}")
    env = {**COLLECTING, "REGISTRY_STORAGE_ROOT": str(root / "storage")}
    if request.param == "sqlite":
        env["REGISTRY_DATABASE_URL"] = f"sqlite+aiosqlite:///{root / 'registry.db'}"
        query = _sqlite_query(root / "registry.db")
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        env["REGISTRY_DATABASE_URL"] = postgres.create_database(f"gc_replicas_{os.getpid()}")
        query = _postgres_query(env["REGISTRY_DATABASE_URL"])
    replicas = [RegistryServer(root / f"replica{i}", env=env) for i in range(2)]
    replicas[0].start()  # (it migrates the database; the other finds it current)
    replicas[1].start()
    yield Deployment(replicas, {**os.environ, **env}, root / "storage", query)
    for server in replicas:
        server.stop()
    if hasattr(query, "close"):
        query.close()


@dataclass
class Clients:
    replicas: list[httpx.Client]
    rng: random.Random
    lock: threading.Lock = field(default_factory=threading.Lock)
    tagged: list[tuple[str, str, str]] = field(default_factory=list)  # repo, tag, digest
    counts: dict[str, int] = field(default_factory=dict)

    def any(self) -> httpx.Client:
        with self.lock:
            return self.rng.choice(self.replicas)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


def _upload(clients: Clients, repository: str, data: bytes) -> None:
    digest = digest_of(data)
    for _ in range(100):
        client = clients.any()
        if clients.rng.random() < 0.3:  # a cross-repository mount, when some repository has it
            source = clients.rng.choice(REPOSITORIES)
            mounted = client.post(
                f"/v2/{repository}/blobs/uploads/", params={"mount": digest, "from": source}
            )
            if mounted.status_code == 201:
                clients.count("mounts")
                return
            assert mounted.status_code == 202, mounted.text
        answer = client.post(
            f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=data
        )
        if answer.status_code == 201:
            return
        # 503: collected while it was being stored (no grace period): push it again.
        assert answer.status_code == 503, answer.text
        clients.count("uploads retried")
    raise AssertionError(f"could not upload {digest}")


@dataclass
class Image:
    repository: str
    tag: str
    blobs: list[bytes]
    manifest: bytes
    # Let the collectors take its config (unique to it) before the manifest comes: the
    # race a slow push loses, made to happen at least this often.
    outwaited: bool = False


def _image(clients: Clients, round_index: int, worker: int) -> Image:
    config = json.dumps({"round": round_index, "worker": worker}).encode()
    layers = clients.rng.sample(LAYERS, 2)
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": mt.OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    repository, tag = clients.rng.choice(REPOSITORIES), f"t{clients.rng.randrange(4)}"
    outwaited = worker == 0 and round_index % 25 == 5
    return Image(repository, tag, [config, *layers], json.dumps(doc).encode(), outwaited)


def _await_collection(deployment: Deployment, digest: str) -> None:
    deadline = time.monotonic() + 120
    while deployment.blob_path(digest).exists():
        assert time.monotonic() < deadline, f"{digest} was never collected"
        time.sleep(0.05)


def _push(
    deployment: Deployment, clients: Clients, pending: Image | None, upload: Image | None
) -> None:
    """A slow client: the manifest of the image whose blobs it uploaded a round ago (the
    collectors may have taken them meanwhile: then it pushes them again), and the blobs of
    the next one."""
    if pending is not None:
        if pending.outwaited:
            _await_collection(deployment, digest_of(pending.blobs[0]))
        for _attempt in range(30):
            answer = clients.any().put(
                f"/v2/{pending.repository}/manifests/{pending.tag}",
                content=pending.manifest,
                headers={"Content-Type": mt.OCI_MANIFEST},
            )
            if answer.status_code == 201:
                clients.count("pushes")
                break
            assert answer.status_code == 400, answer.text
            assert answer.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", answer.text
            clients.count("pushes refused, then retried")
            for blob in pending.blobs:
                _upload(clients, pending.repository, blob)
        else:
            raise AssertionError("a push never succeeded")
    if upload is not None:
        for blob in upload.blobs:
            _upload(clients, upload.repository, blob)


def _delete(clients: Clients) -> None:
    """Delete a manifest (or only its tag) that the last check saw, while pushes go on."""
    with clients.lock:
        if not clients.tagged:
            return
        repository, tag, digest = clients.rng.choice(clients.tagged)
    reference = digest if clients.rng.random() < 0.5 else tag
    answer = clients.any().delete(f"/v2/{repository}/manifests/{reference}")
    assert answer.status_code in (202, 404), answer.text  # 404: gone or moved already
    clients.count("deletes")


def _check(deployment: Deployment, clients: Clients) -> None:
    """Nothing referenced or served is missing or wrong; every tagged image pulls."""
    rows = deployment.query(
        "SELECT r.digest FROM manifest_references r WHERE r.kind <> 'manifest'"
        " UNION SELECT l.digest FROM repository_blobs l"
    )
    for (digest,) in rows:
        try:
            data = deployment.blob_path(digest).read_bytes()
        except FileNotFoundError:
            # Collected since the query (unreferenced by then)? Only if nothing needs it now.
            still = deployment.query(
                "SELECT 1 FROM manifest_references WHERE kind <> 'manifest'"
                f" AND digest = '{digest}' UNION SELECT 1 FROM repository_blobs"
                f" WHERE digest = '{digest}'"
            )
            assert not still, f"{digest} is referenced or served, but not stored"
            continue
        assert digest_of(data) == digest, f"{digest}: stored bytes are wrong"
    tagged = []
    for repository in REPOSITORIES:
        listed = clients.replicas[0].get(f"/v2/{repository}/tags/list")
        if listed.status_code == 404:
            continue
        for tag in listed.json()["tags"] or []:
            tagged.append((repository, tag))
    clients.tagged = []
    for index, (repository, tag) in enumerate(tagged):
        for client in [clients.replicas[index % 2]]:  # each through one replica, in turn
            manifest = client.get(
                f"/v2/{repository}/manifests/{tag}", headers={"Accept": mt.OCI_MANIFEST}
            )
            assert manifest.status_code == 200, (repository, tag, manifest.text)
            doc = manifest.json()
            for descriptor in [doc["config"], *doc["layers"]]:
                blob = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
                assert blob.status_code == 200, (repository, tag, descriptor, blob.text)
                assert hashlib.sha256(blob.content).hexdigest() == descriptor["digest"][7:]
        clients.tagged.append((repository, tag, digest_of(manifest.content)))


def test_pushes_deletes_mounts_and_two_collectors_at_once(deployment: Deployment) -> None:
    clients = Clients(
        [httpx.Client(base_url=r.url, timeout=60) for r in deployment.replicas], random.Random(7)
    )
    cli: subprocess.Popen[bytes] | None = None
    pending: list[Image | None] = [None] * WORKERS
    try:
        with ThreadPoolExecutor(WORKERS + 1) as pool:
            for round_index in range(ROUNDS + 1):
                if round_index % 40 == 10 and (cli is None or cli.poll() is not None):
                    cli = _registry_gc(deployment)  # a third collector, from the command line
                following = [
                    _image(clients, round_index, w) if round_index < ROUNDS else None
                    for w in range(WORKERS)
                ]
                work = [
                    pool.submit(_push, deployment, clients, pending[w], following[w])
                    for w in range(WORKERS)
                ]
                work.append(pool.submit(_delete, clients))
                for future in work:
                    future.result()
                pending = following
                _check(deployment, clients)
    finally:
        if cli is not None:
            cli.wait(timeout=120)
        for client in clients.replicas:
            client.close()
    assert cli is not None and cli.returncode == 0
    runs = deployment.query("SELECT host, blobs_deleted, status FROM gc_runs")
    hosts = {host for host, _deleted, _status in runs}
    assert len(hosts) >= 3  # both replicas and the command line collected
    assert "failed" not in {status for *_rest, status in runs}
    assert sum(deleted for _host, deleted, _status in runs) > ROUNDS  # they did collect
    assert clients.counts["pushes"] == WORKERS * ROUNDS
    assert clients.counts.get("mounts", 0) > 0, clients.counts
    # The collectors did take blobs from under slow pushes, which then pushed them again.
    assert clients.counts.get("pushes refused, then retried", 0) > 0, clients.counts


def _registry_gc(deployment: Deployment) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "registry", "gc", "--data", str(deployment.storage.parent)],
        env=deployment.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
