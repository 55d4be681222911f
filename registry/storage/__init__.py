"""Immutable bytes keyed by digest: a small driver protocol, its drivers, and the blob store."""
