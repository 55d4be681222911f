"""Docker's default capability set, and dropping everything else before exec."""

from __future__ import annotations

import contextlib

from registry.runtime import linux

# capability numbers from linux/capability.h
DOCKER_DEFAULT = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
DEFAULT_MASK = sum(1 << n for n in DOCKER_DEFAULT.values())


def last_cap() -> int:
    """The highest capability this kernel knows (read before pivot_root)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 40


def drop_to_default(highest: int) -> None:
    """Bounding set and effective/permitted/inheritable down to Docker's defaults.

    Docker leaves the inheritable set empty; a later setuid to non-root clears the rest,
    as it does under Docker.
    """
    for cap in range(highest + 1):
        if not DEFAULT_MASK & (1 << cap):
            with contextlib.suppress(OSError):  # EINVAL for caps the kernel lacks
                linux.prctl(linux.PR_CAPBSET_DROP, cap)
    linux.capset(DEFAULT_MASK, DEFAULT_MASK, 0)
