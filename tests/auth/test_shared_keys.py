"""Replicas that share nothing but the database share their token-signing keys through it
(`auth.keys_store: database`): real `registry serve` processes with data folders of their
own, on one SQLite file or one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from auth.conftest import ADMIN, start_auth_server
from auth.helpers import assert_error, bearer, run_cli, token_for
from registry.auth.key_stores import sealing_key, unseal
from registry.auth.keys import SigningKey
from registry.metadata.db import Database, upgrade_schema
from registry.metadata.signing_keys import SealedKey
from registry.metadata.tables import signing_keys

from support.postgres import PostgresServer
from support.server import RegistryServer, free_port

PROJECT = Path(__file__).resolve().parents[2]
REPO = "root/app"
DATABASES = ["sqlite", "postgresql"]


def shared_database(request: pytest.FixtureRequest, tmp_path: Path, database: str) -> str:
    if database == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        return postgres.create_database(f"sk{uuid.uuid4().hex[:12]}")
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


def settings(url: str, secret_file: Path, **extra: str) -> dict[str, str]:
    return {
        "REGISTRY_DATABASE_URL": url,
        "REGISTRY_AUTH_KEYS_STORE": "database",
        "REGISTRY_AUTH_KEYS_SECRET_FILE": str(secret_file),
        **extra,
    }


def secret_file(path: Path, secret: str | None = None) -> Path:
    path.write_text((f"test secret {uuid.uuid4().hex}" if secret is None else secret) + "\n")
    return path


def replicas(root: Path, env: dict[str, str], count: int = 2) -> list[RegistryServer]:
    """`count` servers on their own data folders, launched at once (the admin made first)."""
    servers = [
        start_auth_server(root / f"r{i}", env=env, admin=ADMIN if i == 0 else None, start=False)
        for i in range(count)
    ]
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    return servers


def rows(url: str) -> list[SealedKey]:
    async def read() -> list[SealedKey]:
        db = Database(url, pool_size=1)
        try:
            async with db.read() as conn:
                c = signing_keys.c
                found = await conn.execute(
                    select(c.kid, c.algorithm, c.created_ms, c.sealed_key).order_by(c.created_ms)
                )
                return [SealedKey(k, a, int(ms), bytes(s)) for k, a, ms, s in found]
        finally:
            await db.dispose()

    return asyncio.run(read())


def jwks(server: RegistryServer) -> set[str]:
    return {key["kid"] for key in httpx.get(f"{server.url}/auth/jwks").json()["keys"]}


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def accepted(server: RegistryServer, token: str) -> bool:
    answer = httpx.get(f"{server.url}/v2/{REPO}/tags/list", headers=bearer(token))
    if answer.status_code == 401:
        return False
    assert_error(answer, 404, "NAME_UNKNOWN")  # the token is good; the repository is none
    return True


def stop_all(servers: list[RegistryServer]) -> None:
    for server in servers:
        server.stop()


@pytest.mark.parametrize("database", DATABASES)
def test_replicas_share_keys_and_login_limits_through_the_database(
    request: pytest.FixtureRequest, tmp_path: Path, database: str
) -> None:
    url = shared_database(request, tmp_path, database)
    env = settings(
        url, secret_file(tmp_path / "secret"), REGISTRY_AUTH_LOGIN_FAILURES_PER_ACCOUNT="3"
    )
    a, b = servers = replicas(tmp_path, env)
    try:
        [key] = rows(url)  # started at once on an empty table: one key between them
        for server in servers:
            assert not list(server.data_dir.rglob("*.pem"))  # no key folder of their own
        assert jwks(a) == jwks(b) == {key.kid}
        for issuer, other in ((a, b), (b, a)):
            token = token_for(issuer.url, [f"repository:{REPO}:pull"], ADMIN)
            assert kid_of(token) == key.kid and accepted(other, token)
        for _ in range(3):
            assert_error(httpx.get(f"{a.url}/auth/token", auth=(ADMIN[0], "wrong")), 401)
        assert_error(httpx.get(f"{b.url}/auth/token", auth=ADMIN), 429, "TOOMANYREQUESTS")
    finally:
        stop_all(servers)


def resigned(token: str, key: SigningKey) -> str:
    """The token's claims, signed with `key`: what a replica that knows the key would issue."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key.private_key, key.algorithm, headers={"kid": key.kid})


