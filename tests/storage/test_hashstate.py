"""`registry.storage.hashstate`: SHA-256/512 states saved and resumed, checked against hashlib."""

from __future__ import annotations

import hashlib
import random

import pytest

from registry.storage import hashstate

pytestmark = pytest.mark.skipif(not hashstate.available(), reason="no libcrypto SHA functions")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_resumed_hashes_match_hashlib(algorithm: str) -> None:
    rng = random.Random(algorithm)
    for _ in range(200):
        pieces = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(0, 6))]
        hasher, reference = hashstate.new(algorithm), hashlib.new(algorithm)
        for piece in pieces:
            hasher.update(piece)
            reference.update(piece)
            hasher = hashstate.load(hasher.save(), algorithm)  # as the next process would
            assert hasher is not None
        assert hasher.copy().hexdigest() == reference.hexdigest()
        assert hasher.hexdigest() == reference.hexdigest()  # digest() leaves the state as it was
        assert hasher.digest() == reference.digest()


def test_states_it_cannot_resume_are_refused() -> None:
    saved = hashstate.new("sha256").save()
    assert hashstate.load(saved, "sha256") is not None
    assert hashstate.load(None) is None
    assert hashstate.load(b"") is None
    assert hashstate.load(saved, "sha512") is None  # another algorithm's
    assert hashstate.load(saved[:-1], "sha256") is None  # truncated
    assert hashstate.load(b"XX" + saved[2:], "sha256") is None  # not ours
    # A struct whose `num` (bytes waiting in the block) cannot be: another layout.
    broken = saved[:-8] + (200).to_bytes(4, "little") + saved[-4:]
    assert hashstate.load(broken, "sha256") is None


def test_memoryviews_and_bytearrays_hash_alike() -> None:
    data = bytes(range(256)) * 100
    hasher = hashstate.new("sha256")
    hasher.update(memoryview(data)[:1000])
    hasher.update(bytearray(data[1000:]))
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
