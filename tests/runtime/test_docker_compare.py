"""Images built by real Docker, pushed to a registry, run by both: same output and exit code."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from registry.runtime.store import Store
from runtime.runner import ROOT, cli

from support.dockerd import BusyboxImagePlan, DockerDaemon, build_busybox_image
from support.server import RegistryServer

pytestmark = pytest.mark.skipif(not ROOT, reason="running containers needs root")

CUSTOM = """FROM {base}
ENV A=1 B="two words"
RUN echo "u:x:1000:1000:u:/home/u:/bin/sh" >> /etc/passwd && \\
    echo "u:x:1000:" > /etc/group && echo "extra:x:77:u" >> /etc/group && mkdir -p /home/u
USER u
WORKDIR /home/u/work
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["busybox env | busybox grep -v ^HOSTNAME= | busybox sort; busybox id; pwd; \\
busybox ls -a; exit 5"]
"""


@pytest.fixture(scope="session")
def docker_images(dockerd: DockerDaemon, registry_server: RegistryServer) -> dict[str, str]:
    base = build_busybox_image(dockerd, f"{registry_server.host}/cmp/busybox:v1", layers=3)
    custom = f"{registry_server.host}/cmp/custom:v1"
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(CUSTOM.format(base=base))
        dockerd.docker("build", "--tag", custom, context)
    for tag in (base, custom):
        dockerd.docker("push", tag)
    return {"base": base, "custom": custom}


def both(
    dockerd: DockerDaemon, flags: list[str], image: str, args: list[str]
) -> tuple[tuple[int, str], tuple[int, str]]:
    theirs = dockerd.docker("run", "--rm", "--network", "none", *flags, image, *args, check=False)
    ours = cli("run", "--rm", "--network", "none", *flags, image, *args, timeout=120)
    return (theirs.returncode, theirs.stdout), (ours.returncode, ours.stdout)


def test_docker_built_image_runs_the_same(
    dockerd: DockerDaemon, docker_images: dict[str, str], store: Store
) -> None:
    theirs, ours = both(dockerd, [], docker_images["base"], [])
    assert theirs == ours == (0, BusyboxImagePlan(3).expected_output())
    for path in BusyboxImagePlan(3).deleted:  # the whiteout in the last layer
        assert cli("run", "--rm", docker_images["base"], "test", "-e", path).returncode == 1


@pytest.mark.parametrize(
    ("flags", "args"),
    [
        ([], []),
        (["-e", "A=override", "-e", "NEW=x"], []),
        (["-u", "0", "-w", "/tmp/made"], []),
        (["-u", "1000:77"], []),
        (["--entrypoint", "/bin/busybox"], ["sh", "-c", "busybox id; exit 42"]),
        ([], ["exit 3"]),
    ],
)
def test_config_and_flags_match_docker(
    dockerd: DockerDaemon,
    docker_images: dict[str, str],
    store: Store,
    flags: list[str],
    args: list[str],
) -> None:
    theirs, ours = both(dockerd, flags, docker_images["custom"], args)
    assert ours == theirs


@pytest.mark.parametrize("command", [["nosuch"], ["/etc/passwd"], ["/etc"]])
def test_start_failure_codes_match_docker(
    dockerd: DockerDaemon, docker_images: dict[str, str], store: Store, command: list[str]
) -> None:
    theirs, ours = both(dockerd, ["--entrypoint", command[0]], docker_images["base"], [])
    assert ours[0] == theirs[0]
