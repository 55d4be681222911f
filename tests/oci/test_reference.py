"""`registry.oci.reference`: image references as Docker writes them."""

from __future__ import annotations

import pytest

from registry.oci.reference import Reference, ReferenceError

DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("text", "host", "name", "tag", "digest"),
    [
        ("busybox", "localhost:5000", "busybox", "latest", None),
        ("library/busybox:1.36", "localhost:5000", "library/busybox", "1.36", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
        ("registry.example.com/app", "registry.example.com", "app", "latest", None),
        ("host:443/app", "host:443", "app", "latest", None),
        (f"app@{DIGEST}", "localhost:5000", "app", None, DIGEST),
        (f"h.io/app:v1@{DIGEST}", "h.io", "app", "v1", DIGEST),
    ],
)
def test_parse(text: str, host: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.host, ref.name, ref.tag, ref.digest) == (host, name, tag, digest)


def test_default_host() -> None:
    assert Reference.parse("app", default_host="example.org").host == "example.org"


def test_target_prefers_digest() -> None:
    assert Reference.parse(f"app:v1@{DIGEST}").target == DIGEST
    assert Reference.parse("app:v1").target == "v1"
    assert Reference.parse("app").target == "latest"


@pytest.mark.parametrize(
    "text", ["app", "h.io/app:v1", f"h.io/a/b@{DIGEST}", f"localhost:5000/app:v1@{DIGEST}"]
)
def test_str_round_trips(text: str) -> None:
    ref = Reference.parse(text)
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        "App",
        "app:-bad",
        "app:" + "a" * 129,
        "app@sha256:abc",
        "app@md5:" + "0" * 32,
        "h.io/",
        "a//b",
        "../x",
        "a b.io/x",
        "-bad.io/x",
        "host.io:99999999/x",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(ReferenceError):
        Reference.parse(text)
