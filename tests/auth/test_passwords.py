"""Password hashes (argon2id, bcrypt from htpasswd), secret tokens, htpasswd parsing."""

from __future__ import annotations

import bcrypt
import pytest

from registry.auth.passwords import (
    PasswordPolicyError,
    hash_password,
    new_secret,
    parse_htpasswd,
    secret_digest,
    verify_password,
)


def test_argon2_round_trip() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse").ok
    assert not verify_password(stored, "correct horsE").ok
    assert not verify_password(stored, "").ok
    assert not verify_password(stored, "correct horse").needs_rehash


def test_bcrypt_from_htpasswd_verifies_and_asks_for_a_rehash() -> None:
    # htpasswd -B writes $2y$; Python's bcrypt writes $2b$ (the same algorithm).
    stored = "$2y$" + bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()[4:]
    verdict = verify_password(stored, "s3cret-pass")
    assert verdict.ok and verdict.needs_rehash
    assert not verify_password(stored, "wrong").ok


def test_unusable_hashes_and_inputs_never_verify() -> None:
    assert not verify_password(None, "anything").ok  # unknown account: still hashed
    assert not verify_password("$apr1$abc$def", "x").ok
    assert not verify_password("$2y$garbage", "x").ok
    assert not verify_password("$argon2id$garbage", "x").ok
    too_long = "x" * 2000
    assert not verify_password(hash_password("long enough"), too_long).ok
    bcrypt_hash = bcrypt.hashpw(b"short", bcrypt.gensalt(rounds=4)).decode()
    assert not verify_password(bcrypt_hash, "y" * 100).ok  # over bcrypt's 72 bytes


def test_policy() -> None:
    with pytest.raises(PasswordPolicyError):
        hash_password("short")
    with pytest.raises(PasswordPolicyError):
        hash_password("x" * 1025)


def test_secrets_are_random_and_stored_as_digests() -> None:
    first, second = new_secret("pkr_"), new_secret("pkr_")
    assert first != second and first.startswith("pkr_") and len(first) > 40
    assert secret_digest(first) == secret_digest(first) != secret_digest(second)
    assert first not in secret_digest(first)


def test_htpasswd_parsing() -> None:
    text = (
        "# a comment\n"
        "\n"
        "alice:$2y$05$abcdefghijklmnopqrstuuq3KwbnCjXDIUnWmLM6nsZG3NbfVDFe\n"
        "bob:$apr1$x$y\n"
        "carol:{SHA}abc=\n"
        "garbage line\n"
    )
    entries = parse_htpasswd(text)
    assert [(e.line, e.username, e.hash is not None) for e in entries] == [
        (3, "alice", True),
        (4, "bob", False),
        (5, "carol", False),
        (6, "garbage line", False),
    ]
