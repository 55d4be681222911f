"""Crafted images against the runtime: each tries to reach the host when root pulls or runs
it, and each probe is harmless (canaries in a temporary folder, read-only checks)."""

from __future__ import annotations

import os
from pathlib import Path

from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, directory, symlink, tar_bytes
from runtime.runner import cli

from support.server import RegistryServer


def _state(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid


def test_pull_never_chowns_through_a_symlink_the_layer_made(
        registry_server: RegistryServer, pusher: Pusher, store: Store, tmp_path: Path) -> None:
    """The review's layer: `x/` (06777, uid 1000), `x/shadow/`, then `x -> /etc`; with a
    canary folder standing in for /etc."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    (etc / "shadow").write_text("root:*:1:0:::::\n")
    os.chmod(etc / "shadow", 0o640)
    before = {p: _state(p) for p in (etc, etc / "shadow")}
    layer = tar_bytes([
        directory("x", 0o6777, uid=1000, gid=1000),
        directory("x/shadow", 0o6777, uid=1000, gid=1000),
        symlink("x", str(etc)),
        directory("d", 0o6777, uid=1000, gid=1000),
        symlink("d", str(etc / "shadow")),
    ])
    pusher.image("hostile/chown", "v1", Image([Layer(layer)]))
    done = cli("pull", f"{registry_server.host}/hostile/chown:v1")
    assert done.returncode == 0, done.stderr
    assert {p: _state(p) for p in before} == before
