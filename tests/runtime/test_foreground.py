"""`run` in the foreground as a user meets it: output kept for `logs`, Ctrl-C at any moment,
the usage line, and where a bare image name points."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, busybox_entries, file, tar_bytes
from runtime.runner import CLI, PROJECT, ROOT, cli

from support.server import RegistryServer

needs_root = pytest.mark.requires(ROOT, "running containers needs root")


@pytest.fixture(scope="session")
def busybox(registry_server: RegistryServer, pusher: Pusher) -> str:
    pusher.image("fg/busybox", "v1", Image([Layer(tar_bytes(busybox_entries()))]))
    return f"{registry_server.host}/fg/busybox:v1"


@pytest.fixture(scope="session")
def heavy(registry_server: RegistryServer, pusher: Pusher) -> str:
    """Busybox plus 48 MiB of random bytes in their own layer: a pull that takes a while."""
    layers = [Layer(tar_bytes(busybox_entries())),
              Layer(tar_bytes([file("blob", os.urandom(48 << 20))]), "none")]
    pusher.image("fg/heavy", "v1", Image(layers))
    return f"{registry_server.host}/fg/heavy:v1"


@pytest.fixture(autouse=True)
def cleanup(store: Store) -> Iterator[None]:
    yield
    ids = cli("ps", "-aq").stdout.split()
    if ids:
        cli("rm", "-f", *ids)


def run_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=120, cwd=PROJECT,
                          check=False)


@needs_root
def test_foreground_output_is_kept_for_logs_byte_for_byte(busybox: str, store: Store) -> None:
    script = ("head -c 3000000 /dev/urandom > /tmp/r; cat /tmp/r; echo err-line >&2; "
              "printf '\\377\\376 not utf-8\\n' >&2; exit 4")
    done = run_bytes("run", "--name", "kept", busybox, "sh", "-c", script)
    assert done.returncode == 4, done.stderr
    cid = json.loads(cli("inspect", "kept").stdout)[0]["Id"]
    written = (store.root / "containers" / cid / "upper/tmp/r").read_bytes()
    assert len(written) == 3_000_000
    assert done.stdout == written  # the terminal saw it live
    assert done.stderr.endswith(b"err-line\n\xff\xfe not utf-8\n")
    logs = run_bytes("logs", "kept")
    assert logs.returncode == 0
    assert logs.stdout == written  # and `logs` has it after the exit, streams kept apart
    assert logs.stderr == b"err-line\n\xff\xfe not utf-8\n"


@needs_root
def test_rm_in_the_foreground_shares_the_terminal(busybox: str, store: Store) -> None:
    done = cli("run", "--rm", busybox, "sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1]) == (0, "out\n", "err")


def interrupt(args: list[str], delay: float) -> subprocess.CompletedProcess[str]:
    """Start the `registry` command as a user does, press Ctrl-C `delay` seconds after our
    code began (the process names itself `registry` first thing: what comes before is the
    interpreter's own start, whose Ctrl-C CPython reports itself), and again every second
    while it runs on."""
    process = subprocess.Popen(
        [*CLI[:1], "-m", "registry", *args], cwd=PROJECT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    comm = Path(f"/proc/{process.pid}/comm")
    started = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < started:
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "registry":
                break
        time.sleep(0.002)
    deadline = time.monotonic() + delay
    while process.poll() is None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 1
        if deadline > time.monotonic() + 60:
            break
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            continue
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@needs_root
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 4.0])
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(
        heavy: str, store: Store, delay: float) -> None:
    """From the interpreter loading our modules, through the pull of a large layer and the
    container's start, to a container that ignores SIGINT (pid 1 `sleep`)."""
    done = interrupt(["run", "--rm", heavy, "sleep", "30"], delay)
    assert done.returncode == 130, (delay, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    leftovers = [p.name for p in (store.root / "tmp").iterdir()]
    assert leftovers == [], leftovers  # cancelled downloads and unpacks cleaned up
    assert cli("ps", "-aq").stdout == ""  # --rm held even when interrupted


def test_run_usage_shows_the_command_as_optional() -> None:
    usage = cli("run", "--help").stdout.splitlines()[0]
    assert usage == "usage: registry run [OPTIONS] IMAGE [COMMAND] [ARG...]"


def test_a_bare_name_is_on_the_default_registry(busybox: str, store: Store,
                                                registry_server: RegistryServer) -> None:
    done = cli("pull", "fg/nothing")
    assert done.returncode == 1 and "localhost:5000" in done.stderr  # refused, or not found
    done = cli("pull", "fg/busybox:v1", env={"POCKET_DEFAULT_REGISTRY": registry_server.host})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == busybox
