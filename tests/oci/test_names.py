"""`registry.oci.names`: the distribution-spec grammar for repository names and tags."""

from __future__ import annotations

import pytest

from registry.oci.names import MAX_NAME_LENGTH, is_repository_name, is_tag, referrers_tag


@pytest.mark.parametrize(
    "name",
    ["a", "0", "library/busybox", "a/b/c/d", "a.b", "a_b", "a__b", "a-b", "a---b", "x" * 255],
)
def test_valid_names(name: str) -> None:
    assert is_repository_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "a/B",
        "../x",
        "x/..",
        "./x",
        "a//b",
        "/a",
        "a/",
        "-a",
        "a-",
        ".a",
        "a.",
        "_a",
        "a___b",
        "a..b",
        "a._b",
        "a b",
        "a:b",
        "a@b",
        "café",
        "a\n",
        "x" * 256,
        "/".join(["abcdefghijklmnop"] * 16),
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_repository_name(name)


def test_length_limit_counts_the_whole_name() -> None:
    name = "/".join(["a" * 127, "b" * 127])
    assert len(name) == MAX_NAME_LENGTH
    assert is_repository_name(name)
    assert not is_repository_name(name + "c")


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "1", "A-b_c.d", "a" * 128, "T" * 128])
def test_valid_tags(tag: str) -> None:
    assert is_tag(tag)


@pytest.mark.parametrize(
    "tag", ["", "-x", ".x", "a" * 129, "a/b", "a:b", "a b", "a+b", "é", "latest\n"]
)
def test_invalid_tags(tag: str) -> None:
    assert not is_tag(tag)


def test_referrers_tag() -> None:
    digest = "sha256:" + "ab" * 32
    assert referrers_tag(digest) == "sha256-" + "ab" * 32
    long = referrers_tag("sha512:" + "c" * 128)
    assert long == "sha512-" + "c" * 64
    assert is_tag(long)


@pytest.mark.parametrize("value", ["library/busybox\n", "a\nb", "\nlibrary"])
def test_names_with_newlines_are_refused(value: str) -> None:
    # `$` in a regex would accept a final newline; a URL can carry one as %0A.
    assert not is_repository_name(value)


@pytest.mark.parametrize("value", ["latest\n", "v1\n"])
def test_tags_with_newlines_are_refused(value: str) -> None:
    assert not is_tag(value)
