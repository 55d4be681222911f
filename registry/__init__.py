"""A private OCI container registry, paired with a pocket container runtime."""

from __future__ import annotations

__version__ = "0.1.0"
