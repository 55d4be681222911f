"""Token issue and verification: every claim checked, every forgery refused with a reason."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from registry.auth.key_stores import FolderKeys
from registry.auth.keys import KeyRing, SigningKey
from registry.auth.scopes import Scope
from registry.auth.tokens import (
    InvalidToken,
    TokenIssuer,
    TokenVerifier,
    TrustConfigError,
    TrustedIssuer,
    allowed_algorithms,
    trusted_issuer,
)

ISSUER, SERVICE = "pocket-registry", "registry.test"
PULL = Scope("repository", "alice/app", ("pull",))


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    ring = KeyRing(FolderKeys(tmp_path_factory.mktemp("keys")))
    asyncio.run(ring.ensure())
    return ring


def newest(ring: KeyRing) -> SigningKey:
    return ring.current()[-1]


def verifier(ring: KeyRing, *trusted: TrustedIssuer, leeway: float = 5) -> TokenVerifier:
    return TokenVerifier(ring, ISSUER, SERVICE, ["ES256", "RS256"], leeway, trusted)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 60,
        "nbf": now,
        "iat": now,
        "jti": "x1",
        "access": [PULL.claim()],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(ring: KeyRing, payload: dict[str, Any], **headers: Any) -> str:
    key = newest(ring)
    return jwt.encode(payload, key.private_key, "ES256", headers={"kid": key.kid, **headers})


async def refused(v: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await v.verify(token)
    return str(caught.value)


async def test_issued_tokens_carry_every_claim_and_verify(ring: KeyRing) -> None:
    issued = await TokenIssuer(ring, ISSUER, SERVICE, 300).issue("alice", [PULL])
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256" and header["kid"] == newest(ring).kid
    body = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(body) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert body["exp"] - body["iat"] == 300 == issued.expires_in
    assert body["access"] == [{"type": "repository", "name": "alice/app", "actions": ["pull"]}]
    verified = await verifier(ring).verify(issued.token)
    assert verified.subject == "alice" and verified.builtin and verified.access == [PULL]
    other = await TokenIssuer(ring, ISSUER, SERVICE, 300).issue("alice", [PULL])
    assert jwt.decode(other.token, options={"verify_signature": False})["jti"] != body["jti"]


async def test_time_claims_with_leeway(ring: KeyRing) -> None:
    v = verifier(ring, leeway=5)
    now = int(time.time())
    assert "expired" in await refused(v, signed(ring, claims(exp=now - 10)))
    assert "not yet valid" in await refused(v, signed(ring, claims(nbf=now + 60)))
    await v.verify(signed(ring, claims(exp=now - 2)))  # within the leeway
    await v.verify(signed(ring, claims(nbf=now + 2)))


async def test_audience_issuer_and_required_claims(ring: KeyRing) -> None:
    v = verifier(ring)
    assert "audience" in await refused(v, signed(ring, claims(aud="another-registry")))
    assert "untrusted issuer" in await refused(v, signed(ring, claims(iss="someone-else")))
    for claim in ("exp", "nbf", "iat", "jti", "sub", "aud"):
        assert "missing claim" in await refused(v, signed(ring, claims(**{claim: None})))
    assert "access claim" in await refused(
        v, signed(ring, claims(access=[{"type": "repository", "name": "X!", "actions": []}]))
    )
    assert "access claim" in await refused(v, signed(ring, claims(access="everything")))


async def test_forgeries(ring: KeyRing, tmp_path: Path) -> None:
    v = verifier(ring)
    kid = newest(ring).kid
    # alg=none
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": kid})
    assert "not allowed" in await refused(v, unsigned)
    # HMAC keyed with our public key (the classic key confusion)
    public_pem = newest(ring).public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": kid}).encode())
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode())
    signing_input = header.rstrip(b"=") + b"." + payload.rstrip(b"=")
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    confused = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    assert "not allowed" in await refused(v, confused)
    # Signed by another key under our kid
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims(), attacker, "ES256", headers={"kid": kid})
    assert "bad signature" in await refused(v, forged)
    # Unknown kid, or none
    assert "unknown signing key" in await refused(
        v, jwt.encode(claims(), attacker, "ES256", headers={"kid": "nope-nope-nope-nope"})
    )
    assert "unknown signing key" in await refused(v, jwt.encode(claims(), attacker, "ES256"))
    # An ES256 key used under an RS256 label
    assert "does not fit" in await refused(v, _relabelled(signed(ring, claims()), "RS256"))
    # More access spliced into a real token
    real = signed(ring, claims())
    head, _body, signature = real.split(".")
    wider = claims(access=[{"type": "repository", "name": "bob/app", "actions": ["push"]}])
    body = base64.urlsafe_b64encode(json.dumps(wider).encode()).rstrip(b"=").decode()
    assert "bad signature" in await refused(v, f"{head}.{body}.{signature}")


def _relabelled(token: str, alg: str) -> str:
    head, body, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["alg"] = alg
    new_head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{new_head}.{body}.{signature}"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "a.b", "....", "eyJ.eyJ.sig", "x" * 20000, "é.é.é", "e30.e30.e30"],
)
async def test_malformed_tokens(ring: KeyRing, token: str) -> None:
    await refused(verifier(ring), token)


async def test_trusted_issuer_with_a_pem_key(ring: KeyRing, tmp_path: Path) -> None:
    sso_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "sso.pem"
    pem.write_bytes(
        sso_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sso = trusted_issuer({"issuer": "https://sso.example", "pem_file": str(pem)}, SERVICE)
    v = verifier(ring, sso)
    now = int(time.time())
    payload = {
        "iss": "https://sso.example",
        "aud": SERVICE,
        "exp": now + 60,
        "sub": "carol@example",
        "access": [PULL.claim()],
    }
    verified = await v.verify(jwt.encode(payload, sso_key, "RS256"))
    assert not verified.builtin and verified.subject == "carol@example"
    assert verified.access == [PULL]
    # Our key cannot speak for the SSO, nor the SSO for us.
    assert "bad signature" in await refused(
        v,
        jwt.encode(
            payload, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
        ),
    )
    assert "unknown signing key" in await refused(
        v,
        jwt.encode(
            {**payload, "iss": ISSUER, "jti": "j", "nbf": now, "iat": now}, sso_key, "RS256"
        ),
    )
    assert "audience" in await refused(v, jwt.encode({**payload, "aud": "x"}, sso_key, "RS256"))
    assert "not allowed" in await refused(v, jwt.encode(payload, sso_key, "PS256"))


async def test_trusted_issuer_with_a_jwks_file(ring: KeyRing, tmp_path: Path) -> None:
    other = KeyRing(FolderKeys(tmp_path / "other"))
    (tmp_path / "jwks.json").write_text(json.dumps(await other.jwks()))
    trusted = trusted_issuer(
        {"issuer": "gitlab", "audience": "reg", "jwks_file": str(tmp_path / "jwks.json")}, SERVICE
    )
    token = (await TokenIssuer(other, "gitlab", "reg", 60).issue("bob", [PULL])).token
    verified = await verifier(ring, trusted).verify(token)
    assert verified.issuer == "gitlab" and not verified.builtin


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"issuer": "x"},
        {"issuer": "x", "pem": "not a key"},
        {"issuer": "x", "jwks_url": "ftp://x"},
        {"issuer": "x", "jwks_url": "https://a", "pem_file": "/b"},
        {"issuer": "x", "jwks_file": "/nonexistent.json"},
        {"issuer": "x", "jwks_url": "https://a", "algorithms": ["HS256"]},
        {"issuer": "x", "jwks_url": "https://a", "colour": "blue"},
    ],
)
def test_bad_trusted_issuer_entries(entry: dict[str, Any]) -> None:
    with pytest.raises(TrustConfigError):
        trusted_issuer(entry, SERVICE)


def test_symmetric_algorithms_are_never_allowed() -> None:
    for algorithms in (["HS256"], ["ES256", "none"], ["RS256", "HS512"]):
        with pytest.raises(TrustConfigError):
            allowed_algorithms(algorithms)


def test_permits_agrees_with_covers() -> None:
    """The per-request check of a verified token (an index built once) says what `covers`,
    the reference, says, for every resource and action asked."""
    from registry.auth.scopes import Scope, covers
    from registry.auth.tokens import VerifiedToken

    access = [
        Scope("repository", "a/b", ("pull",)),
        Scope("repository", "a/b", ("push",)),
        Scope("repository", "c", ("*",)),
        Scope("registry", "catalog", ("*",)),
    ]
    token = VerifiedToken("alice", "us", access, True, "jti")
    for resource_type, name in [
        ("repository", "a/b"),
        ("repository", "c"),
        ("repository", "d"),
        ("registry", "catalog"),
        ("x", "a/b"),
    ]:
        for actions in [("pull",), ("push",), ("pull", "push"), ("delete",), ("*",), ()]:
            wanted = Scope(resource_type, name, actions)
            assert token.permits(resource_type, name, actions) == covers(access, wanted), wanted
