"""`run` and friends against images pushed to a real registry: namespaces, config, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, busybox_entries, directory, file, tar_bytes
from runtime.runner import CLI, ROOT, cli

from support.server import RegistryServer

pytestmark = pytest.mark.skipif(not ROOT, reason="running containers needs root")


@pytest.fixture(scope="session")
def image(registry_server: RegistryServer, pusher: Pusher) -> str:
    """Busybox, then a layer deleting a file and making a dir opaque, then config."""
    base = [
        *busybox_entries(),
        directory("etc/app"),
        file("etc/app/deleted", "old"),
        file("etc/app/kept", "kept\n"),
        directory("opaque"),
        file("opaque/hidden", "x"),
        file("bin/not-exec", "#!/bin/sh\necho no\n", 0o644),
    ]
    upper = [
        directory("etc"),
        directory("etc/app"),
        file("etc/app/.wh.deleted"),
        directory("opaque"),
        file("opaque/.wh..wh..opq"),
        file("opaque/new", "new\n"),
    ]
    config = {
        "Env": ["IMAGE_VAR=from-image", "SHARED=image"],
        "Cmd": ["sh", "-c", "echo hi"],
        "WorkingDir": "/srv/work",
    }
    pusher.image(
        "rt/busybox",
        "latest",
        Image([Layer(tar_bytes(base)), Layer(tar_bytes(upper), "zstd")], config),
    )
    return f"{registry_server.host}/rt/busybox:latest"


@pytest.fixture(autouse=True)
def cleanup(store: Store) -> Iterator[None]:
    yield
    ids = cli("ps", "-aq").stdout.split()
    if ids:
        cli("rm", "-f", *ids)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli("run", *args, timeout=timeout)


def test_output_exit_code_and_layers(image: str) -> None:
    done = run(
        "--rm",
        image,
        "sh",
        "-c",
        "cat /etc/app/kept; ls /etc/app; ls /opaque; test -e /etc/app/deleted; exit 3",
    )
    assert done.returncode == 3
    assert done.stdout == "kept\nkept\nnew\n"
    assert cli("ps", "-aq").stdout == ""  # --rm


def test_image_config_and_overrides(image: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text('# comment\nFROM_FILE="quoted"\nSHARED=file\n')
    done = run(
        "--rm", "--env-file", str(env_file), "-e", "SHARED=flag", image, "sh", "-c", "pwd; env"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/srv/work"  # WorkingDir, created because missing
    env = dict(line.split("=", 1) for line in lines[1:])
    assert env["IMAGE_VAR"] == "from-image"
    assert env["SHARED"] == "flag"
    assert env["FROM_FILE"] == '"quoted"'
    assert env["HOME"] == "/root"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["HOSTNAME"] != socket.gethostname()
    done = run("--rm", "-w", "/made/here", "--entrypoint", "pwd", image)
    assert (done.returncode, done.stdout) == (0, "/made/here\n")


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("app", "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),1000(app)\n/home/app\n"),
        ("1000:50", "uid=1000(app) gid=50(staff) groups=50(staff)\n/home/app\n"),
        ("4242", "uid=4242 gid=0(root) groups=0(root)\n/\n"),
    ],
)
def test_users(image: str, user: str, expected: str) -> None:
    done = run("--rm", "-u", user, image, "sh", "-c", "id; echo $HOME")
    assert (done.returncode, done.stdout) == (0, expected)


def test_start_failures_are_one_line_with_docker_codes(image: str) -> None:
    assert cli("pull", image).returncode == 0
    cases = [
        (["nosuch"], 127, 'exec: "nosuch": executable file not found in $PATH'),
        (["/bin/not-exec"], 126, "permission denied"),
        (["/etc"], 126, "is a directory"),
        (["/missing/tool"], 127, "no such file or directory"),
    ]
    for argv, code, message in cases:
        done = run("--rm", image, *argv)
        assert done.returncode == code, done.stderr
        assert message in done.stderr and len(done.stderr.splitlines()) == 1
    done = run("--rm", "-u", "nosuch", image, "id")
    assert done.returncode == 125 and "unable to find user nosuch" in done.stderr


def test_isolation(image: str) -> None:
    script = (
        "echo pid=$$; hostname; ls /sys/class/net; touch /sys/x 2>/dev/null || echo sys-ro;"
        "ls /dev | tr '\\n' ' '; echo; chown 1000 /tmp && echo chown-ok;"
        "mkdir -p /mnt && mount -t tmpfs tmpfs /mnt 2>/dev/null || echo no-mount;"
        "grep CapEff /proc/self/status"
    )
    done = run("--rm", "--network", "none", "--hostname", "box1", image, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0:4] == ["pid=1", "box1", "lo", "sys-ro"]
    assert set(out[4].split()) >= {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "pts",
        "shm",
        "ptmx",
    }
    assert out[5:7] == ["chown-ok", "no-mount"]
    assert out[7].split() == ["CapEff:", "00000000a80425fb"]  # Docker's default set
    host_net = run("--rm", image, "ls", "/sys/class/net").stdout.split()
    assert len(host_net) > 1


def test_copy_fallback_when_overlay_is_unavailable(image: str) -> None:
    done = cli(
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "ls /etc/app; ls /opaque; echo x > /etc/app/w",
        env={"POCKET_RUNTIME_STORAGE": "copy"},
    )
    assert (done.returncode, done.stdout) == (0, "kept\nnew\n"), done.stderr


def test_named_volume_outlives_containers_and_bind_ro(
    image: str, tmp_path: Path, store: Store
) -> None:
    saved = run("--rm", "-v", "data1:/data", image, "sh", "-c", "echo saved > /data/f")
    assert saved.returncode == 0
    done = run("--rm", "-v", "data1:/data", image, "cat", "/data/f")
    assert (done.returncode, done.stdout) == (0, "saved\n")
    assert (store.root / "volumes/data1/_data/f").read_text() == "saved\n"
    host = tmp_path / "host"
    host.mkdir()
    (host / "in").write_text("from host\n")
    done = run("--rm", "-v", f"{host}:/h:ro", image, "sh", "-c", "cat /h/in; touch /h/new")
    assert done.returncode == 1 and done.stdout == "from host\n"
    assert "Read-only" in done.stderr and not (host / "new").exists()


def test_memory_limit_stops_a_hog(image: str) -> None:
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'
    done = run("--name", "hog", "-m", "16m", image, "sh", "-c", hog, timeout=120)
    assert done.returncode == 137 and "survived" not in done.stdout
    state = json.loads(cli("inspect", "hog").stdout)[0]["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    assert not any(Path("/sys/fs/cgroup").glob("*/pocket/*/cgroup.procs")) or all(
        p.parent.name != json.loads(cli("inspect", "hog").stdout)[0]["Id"]
        for p in Path("/sys/fs/cgroup").glob("*/pocket/*/cgroup.procs")
    )


def test_pids_limit(image: str) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & echo $!; done; echo all-started"
    done = run("--rm", "--pids-limit", "5", image, "sh", "-c", script)
    assert "can't fork" in done.stderr and "all-started" not in done.stdout
    assert len(done.stdout.split()) == 4  # sh itself and four sleeps make five


def test_detached_logs_stop_rm_inspect(image: str) -> None:
    started = run("-d", "--name", "web", image, "sh", "-c", "echo out; echo err >&2; sleep 100")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    assert len(cid) == 64
    assert run("-d", "--name", "web", image, "true").returncode != 0  # name in use
    assert cid[:12] in cli("ps").stdout
    deadline = time.monotonic() + 10
    while "out" not in cli("logs", "web").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = cli("logs", "web")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    refused = cli("rm", "web")
    assert refused.returncode != 0 and "running" in refused.stderr
    info = json.loads(cli("inspect", "web").stdout)[0]
    assert info["State"]["Running"] and info["Id"] == cid
    t0 = time.monotonic()
    assert cli("stop", "-t", "1", "web").returncode == 0  # pid 1 ignores SIGTERM: SIGKILL
    assert 1 <= time.monotonic() - t0 < 8
    info = json.loads(cli("inspect", "web").stdout)[0]
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    assert cid[:12] not in cli("ps").stdout and cid[:12] in cli("ps", "-a").stdout
    assert cli("rm", "web").returncode == 0
    assert cli("inspect", "web").returncode != 0


def test_init_forwards_signals_and_logs_follow(image: str) -> None:
    script = 'trap "echo term; exit 7" TERM; echo ready; while true; do sleep 0.1; done'
    assert run("-d", "--init", "--name", "trapper", image, "sh", "-c", script).returncode == 0
    follower = subprocess.Popen([*CLI, "logs", "-f", "trapper"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert cli("stop", "trapper").returncode == 0
    out, _ = follower.communicate(timeout=20)
    assert out == "ready\nterm\n"
    assert json.loads(cli("inspect", "trapper").stdout)[0]["State"]["ExitCode"] == 7


def test_sigterm_to_foreground_run_reaches_the_container(image: str) -> None:
    script = 'trap "echo got-term; exit 9" TERM; echo ready; while true; do sleep 0.1; done'
    proc = subprocess.Popen(
        [*CLI, "run", "--rm", "--init", image, "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert (proc.returncode, out) == (9, "got-term\n")


def test_killed_by_signal_is_128_plus_n(image: str) -> None:
    done = run("--rm", image, "sh", "-c", "sleep 30 & kill -9 $!; wait $!")
    assert done.returncode == 137
    done = run("--rm", "--init", image, "sh", "-c", "kill -USR1 $$; sleep 5")
    assert done.returncode == 128 + signal.SIGUSR1


def test_images_rmi_and_errors(image: str, registry_server: RegistryServer) -> None:
    assert "rt/busybox" in cli("images").stdout or run("--rm", image, "true").returncode == 0
    missing = cli("pull", f"{registry_server.host}/rt/nothing:here")
    assert missing.returncode != 0 and missing.stderr.startswith("Error: ")
    assert "Traceback" not in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert run("-d", "--name", "user1", image, "sleep", "30").returncode == 0
    refused = cli("rmi", image)
    assert refused.returncode != 0 and "is using" in refused.stderr
    cli("rm", "-f", "user1")
    removed = cli("rmi", image)
    assert removed.returncode == 0 and "Deleted:" in removed.stdout
    assert cli("images", "-q").stdout == ""


def test_not_root_is_a_clear_error(image: str) -> None:
    # A new user namespace makes us uid 65534 without root's powers, while files stay as
    # readable as they were (the project may sit in a folder only root can open).
    done = subprocess.run(
        ["unshare", "--user", *CLI, "run", image, "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode != 0
    assert (
        done.stderr.strip() == "Error: running containers needs root (namespaces, mounts, cgroups)"
    )