@pytest.mark.parametrize("database", DATABASES)
def test_a_rotation_reaches_every_replica(
    request: pytest.FixtureRequest, tmp_path: Path, database: str
) -> None:
    """`registry keys rotate` while two replicas serve: a token of the new key is accepted at
    once by a replica that has never seen the key (A reads the store for it); the other (B)
    starts signing with it by itself; tokens of the old key work on both until the new key is
    a token lifetime old, then on neither, and both JWKS drop the old key."""
    url = shared_database(request, tmp_path, database)
    secret = f"the secret {uuid.uuid4().hex}"
    overlap = 20  # the token lifetime, with no leeway
    env = settings(
        url,
        secret_file(tmp_path / "secret", secret),
        REGISTRY_AUTH_TOKEN_TTL_SECONDS=str(overlap),
        REGISTRY_AUTH_LEEWAY_SECONDS="0",
    )
    a, b = servers = replicas(tmp_path, env)
    scope = [f"repository:{REPO}:pull"]
    try:
        old_tokens = [token_for(b.url, scope, ADMIN)]
        [old] = rows(url)
        rotated = run_cli(a.data_dir, "keys", "rotate", "--json", env=env)
        assert rotated.returncode == 0, rotated.stderr
        listed = json.loads(rotated.stdout)
        new = rows(url)[-1]
        assert [k["kid"] for k in listed] == [old.kid, new.kid] and new.kid != old.kid
        assert listed[0]["verifies_until"] and listed[1]["verifies_until"] is None
        fresh = resigned(old_tokens[0], unseal(sealing_key(secret), new))
        assert accepted(a, fresh)  # at once, though A had never seen the key
        assert jwks(a) == {old.kid, new.kid}
        deadline = time.monotonic() + 60
        while True:  # B is shown nothing of the new key: it finds it by itself
            token = token_for(b.url, scope, ADMIN)
            if kid_of(token) == new.kid:
                break
            old_tokens.append(token)
            assert time.monotonic() < deadline, "B never signed with the new key"
            time.sleep(0.5)
        assert jwks(b) == {old.kid, new.kid}
        assert all(accepted(server, t) for server in servers for t in [*old_tokens, token])
        time.sleep(max(0.0, new.created_ms / 1000 + overlap + 0.5 - time.time()))
        assert not any(accepted(server, t) for server in servers for t in old_tokens)
        assert jwks(a) == jwks(b) == {new.kid}
        assert accepted(a, token_for(b.url, scope, ADMIN))
        assert accepted(b, token_for(a.url, scope, ADMIN))
    finally:
        stop_all(servers)


RACE = """
import sys, time
from registry.auth.services import prepare_keys
from registry.config import load_config
config = load_config()
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
prepare_keys(config)
"""


@pytest.mark.parametrize("database", DATABASES)
def test_four_replicas_starting_at_once_make_one_key(
    request: pytest.FixtureRequest, tmp_path: Path, database: str
) -> None:
    """What `serve` does before its workers start (read the keys, or make the first), in four
    processes whose imports are done and that then start at the same moment."""
    url = shared_database(request, tmp_path, database)
    upgrade_schema(url)
    env = {
        **os.environ,
        "REGISTRY_AUTH_ENABLED": "true",
        **settings(url, secret_file(tmp_path / "secret")),
    }
    at = time.time() + 3
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(at)],
            cwd=PROJECT,
            env={**env, "REGISTRY_DATA_DIR": str(tmp_path / f"r{i}")},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, "\n".join(errors)[-3000:]
    assert len(rows(url)) == 1


def refused_start(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`registry serve` expected to stop at once (it refuses)."""
    return subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--addr", f"127.0.0.1:{free_port()}",
         "--data", str(data)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "REGISTRY_AUTH_ENABLED": "true", **env},
    )  # fmt: skip


@pytest.mark.parametrize("database", DATABASES)
def test_keys_are_sealed_and_a_wrong_secret_refuses_to_start(
    request: pytest.FixtureRequest, tmp_path: Path, database: str
) -> None:
    url = shared_database(request, tmp_path, database)
    secret = f"the right secret {uuid.uuid4().hex}"
    [server] = replicas(tmp_path, settings(url, secret_file(tmp_path / "secret", secret)), 1)
    try:
        token = token_for(server.url, [f"repository:{REPO}:pull"], ADMIN)
    finally:
        server.stop()
    [row] = rows(url)
    assert kid_of(token) == row.kid
    # The table holds the key sealed: neither its PKCS#8 bytes nor its secret scalar.
    private = unseal(sealing_key(secret), row).private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    raw: list[Any] = [row.kid, row.algorithm, row.created_ms, row.sealed]
    stored = b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in raw)
    assert der not in stored and scalar not in stored and b"PRIVATE KEY" not in stored
    # Another secret, or none worth the name: refused with a clear message, nothing made.
    for other, message in (
        (f"another secret {uuid.uuid4().hex}", "do not decrypt with auth.keys_secret"),
        ("", "at least 32 characters"),
    ):
        env = settings(url, secret_file(tmp_path / "other", other))
        done = refused_start(tmp_path / "other-data", env)
        assert done.returncode == 2, done.stderr
        assert "configuration error" in done.stderr and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert rows(url) == [row]
