"""Secure defaults at start-up, signing keys across restarts and rotations, and tokens from
trusted external issuers (another registry's JWKS URL, a PEM key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.conftest import ADMIN, start_auth_server
from auth.helpers import assert_error, bearer, challenge, token_for, unique

from support.server import free_port


def serve(data: Path, addr: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`registry serve` expected to stop at once (it refuses); a start is killed after 20 s."""
    return subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--addr", addr, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "[::]", "registry.example.com"])
def test_no_auth_off_loopback(tmp_path: Path, host: str) -> None:
    done = serve(tmp_path, f"{host}:{free_port()}", {})
    assert done.returncode == 2
    assert "refusing to listen" in done.stderr and "auth.insecure" in done.stderr


def test_insecure_or_auth_lets_it_start_off_loopback(tmp_path: Path) -> None:
    for env in ({"REGISTRY_AUTH_INSECURE": "true"}, {"REGISTRY_AUTH_ENABLED": "true"}):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "registry", "serve", "--addr", f"0.0.0.0:{port}",
             "--data", str(tmp_path / unique())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and status is None:
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code
                except httpx.HTTPError:
                    time.sleep(0.2)
            assert status == (401 if "REGISTRY_AUTH_ENABLED" in env else 200)
        finally:
            process.terminate()
            process.wait(timeout=15)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGISTRY_AUTH_ALGORITHMS": "HS256"}, "not allowed"),
        ({"REGISTRY_AUTH_SIGNING_ALGORITHM": "HS256"}, "signing_algorithm"),
        (
            {"REGISTRY_AUTH_SIGNING_ALGORITHM": "RS256", "REGISTRY_AUTH_ALGORITHMS": "ES256"},
            "include",
        ),
        ({"REGISTRY_AUTH_TRUSTED_ISSUERS": '[{"issuer": "x"}]'}, "exactly one of"),
        ({"REGISTRY_AUTH_TRUSTED_ISSUERS": "[not json"}, "invalid JSON"),
        ({"REGISTRY_AUTH_TOKEN_TTL_SECONDS": "0"}, "token_ttl_seconds"),
        ({"REGISTRY_AUTH_SERVICE": 'a"b'}, "quotes"),
    ],
)
def test_bad_auth_settings_stop_the_start(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = serve(tmp_path, f"127.0.0.1:{free_port()}", {"REGISTRY_AUTH_ENABLED": "true", **env})
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr


def test_keys_survive_restarts(tmp_path: Path) -> None:
    server = start_auth_server(tmp_path)
    try:
        keys = sorted((server.data_dir / "auth" / "keys").glob("*.pem"))
        assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
        assert (server.data_dir / "auth" / "keys").stat().st_mode & 0o777 == 0o700
        token = token_for(server.url, ["repository:root/app:pull"], ADMIN)
        server.restart()
        assert sorted((server.data_dir / "auth" / "keys").glob("*.pem")) == keys
        answer = httpx.get(f"{server.url}/v2/root/app/tags/list", headers=bearer(token))
        assert_error(answer, 404, "NAME_UNKNOWN")  # the old token still verifies
    finally:
        server.stop()


def test_rotation(tmp_path: Path) -> None:
    server = start_auth_server(
        tmp_path,
        env={"REGISTRY_AUTH_KEY_ROTATION_SECONDS": "2", "REGISTRY_AUTH_TOKEN_TTL_SECONDS": "60"},
    )
    try:
        first = token_for(server.url, ["repository:root/app:pull"], ADMIN)
        time.sleep(2.5)
        second = token_for(server.url, ["repository:root/app:pull"], ADMIN)
        kids = [jwt.get_unverified_header(t)["kid"] for t in (first, second)]
        assert kids[0] != kids[1]
        published = {k["kid"] for k in httpx.get(f"{server.url}/auth/jwks").json()["keys"]}
        assert set(kids) <= published
        for token in (first, second):  # the old key verifies what it signed
            answer = httpx.get(f"{server.url}/v2/root/app/tags/list", headers=bearer(token))
            assert_error(answer, 404, "NAME_UNKNOWN")
    finally:
        server.stop()


def test_rsa_signing(tmp_path: Path) -> None:
    server = start_auth_server(tmp_path, env={"REGISTRY_AUTH_SIGNING_ALGORITHM": "RS256"})
    try:
        token = token_for(server.url, ["repository:root/app:pull"], ADMIN)
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        answer = httpx.get(f"{server.url}/v2/root/app/tags/list", headers=bearer(token))
        assert_error(answer, 404, "NAME_UNKNOWN")
    finally:
        server.stop()


def test_external_issuers(tmp_path: Path) -> None:
    """Registry B trusts registry A's JWKS URL (as it would GitLab's) and a PEM key (an SSO)."""
    issuer_a = start_auth_server(
        tmp_path / "a",
        env={"REGISTRY_AUTH_ISSUER": "issuer-a", "REGISTRY_AUTH_SERVICE": "service-a"},
    )
    sso_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "sso.pem"
    pem.write_bytes(
        sso_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    trusted = [
        {"issuer": "issuer-a", "audience": "service-a", "jwks_url": f"{issuer_a.url}/auth/jwks"},
        {"issuer": "https://sso.example", "pem_file": str(pem), "algorithms": ["RS256"]},
    ]
    registry_b = start_auth_server(
        tmp_path / "b",
        env={
            "REGISTRY_AUTH_SERVICE": "service-b",
            "REGISTRY_AUTH_TRUSTED_ISSUERS": json.dumps(trusted),
        },
    )
    try:
        url = f"{registry_b.url}/v2/ext/app/tags/list"
        from_a = httpx.get(
            f"{issuer_a.url}/auth/token",
            params={"service": "service-a", "scope": "repository:ext/app:pull"},
            auth=ADMIN,
        ).json()["token"]
        assert_error(httpx.get(url, headers=bearer(from_a)), 404, "NAME_UNKNOWN")
        lacking = httpx.get(
            f"{issuer_a.url}/auth/token",
            params={"service": "service-a", "scope": "repository:ext/other:pull"},
            auth=ADMIN,
        ).json()["token"]
        answer = httpx.get(url, headers=bearer(lacking))  # its issuer might grant more
        assert challenge(assert_response(answer))["error"] == "insufficient_scope"

        now = int(time.time())
        sso_claims = {
            "iss": "https://sso.example",
            "aud": "service-b",
            "sub": "carol@example.com",
            "exp": now + 60,
            "iat": now,
            "access": [{"type": "repository", "name": "ext/app", "actions": ["pull", "push"]}],
        }
        sso_token = jwt.encode(sso_claims, sso_key, "RS256")
        assert_error(httpx.get(url, headers=bearer(sso_token)), 404, "NAME_UNKNOWN")
        upload = httpx.post(
            f"{registry_b.url}/v2/ext/app/blobs/uploads/", headers=bearer(sso_token)
        )
        assert upload.status_code == 202
        for bad in (
            {**sso_claims, "aud": "service-a"},
            {**sso_claims, "exp": now - 3600},
            {**sso_claims, "iss": "https://evil.example"},
        ):
            refused = httpx.get(url, headers=bearer(jwt.encode(bad, sso_key, "RS256")))
            assert challenge(assert_response(refused))["error"] == "invalid_token"
        # An external subject acts under its issuer's name, never as our account of that name.
        posing = jwt.encode({**sso_claims, "sub": ADMIN[0]}, sso_key, "RS256")
        denied = httpx.get(f"{registry_b.url}/v2/ext/secret/tags/list", headers=bearer(posing))
        assert_response(denied)
        log = httpx.get(
            f"{registry_b.url}/auth/admin/audit", params={"action": "denied"}, auth=ADMIN
        ).json()["entries"]
        assert log[0]["actor"] == f"external:https://sso.example:{ADMIN[0]}"
        assert log[0]["target"] == "repository:ext/secret:pull"
        assert not [e for e in log if e["actor"] == ADMIN[0]]
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = httpx.get(url, headers=bearer(jwt.encode(sso_claims, other_key, "RS256")))
        assert challenge(assert_response(forged))["error"] == "invalid_token"
        # B's own tokens still work beside them.
        own = httpx.get(
            f"{registry_b.url}/auth/token",
            params={"service": "service-b", "scope": "repository:ext/app:pull"},
            auth=ADMIN,
        ).json()["token"]
        assert httpx.get(url, headers=bearer(own)).json() == {"name": "ext/app", "tags": []}
    finally:
        registry_b.stop()
        issuer_a.stop()


def assert_response(answer: httpx.Response) -> httpx.Response:
    assert_error(answer, 401, "UNAUTHORIZED")
    return answer


def test_several_workers_share_keys_and_limits(tmp_path: Path) -> None:
    server = start_auth_server(
        tmp_path, env={"REGISTRY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": "3"}, start=False
    )
    server.extra_args = ["--workers", "3"]
    server.start()
    try:
        assert len(list((server.data_dir / "auth" / "keys").glob("*.pem"))) == 1
        # Fresh connections land on any worker: each one's token must verify on the others.
        tokens = [token_for(server.url, ["repository:root/app:pull"], ADMIN) for _ in range(12)]
        for token in tokens:
            with httpx.Client() as fresh:
                answer = fresh.get(f"{server.url}/v2/root/app/tags/list", headers=bearer(token))
                assert_error(answer, 404, "NAME_UNKNOWN")
        for _ in range(3):
            assert_error(httpx.get(f"{server.url}/auth/token", auth=(ADMIN[0], "wrong")), 401)
        for _ in range(6):
            assert_error(httpx.get(f"{server.url}/auth/token", auth=ADMIN), 429, "TOOMANYREQUESTS")
    finally:
        server.stop()
