"""The private dockerd leaves the host's networking as it found it.

With `--bridge=none` dockerd deletes any `docker0` bridge it finds: run in the host's network
namespace, it took the host's own Docker's bridge, and the host's `docker run` failed with
"could not find bridge docker0" after our tests. The host here gets a `docker0` of the
test's own when it has none, so that there is one to lose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from support.ci import require
from support.dockerd import DockerDaemon, find_docker_cli, find_dockerd

# What changes on its own (address and route lifetimes counting down), not by anyone's hand.
_VOLATILE = {"valid_life_time", "preferred_life_time", "expires", "stats", "stats64"}


def _ip(*args: str) -> Any:
    answer = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(answer.stdout or "[]")


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def host_network() -> dict[str, Any]:
    """The host's interfaces, their addresses and every routing table, IPv4 and IPv6."""
    return _stable(
        {
            "links": _ip("link"),
            "addresses": _ip("addr"),
            "routes": _ip("route", "show", "table", "all"),
            "routes6": _ip("-6", "route", "show", "table", "all"),
        }
    )


@pytest.fixture
def host_bridge() -> Iterator[str]:
    """A `docker0` bridge on the host: the host's own Docker's, or one made for this test."""
    reason = None
    if os.geteuid() != 0:
        reason = "making a bridge needs root"
    elif shutil.which("ip") is None:
        reason = "ip (Debian package iproute2) not found"
    elif find_dockerd() is None or find_docker_cli() is None:
        reason = "dockerd or the docker CLI not found (Debian package docker.io)"
    require(reason is None, str(reason))
    made = subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode != 0
    if made:
        subprocess.run(["ip", "link", "add", "docker0", "type", "bridge"], check=True)
    try:
        yield "docker0"
    finally:
        if made:
            subprocess.run(["ip", "link", "del", "docker0"], capture_output=True, check=False)


def test_private_dockerd_leaves_host_networking_alone(host_bridge: str) -> None:
    before = host_network()
    dockerd, cli = find_dockerd(), find_docker_cli()
    assert dockerd is not None and cli is not None
    daemon = DockerDaemon(dockerd, cli)
    daemon.start()
    try:
        assert daemon.docker("info", "--format", "{{.Driver}}").stdout.strip()
        assert host_network() == before  # not while it runs either
    finally:
        daemon.stop()
    after = host_network()
    assert [link["ifname"] for link in after["links"]].count(host_bridge) == 1
    assert after == before
