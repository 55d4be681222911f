"""`registry.oci.digest`: parsing, validation and computing digests."""

from __future__ import annotations

import hashlib

import pytest

from registry.oci.digest import Digest, DigestError, is_digest, new_hasher, supported_algorithms

SHA256 = "sha256:" + hashlib.sha256(b"hello").hexdigest()
SHA512 = "sha512:" + hashlib.sha512(b"hello").hexdigest()


@pytest.mark.parametrize("value", [SHA256, SHA512])
def test_parse_round_trips(value: str) -> None:
    digest = Digest.parse(value)
    assert str(digest) == value
    assert digest.algorithm == value.split(":")[0]
    assert digest.encoded == value.split(":")[1]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":" + "0" * 64,
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "A" * 64,  # upper-case hex is not canonical
        "sha256:" + "g" * 64,
        "SHA256:" + "0" * 64,
        "sha512:" + "0" * 64,
        "sha256::" + "0" * 64,
        "sha256:" + "0" * 64 + "\n",
        " sha256:" + "0" * 64,
        "sha256:" + "0" * 300,
    ],
)
def test_invalid(value: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(value)


@pytest.mark.parametrize("value", ["md5:" + "0" * 32, "sha1:" + "0" * 40, "blake3:" + "0" * 64])
def test_unsupported_algorithm(value: str) -> None:
    with pytest.raises(DigestError, match="unsupported"):
        Digest.parse(value)


def test_grammar_allows_separators_in_algorithm_but_they_are_unsupported() -> None:
    with pytest.raises(DigestError, match="unsupported"):
        Digest.parse("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564")


def test_of() -> None:
    assert str(Digest.of(b"hello")) == SHA256
    assert str(Digest.of(b"hello", "sha512")) == SHA512
    assert Digest.of(b"hello") == Digest.parse(SHA256)
    with pytest.raises(DigestError):
        Digest.of(b"hello", "md5")


def test_is_digest() -> None:
    assert is_digest(SHA256)
    assert is_digest("md5:abc")
    assert not is_digest("latest")


def test_hasher_copies_independently() -> None:
    hasher = new_hasher("sha256")
    hasher.update(b"hel")
    snapshot = hasher.copy()
    hasher.update(b"lo")
    assert hasher.hexdigest() == hashlib.sha256(b"hello").hexdigest()
    assert snapshot.hexdigest() == hashlib.sha256(b"hel").hexdigest()
    with pytest.raises(DigestError):
        new_hasher("md5")


def test_supported_algorithms() -> None:
    assert supported_algorithms() == ("sha256", "sha512")


def test_digests_are_hashable_values() -> None:
    assert {Digest.parse(SHA256), Digest.parse(SHA256)} == {Digest.parse(SHA256)}


def test_digest_with_a_final_newline_is_refused() -> None:
    with pytest.raises(DigestError):
        Digest.parse("sha256:" + "a" * 64 + "\n")
