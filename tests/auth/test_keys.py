"""Signing keys: made on first start with private permissions, kept, rotated, retired."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from registry.auth.keys import KeyFolderError, KeyRing, thumbprint


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pem_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pem"))


def test_first_start_makes_one_private_key(tmp_path: Path) -> None:
    folder = tmp_path / "auth" / "keys"
    ring = KeyRing(folder)
    ring.ensure()
    [key_file] = pem_files(folder)
    assert mode(folder) == 0o700 and mode(key_file) == 0o600
    key = ring.signing_key()
    assert key.algorithm == "ES256" and isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    assert key.kid == thumbprint(key.public_key) and key.kid in key_file.name
    # A second start (another process) uses the same key.
    again = KeyRing(folder)
    again.ensure()
    assert again.signing_key().kid == key.kid and len(pem_files(folder)) == 1


def test_rsa_keys(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, "RS256")
    key = ring.signing_key()
    assert key.algorithm == "RS256" and isinstance(key.private_key, rsa.RSAPrivateKey)
    [jwk] = ring.jwks()["keys"]
    assert jwk["kty"] == "RSA" and jwk["kid"] == key.kid and jwk["alg"] == "RS256"
    assert "d" not in jwk  # public parts only


def test_changing_the_algorithm_makes_a_new_key(tmp_path: Path) -> None:
    first = KeyRing(tmp_path, "ES256").signing_key()
    second = KeyRing(tmp_path, "RS256").signing_key()
    assert second.algorithm == "RS256" and second.kid != first.kid


def test_rotation_overlap_and_retirement(tmp_path: Path) -> None:
    clock = Clock()
    ring = KeyRing(tmp_path, rotation_seconds=100, overlap_seconds=30, clock=clock)
    old = ring.signing_key()
    clock.now += 99
    assert ring.signing_key().kid == old.kid
    clock.now += 1
    new = ring.signing_key()
    assert new.kid != old.kid
    # The old key verifies what it signed until those tokens have expired...
    clock.now += 29
    assert ring.verification_key(old.kid) is not None
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}
    clock.now += 2
    assert ring.verification_key(old.kid) is None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]
    # ...and its file goes a while later, at the next look at the folder.
    assert len(pem_files(tmp_path)) == 2
    clock.now += 60
    ring.ensure()
    assert new.path is not None and pem_files(tmp_path) == [new.path]


def test_no_rotation_when_disabled(tmp_path: Path) -> None:
    clock = Clock()
    ring = KeyRing(tmp_path, rotation_seconds=0, clock=clock)
    kid = ring.signing_key().kid
    clock.now += 10 * 365 * 86400
    assert ring.signing_key().kid == kid


def test_keys_made_by_another_process_are_found(tmp_path: Path) -> None:
    clock = Clock()
    mine = KeyRing(tmp_path, rotation_seconds=100, overlap_seconds=30, clock=clock)
    mine.ensure()
    clock.now += 100
    theirs = KeyRing(tmp_path, rotation_seconds=100, overlap_seconds=30, clock=clock)
    rotated = theirs.signing_key()
    clock.now += 2  # past the rescan interval
    found = mine.verification_key(rotated.kid)
    assert found is not None and found.kid == rotated.kid


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    KeyRing(tmp_path).ensure()
    [key_file] = pem_files(tmp_path)
    key_file.chmod(0o644)
    KeyRing(tmp_path).ensure()
    assert mode(key_file) == 0o600


def test_unreadable_key_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "1700000000-AAAAAAAAAAAAAAAAAAAAAAAA.pem").write_text("not a key")
    ring = KeyRing(tmp_path)
    ring.ensure()
    assert len(ring.jwks()["keys"]) == 1


def test_only_es256_and_rs256_sign(tmp_path: Path) -> None:
    with pytest.raises(KeyFolderError):
        KeyRing(tmp_path, "HS256")


def test_a_key_made_in_the_same_instant_still_comes_last(tmp_path: Path) -> None:
    clock = Clock()
    first = KeyRing(tmp_path, "ES256", clock=clock).signing_key()
    second = KeyRing(tmp_path, "RS256", clock=clock).signing_key()  # same clock reading
    assert second.created > first.created
    assert KeyRing(tmp_path, "RS256", clock=clock).signing_key().kid == second.kid
