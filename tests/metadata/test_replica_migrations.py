"""Replicas started at the same moment (a Kubernetes Deployment's first start) migrate the
database once: the others wait for the lock, then find the schema current."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metadata.test_migrations import _differences
from registry.metadata.db import migrations_path, upgrade_schema

from support.postgres import PostgresServer
from support.server import RegistryServer

REPLICAS = 4
PROJECT = Path(__file__).resolve().parents[2]


def _revisions() -> list[str]:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_path()))
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _versions(url: str) -> list[str]:
    async def read() -> list[str]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        await engine.dispose()
        return [r[0] for r in rows]

    return asyncio.run(read())


def _database(request: pytest.FixtureRequest, tmp_path: Path, database: str, start: str,
              name: str) -> str:
    if database == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"{name}_{start.replace('-', '_')}")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    if start != "empty":
        upgrade_schema(url, _revisions()[-2])
    return url


RACE = """
import sys, time
from registry.metadata.db import upgrade_schema
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
upgrade_schema(sys.argv[2])
"""


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("start", ["empty", "one-migration-behind"])
def test_migrations_released_at_the_same_instant_run_once(
        request: pytest.FixtureRequest, tmp_path: Path, database: str, start: str) -> None:
    """What `serve` does first, in processes whose imports are done and that then start
    migrating at the same moment (the race Python's start-up times otherwise blur)."""
    url = _database(request, tmp_path, database, start, "race")
    at = time.time() + 3
    runs = [subprocess.Popen([sys.executable, "-c", RACE, str(at), url], cwd=PROJECT,
                             stderr=subprocess.PIPE, text=True) for _ in range(REPLICAS)]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * REPLICAS, "\n".join(errors)[-3000:]
    assert _versions(url) == [_revisions()[-1]]
    assert _differences(url) == []


@pytest.mark.parametrize("start", ["empty", "one-migration-behind"])
def test_replicas_started_at_once_all_come_up_on_one_schema(
        request: pytest.FixtureRequest, tmp_path: Path, start: str) -> None:
    """Four `registry serve` on one PostgreSQL, launched together, as replicas are."""
    url = _database(request, tmp_path, "postgresql", start, "replicas")
    replicas = [RegistryServer(tmp_path / f"replica{i}" / "data",
                               env={"REGISTRY_DATABASE_URL": url}) for i in range(REPLICAS)]
    for replica in replicas:
        replica.launch()
    try:
        for replica in replicas:
            replica.wait_ready(timeout=60)
    finally:
        for replica in replicas:
            replica.stop()
    assert _versions(url) == [_revisions()[-1]]
    assert _differences(url) == []
