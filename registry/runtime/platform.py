"""Platforms (`os/arch[/variant]`): the host's, and picking one manifest out of an index."""

from __future__ import annotations

import os
from collections.abc import Sequence

from registry.oci.manifest import Descriptor, Platform
from registry.runtime.errors import PlatformNotFound

_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> Platform:
    machine = os.uname().machine  # what platform.machine() says, without loading it
    arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
    return Platform(arch, "linux", variant)


def parse_platform(value: str) -> Platform:
    """`linux/arm64/v8` -> Platform; raises PlatformNotFound for nonsense."""
    parts = value.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PlatformNotFound(f"invalid platform {value!r}: expected os/arch[/variant]")
    arch, variant = _ARCH_ALIASES.get(parts[1], (parts[1], None))
    return Platform(arch, parts[0], parts[2] if len(parts) == 3 else variant)


def format_platform(plat: Platform) -> str:
    return "/".join(p for p in (plat.os, plat.architecture, plat.variant) if p)


def _normal_variant(plat: Platform) -> str | None:
    if plat.architecture == "arm64" and plat.variant in (None, "v8"):
        return None
    return plat.variant


def matches(candidate: Platform, wanted: Platform) -> bool:
    if (candidate.os, candidate.architecture) != (wanted.os, wanted.architecture):
        return False
    want_variant = _normal_variant(wanted)
    return want_variant is None or _normal_variant(candidate) == want_variant


def select_manifest(manifests: Sequence[Descriptor], wanted: Platform) -> Descriptor:
    """The index entry for `wanted`; an exact variant beats one without a variant."""
    fits = [d for d in manifests if d.platform is not None and matches(d.platform, wanted)]
    if not fits:
        offered = ", ".join(
            sorted({format_platform(d.platform) for d in manifests if d.platform})
        ) or "none"
        raise PlatformNotFound(
            f"no manifest for platform {format_platform(wanted)} (offered: {offered})"
        )
    fits.sort(key=lambda d: d.platform is not None and d.platform.variant != wanted.variant)
    return fits[0]
