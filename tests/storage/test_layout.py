"""`registry.storage.layout`: where blobs and uploads live, and which upload ids are valid."""

from __future__ import annotations

import pytest

from registry.oci.digest import Digest
from registry.storage import layout

UPLOAD = "a" * 32


def test_blob_key() -> None:
    digest = Digest.of(b"x")
    assert layout.blob_key(digest) == f"blobs/sha256/{digest.encoded[:2]}/{digest.encoded}/data"
    digest = Digest.of(b"x", "sha512")
    assert layout.blob_key(digest).startswith(f"blobs/sha512/{digest.encoded[:2]}/")


def test_upload_keys() -> None:
    assert layout.upload_key(UPLOAD) == f"uploads/{UPLOAD}/data"
    assert layout.upload_prefix(UPLOAD) == f"uploads/{UPLOAD}"
    assert layout.is_upload_id(UPLOAD)


@pytest.mark.parametrize("bad", ["", "A" * 32, "a" * 31, "a" * 33, "../" + "a" * 29, UPLOAD + "\n"])
def test_invalid_upload_ids(bad: str) -> None:
    assert not layout.is_upload_id(bad)
    with pytest.raises(ValueError):
        layout.upload_key(bad)


def test_blob_keys_parse_back() -> None:
    for digest in (Digest.of(b"x"), Digest.of(b"x", "sha512")):
        assert layout.digest_of_blob_key(layout.blob_key(digest)) == digest


@pytest.mark.parametrize(
    "key",
    [
        "blobs/sha256/00/" + "a" * 64 + "/data",  # in the wrong folder
        "blobs/sha256/aa/" + "a" * 63 + "/data",  # too short
        "blobs/md5/aa/" + "a" * 32 + "/data",  # an algorithm we do not verify
        "blobs/sha256/aa/" + "a" * 64 + "/other",
        "uploads/" + "a" * 32 + "/data",
    ],
)
def test_other_keys_are_not_blobs(key: str) -> None:
    assert layout.digest_of_blob_key(key) is None


def test_upload_ids_of_keys() -> None:
    assert layout.upload_id_of_key(f"uploads/{UPLOAD}/data") == UPLOAD
    assert layout.upload_id_of_key(f"uploads/{UPLOAD}") == UPLOAD
    assert layout.upload_id_of_key("uploads/nope/data") is None
    assert layout.upload_id_of_key(f"blobs/{UPLOAD}/data") is None
