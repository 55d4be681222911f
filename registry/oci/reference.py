"""Image references as Docker writes them: `[host[:port]/]name[:tag][@digest]`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.oci.digest import Digest
from registry.oci.names import is_repository_name, is_tag

DEFAULT_TAG = "latest"

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(
    rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?\Z"
)


class ReferenceError(ValueError):
    """A string that is not an image reference."""


@dataclass(frozen=True, slots=True)
class Reference:
    host: str
    name: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, value: str, default_host: str = "localhost:5000") -> Reference:
        rest, digest = value, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            try:
                Digest.parse(digest)
            except ValueError as exc:
                raise ReferenceError(str(exc)) from None
        host = default_host
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            if not _HOST.match(first):
                raise ReferenceError(f"invalid registry host {first!r} in {value!r}")
            host, rest = first, remainder
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not is_tag(tag):
                raise ReferenceError(f"invalid tag {tag!r} in {value!r}")
        if not is_repository_name(rest):
            raise ReferenceError(f"invalid repository name {rest!r} in {value!r}")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(host, rest, tag, digest)

    @property
    def target(self) -> str:
        """What to ask the manifests endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        out = f"{self.host}/{self.name}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
