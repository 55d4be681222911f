"""Two replicas on one PostgreSQL and one storage, racing: the same new repository, the same
blob and the same tag pushed through both at the same instant end with no error to either
client, no duplicate rows and no lost tag."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.helpers import digest_of, encode, image_manifest, unique_repo
from registry.oci import mediatypes as mt

from support.postgres import PostgresServer
from support.server import RegistryServer

ROUNDS = 25


@pytest.fixture(scope="module")
def replicas(postgres: PostgresServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RegistryServer]]:
    url = postgres.create_database("replica_races")
    root = tmp_path_factory.mktemp("replica-races")
    env = {"REGISTRY_DATABASE_URL": url, "REGISTRY_STORAGE_ROOT": str(root / "storage")}
    servers = [RegistryServer(root / f"replica{i}", env=env) for i in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def at_once(clients: list[httpx.Client],
            request: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """`request` through every replica, released together."""
    barrier = threading.Barrier(len(clients))

    def go(client: httpx.Client) -> httpx.Response:
        barrier.wait()
        return request(client)

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(go, clients))


def _rows(url: str, query: str) -> list[Any]:
    async def read() -> list[Any]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(query))).all()
        await engine.dispose()
        return [tuple(r) for r in rows]

    return asyncio.run(read())


def test_same_repository_blob_and_tag_through_two_replicas(
        replicas: list[RegistryServer], postgres: PostgresServer, tmp_path: Path) -> None:
    clients = [httpx.Client(base_url=r.url, timeout=60) for r in replicas]
    repos = []
    try:
        for _ in range(ROUNDS):
            repo = unique_repo("race")
            repos.append(repo)
            config = encode({"architecture": "amd64", "os": "linux", "repo": repo})
            layer = repo.encode() * 100
            for blob in (config, layer):
                answers = at_once(clients, lambda c, b=blob, r=repo: c.post(
                    f"/v2/{r}/blobs/uploads/", params={"digest": digest_of(b)}, content=b))
                assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
            doc = image_manifest(
                {"mediaType": mt.OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
                [{"mediaType": mt.OCI_LAYER_GZIP, "digest": digest_of(layer),
                  "size": len(layer)}])
            bodies = [encode(doc), encode({**doc, "annotations": {"other": "manifest"}})]
            for tag, chosen in (("same", [bodies[0], bodies[0]]), ("two", bodies)):
                answers = at_once(clients, lambda c, t=tag, ch=chosen, r=repo: c.put(
                    f"/v2/{r}/manifests/{t}", content=ch[clients.index(c)],
                    headers={"Content-Type": mt.OCI_MANIFEST}))
                assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
                got = clients[0].get(f"/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": mt.OCI_MANIFEST})
                assert got.status_code == 200 and got.content in chosen
            tags = clients[1].get(f"/v2/{repo}/tags/list").json()["tags"]
            assert tags == ["same", "two"]
    finally:
        for c in clients:
            c.close()
    url = postgres.url("replica_races")
    assert _rows(url, "SELECT name, count(*) FROM repositories GROUP BY name "
                      "HAVING count(*) > 1") == []
    assert _rows(url, "SELECT digest, count(*) FROM blobs GROUP BY digest "
                      "HAVING count(*) > 1") == []
    assert _rows(url, "SELECT repository_id, name, count(*) FROM tags "
                      "GROUP BY repository_id, name HAVING count(*) > 1") == []
    assert len(_rows(url, "SELECT id FROM repositories WHERE name LIKE 'race%'")) == ROUNDS
