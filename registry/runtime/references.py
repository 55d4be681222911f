"""Image references as the runtime reads them: a name without a registry host is on
$POCKET_DEFAULT_REGISTRY, else localhost:5000 (there is no Docker Hub default). Kept
apart from `pull` so that commands that only name images do not load the HTTP client."""

from __future__ import annotations

import os

from registry.oci.reference import Reference, ReferenceError
from registry.runtime.errors import InvalidReference

DEFAULT_REGISTRY_ENV = "POCKET_DEFAULT_REGISTRY"
DEFAULT_REGISTRY = "localhost:5000"


def parse_reference(value: str) -> Reference:
    """A reference; a name without a registry host (`busybox`, `team/app:1`) is on
    $POCKET_DEFAULT_REGISTRY, else localhost:5000 (there is no Docker Hub default)."""
    try:
        return Reference.parse(value, os.environ.get(DEFAULT_REGISTRY_ENV) or DEFAULT_REGISTRY)
    except ReferenceError as exc:
        raise InvalidReference(f"invalid reference format: {exc}") from None


def reference_key(ref: Reference) -> str:
    """The canonical text of a reference as image records keep it."""
    return str(ref)
