"""Seccomp as Docker applies it: the calls its default profile refuses fail with EPERM in
our containers (ENOSYS for clone3), the same as under real Docker; ordinary programs run;
`--security-opt seccomp=unconfined` and `no-new-privileges` work as Docker spells them."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.runtime.seccomp import DEFAULT_PROFILE
from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, busybox_entries, file, tar_bytes
from runtime.runner import ROOT, cli

from support.dockerd import DockerDaemon
from support.server import RegistryServer

pytestmark = pytest.mark.requires(ROOT, "running containers needs root")

PROBE_SOURCE = Path(__file__).parent / "probes" / "syscalls.c"
REFUSED = {"unshare-user": "EPERM", "keyctl": "EPERM", "perf_event_open": "EPERM",
           "bpf": "EPERM", "kexec_load": "EPERM", "socket-vsock": "EPERM",
           "personality-read-implies-exec": "EPERM", "clone3": "ENOSYS"}
ALLOWED = {"personality-query": "ok", "getpid": "ok", "socket-inet": "ok"}


@pytest.fixture(scope="session")
def probe_image(registry_server: RegistryServer, pusher: Pusher) -> str:
    """Busybox and /probe, the syscall prober compiled static (gcc, libc6-dev)."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "probe"
        subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(PROBE_SOURCE)],
                       check=True, capture_output=True, timeout=120)
        probe = binary.read_bytes()
    layers = [Layer(tar_bytes(busybox_entries())), Layer(tar_bytes([file("probe", probe,
                                                                         0o755)]))]
    pusher.image("seccomp/probe", "v1", Image(layers, {"Cmd": ["/probe"]}))
    return f"{registry_server.host}/seccomp/probe:v1"


@pytest.fixture(autouse=True)
def cleanup(store: Store) -> Iterator[None]:
    yield
    ids = cli("ps", "-aq").stdout.split()
    if ids:
        cli("rm", "-f", *ids)


def results(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.splitlines())


def test_default_profile_refuses_what_dockers_refuses(probe_image: str, store: Store) -> None:
    done = cli("run", "--rm", probe_image)
    assert done.returncode == 0, done.stderr
    assert results(done.stdout) == {**REFUSED, **ALLOWED}
    status = cli("run", "--rm", probe_image, "grep", "-E", "^(Seccomp|NoNewPrivs):",
                 "/proc/self/status")
    assert status.stdout.split() == ["NoNewPrivs:", "0", "Seccomp:", "2"]


def test_ordinary_programs_and_set_id_still_work_under_the_filter(
        probe_image: str, store: Store) -> None:
    script = ("echo a > /tmp/f && cat /tmp/f && ls / >/dev/null && sleep 0 && "
              "sh -c 'exit 0' & wait && id -u && chown 1000 /tmp/f && echo done")
    done = cli("run", "--rm", "--init", probe_image, "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "a\n0\ndone\n"), done.stderr
    done = cli("run", "--rm", "--init", probe_image, "/probe")
    assert results(done.stdout) == {**REFUSED, **ALLOWED}  # --init's child is filtered too
    init = cli("run", "--rm", "--init", probe_image, "grep", "-E", "^(Seccomp|CapEff):",
               "/proc/1/status")
    assert init.stdout.split() == ["CapEff:", "00000000a80425fb", "Seccomp:", "2"]


def test_unconfined_and_no_new_privileges(probe_image: str, store: Store) -> None:
    done = cli("run", "--rm", "--security-opt", "seccomp=unconfined", probe_image)
    assert done.returncode == 0, done.stderr
    got = results(done.stdout)
    assert got["unshare-user"] == "ok" and got["keyctl"] == "ok"  # only seccomp refused them
    status = cli("run", "--rm", "--security-opt", "seccomp=unconfined", "--security-opt",
                 "no-new-privileges", probe_image, "grep", "-E", "^(Seccomp|NoNewPrivs):",
                 "/proc/self/status")
    assert status.stdout.split() == ["NoNewPrivs:", "1", "Seccomp:", "0"]
    bad = cli("run", "--rm", "--security-opt", "apparmor=foo", probe_image)
    assert bad.returncode != 0 and "invalid --security-opt" in bad.stderr


def test_a_custom_profile_in_dockers_format(probe_image: str, store: Store,
                                            tmp_path: Path) -> None:
    profile = json.loads(json.dumps(DEFAULT_PROFILE))
    profile["syscalls"].append({"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": 1})
    profile["syscalls"][0]["names"].remove("getpid")
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    done = cli("run", "--rm", "--security-opt", f"seccomp={path}", probe_image)
    assert results(done.stdout)["getpid"] == "EPERM"


# Refused by Docker's current profile and by ours, not yet by the one Debian's docker.io
# 20.10 ships (which predates the AF_VSOCK rule).
NEWER_THAN_DEBIANS_DOCKER = {"socket-vsock"}


@pytest.mark.clients
def test_same_answers_as_under_docker(dockerd: DockerDaemon, probe_image: str,
                                      store: Store) -> None:
    theirs = results(dockerd.docker("run", "--rm", "--network", "none", probe_image).stdout)
    ours = results(cli("run", "--rm", "--network", "none", probe_image).stdout)
    assert ours == {**REFUSED, **ALLOWED}
    for name in NEWER_THAN_DEBIANS_DOCKER:
        del theirs[name], ours[name]
    assert ours == theirs
