"""A private Docker daemon for client tests, and a busybox image to push with it.

`DockerDaemon` runs its own `dockerd` with every path of its own under one short temporary
folder (the unix sockets inside must fit in 108 bytes):

    <root>/
        daemon.json     empty config, so the host's /etc/docker/daemon.json is not read
        data/           --data-root: images, layers, containers
        exec/           --exec-root: the managed containerd, its socket, network namespaces
        docker.sock     -H unix://...
        dockerd.pid     --pidfile
        dockerd.log     the daemon's output, shown when it fails to start
        config/         DOCKER_CONFIG for the CLI, so no host credentials or contexts leak in

It runs in a network namespace of its own (`unshare --net`), so it has nothing of the host's
networking to touch: with `--bridge=none` dockerd deletes any `docker0` bridge it finds,
which in the host's namespace was the host's own Docker's (whose `docker run` then failed
with "could not find bridge docker0"). No iptables rules either; containers run with
`--network none`. The registries under test listen on the host's 127.0.0.1, and pushes
and pulls are made by the daemon: every `127.0.0.1:PORT` (or `localhost:PORT`) named in a
`docker()` command is relayed into the daemon's namespace first (`support.netrelay`;
`expose(port)` for one a command does not name, such as a token realm elsewhere).
Registries on 127.0.0.0/8 are insecure by default for dockerd, so
`docker push 127.0.0.1:PORT/name:tag` speaks plain HTTP without configuration.

The pytest plugin part is the session fixture `dockerd`; enable it with
`pytest_plugins = ["support.dockerd"]` in the top conftest.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ci import in_ci, require
from support.netrelay import LoopbackRelay

__all__ = ["in_ci"]  # where the client tests have long imported it from

DOCKERD_CANDIDATES = ("/usr/sbin/dockerd", "/usr/bin/dockerd")
# The CLI that ships with the daemon first (Debian's docker.io), so both speak the same API.
DOCKER_CLI_CANDIDATES = ("/usr/bin/docker",)
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
STORAGE_DRIVERS = ("overlay2", "vfs")
UNIX_SOCKET_MAX = 107
# A registry on the loopback named in a docker command: `127.0.0.1:5000/app:v1`, `localhost:5000`.
_LOOPBACK_PORT = re.compile(r"(?<![\w.-])(127(?:\.\d{1,3}){3}|localhost):(\d{1,5})(?![\d])")


def find_dockerd() -> str | None:
    found = shutil.which("dockerd")
    if found:
        return found
    return next((path for path in DOCKERD_CANDIDATES if os.access(path, os.X_OK)), None)


def find_docker_cli() -> str | None:
    override = os.environ.get("POCKET_DOCKER_CLI")
    if override:
        return override
    for path in DOCKER_CLI_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("docker")


class DockerCommandError(subprocess.CalledProcessError):
    """A docker CLI call that failed; its text carries what the CLI printed."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class DockerDaemonError(RuntimeError):
    """The private daemon could not be started."""


class DockerDaemon:
    """One private `dockerd`: `start()`, run CLI commands with `docker()`, then `stop()`."""

    def __init__(
        self, dockerd: str, docker_cli: str, storage_drivers: tuple[str, ...] = STORAGE_DRIVERS
    ) -> None:
        self.dockerd = dockerd
        self.docker_cli = docker_cli
        self.storage_drivers = storage_drivers
        self.root: Path | None = None
        self.storage_driver: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.relay: LoopbackRelay | None = None

    # -- paths -------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.root is None:
            raise DockerDaemonError("daemon not started")
        return self.root / name

    @property
    def host(self) -> str:
        return f"unix://{self._path('docker.sock')}"

    @property
    def log_path(self) -> Path:
        return self._path("dockerd.log")

    @property
    def namespace(self) -> str:
        # containerd namespace: keeps us apart should dockerd pick up a system containerd.
        # containerd allows only [A-Za-z0-9] runs joined by single [._-], and mkdtemp's
        # random part may hold "_" right after the "-": keep the alphanumerics only.
        return "pocket-" + "".join(c for c in self._path("").name if c.isalnum())

    @property
    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
        }
        env.update(
            DOCKER_HOST=self.host,
            DOCKER_CONFIG=str(self._path("config")),
            DOCKER_BUILDKIT="0",  # the classic builder needs no buildx plugin
            DOCKER_CLI_HINTS="false",
        )
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start the daemon with the first storage driver that works; wait until it answers."""
        if self.process is not None:
            return
        self.root = Path(tempfile.mkdtemp(prefix="dockerd-", dir=_short_tempdir()))
        atexit.register(self.stop)
        self._path("config").mkdir()
        self._path("etc-docker/certs.d").mkdir(parents=True)
        self._path("daemon.json").write_text("{}\n")
        failures: list[str] = []
        for driver in self.storage_drivers:
            try:
                self._launch(driver, timeout)
            except DockerDaemonError as exc:
                failures.append(f"--storage-driver {driver}: {exc}")
                self._terminate()
                self._cleanup_leftovers()
                shutil.rmtree(self._path("data"), ignore_errors=True)
                continue
            self.storage_driver = driver
            return
        self.stop()
        raise DockerDaemonError("dockerd did not start:\n" + "\n\n".join(failures))

    def _launch(self, driver: str, timeout: float) -> None:
        # A network namespace of its own, with its loopback up (for the relayed ports), and a
        # mount namespace where /etc/docker is a folder of ours: dockerd reads registry CAs
        # from /etc/docker/certs.d only, and writes its key.json there.
        script = 'ip link set lo up && mount --bind "$1" /etc/docker && shift && exec "$@"'
        if not Path("/etc/docker").is_dir():  # no place to mount it on: no certs.d then
            script = 'ip link set lo up && shift && exec "$@"'
        isolated = [
            "unshare", "--net", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", str(self._path("etc-docker")),
        ]  # fmt: skip
        command = [
            *isolated,
            self.dockerd,
            "--config-file",
            str(self._path("daemon.json")),
            "--data-root",
            str(self._path("data")),
            "--exec-root",
            str(self._path("exec")),
            "--pidfile",
            str(self._path("dockerd.pid")),
            "--host",
            self.host,
            "--storage-driver",
            driver,
            "--containerd-namespace",
            self.namespace,
            "--containerd-plugins-namespace",
            f"{self.namespace}-plugins",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not dockerd
            )
        self.relay = LoopbackRelay(f"/proc/{self.process.pid}/ns/net")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DockerDaemonError(
                    f"exited with {self.process.returncode}:\n{self._log_tail()}"
                )
            try:
                answer = self.docker("info", "--format", "{{.Driver}}", check=False, timeout=10)
            except subprocess.TimeoutExpired:
                continue
            if answer.returncode == 0 and answer.stdout.strip() == driver:
                return
            if answer.returncode == 0:
                raise DockerDaemonError(f"came up with driver {answer.stdout.strip()!r}")
            time.sleep(0.2)
        raise DockerDaemonError(f"no answer within {timeout:.0f}s:\n{self._log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """Stop the daemon, then whatever it left behind: shims, mounts, the folder."""
        if self.root is None:
            return
        self._terminate(timeout)
        self._cleanup_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        atexit.unregister(self.stop)

    def _terminate(self, timeout: float = 30) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def _cleanup_leftovers(self) -> None:
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self._leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount_point in self._leftover_mounts():
            subprocess.run(
                ["umount", "-l", mount_point], capture_output=True, timeout=10, check=False
            )

    def _leftover_pids(self) -> list[int]:
        """containerd and its shims that belong to this daemon (they outlive dockerd)."""
        root = str(self._path(""))
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            ours = any(arg == root or f"{root}/" in arg for arg in args) or any(
                flag == "-namespace" and value == self.namespace
                for flag, value in itertools.pairwise(args)
            )
            if ours:
                pids.append(int(entry.name))
        return pids

    def _leftover_mounts(self) -> list[str]:
        root = str(self._path(""))
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].encode().decode("unicode_escape")
                if point == root or point.startswith(f"{root}/"):
                    points.append(point)
        return sorted(points, key=len, reverse=True)

    def _log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the CLI -----------------------------------------------------------------------------

    def expose(self, port: int, address: str = "127.0.0.1", target: str | None = None) -> None:
        """Make the host's `target:port` (default: `address:port`) reachable from the daemon
        at `address:port`."""
        if self.relay is None:
            raise DockerDaemonError("daemon not started")
        self.relay.expose(port, address, target)

    def add_address(self, address: str) -> None:
        """Give the daemon's namespace `address` (on its loopback), e.g. a non-loopback
        address for a registry that docker must reach over TLS."""
        assert self.process is not None
        subprocess.run(
            ["nsenter", f"--net=/proc/{self.process.pid}/ns/net",
             "ip", "addr", "replace", f"{address}/32", "dev", "lo"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def trust(self, registry: str, ca_pem: bytes) -> None:
        """Have the daemon trust `ca_pem` for the registry at `registry` (HOST:PORT), as
        /etc/docker/certs.d/HOST:PORT/ca.crt does for the system's dockerd."""
        require(Path("/etc/docker").is_dir(), "no /etc/docker to give the daemon a certs.d on")
        folder = self._path("etc-docker/certs.d") / registry
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.crt").write_bytes(ca_pem)

    def docker(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; with `check`, a failure raises with output.
        The loopback registries it names are made reachable from the daemon first."""
        for arg in args:
            for match in _LOOPBACK_PORT.finditer(arg):
                address = "127.0.0.1" if match[1] == "localhost" else match[1]
                self.expose(int(match[2]), address)
        command = [self.docker_cli, *args]
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise DockerCommandError(result.returncode, command, result.stdout, result.stderr)
        return result


def _short_tempdir() -> str:
    base = tempfile.gettempdir()
    # <base>/dockerd-XXXXXXXX/exec/containerd/containerd-debug.sock must stay under the limit.
    return base if len(base) + 60 < UNIX_SOCKET_MAX else "/tmp"


# -- the pytest fixture ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerDaemon]:
    """A started private daemon for the session; skipped only off CI when dockerd is absent."""
    binary, cli = find_dockerd(), find_docker_cli()
    missing = "dockerd" if binary is None else "the docker CLI"
    require(binary is not None and cli is not None, f"{missing} not found (package docker.io)")
    assert binary is not None and cli is not None
    daemon = DockerDaemon(binary, cli)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


# -- a busybox image ---------------------------------------------------------------------------

BUSYBOX_SYMLINKS = ("sh", "echo", "ls", "rm", "mkdir", "pwd", "test")
BUSYBOX_HARDLINKS = ("cat",)
GREETING = "hello from pocket"
WORKDIR = "/work"


@dataclass(frozen=True)
class BusyboxImagePlan:
    """What `build_busybox_image` puts in each layer, and so what the image prints when run.

    Layer 1 is a root filesystem (busybox with symlinked and hardlinked applets, and a random
    /etc/build-id so that no two builds share a layer). Each later
    layer writes /layers/<n>.txt; with three layers or more the last one also deletes the
    file of layer 2, so pulling it must apply a whiteout.
    """

    layers: int

    @property
    def files(self) -> dict[str, str]:
        """Files under /layers in the final image, path to content."""
        kept = {
            f"/layers/{n}.txt": f"layer {n} of {self.layers}\n" for n in range(2, self.layers + 1)
        }
        if self.layers >= 3:
            del kept["/layers/2.txt"]
        return kept

    @property
    def deleted(self) -> list[str]:
        return ["/layers/2.txt"] if self.layers >= 3 else []

    def dockerfile(self) -> str:
        lines = ["FROM scratch", "ADD rootfs.tar /"]
        for n in range(2, self.layers + 1):
            step = f'echo "layer {n} of {self.layers}" > /layers/{n}.txt'
            if n == self.layers and self.deleted:
                step = f"rm {' '.join(self.deleted)} && {step}"
            lines.append(f"RUN {step}")
        lines += [
            f'ENV GREETING="{GREETING}"',
            f"WORKDIR {WORKDIR}",  # exists in layer 1, so it adds no layer
            'CMD ["/bin/sh", "-c", "echo \\"$GREETING in $(pwd)\\"; cat /layers/*.txt; '
            'ls /layers"]',
        ]
        return "\n".join(lines) + "\n"

    def expected_output(self) -> str:
        """What `docker run` of the image prints."""
        files = self.files
        names = sorted(Path(path).name for path in files)
        return (
            f"{GREETING} in {WORKDIR}\n"
            + "".join(files[f"/layers/{name}"] for name in names)
            + "".join(f"{name}\n" for name in names)
        )


def find_busybox() -> Path:
    for candidate in (shutil.which("busybox"), *BUSYBOX_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK) and _is_static_elf(Path(candidate)):
            return Path(candidate)
    raise FileNotFoundError("no statically linked busybox (Debian package busybox-static)")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF binary without a PT_INTERP header: it runs in an empty image."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for index in range(phnum):
        start = phoff + index * phentsize
        if int.from_bytes(data[start : start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def _rootfs_tar(busybox: Path, build_id: str) -> bytes:
    """Layer 1: busybox, its applets as symlinks and hardlinks, and a few folders.

    `build_id` makes every build's layers new: no build cache hit in the daemon, and no blob a
    client's cache (skopeo's blob-info cache) has seen in an earlier run.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 1_700_000_000, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder in ("bin", "etc", "layers", "tmp", WORKDIR.strip("/")):
            add(folder, tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for applet in BUSYBOX_SYMLINKS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        for applet in BUSYBOX_HARDLINKS:
            add(f"bin/{applet}", tarfile.LNKTYPE, 0o755, link="bin/busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/:/bin/sh\n")
        add("etc/build-id", tarfile.REGTYPE, 0o644, f"{build_id}\n".encode())
    return buffer.getvalue()


def build_busybox_image(daemon: DockerDaemon, tag: str, layers: int = 3) -> str:
    """Build `BusyboxImagePlan(layers)` FROM scratch into the daemon as `tag`; return `tag`."""
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    plan = BusyboxImagePlan(layers)
    with tempfile.TemporaryDirectory(prefix="busybox-context-") as context:
        Path(context, "rootfs.tar").write_bytes(_rootfs_tar(find_busybox(), uuid.uuid4().hex))
        Path(context, "Dockerfile").write_text(plan.dockerfile())
        daemon.docker("build", "--force-rm", "--tag", tag, context, timeout=300)
    count = daemon.docker("image", "inspect", "--format", "{{len .RootFS.Layers}}", tag)
    if int(count.stdout) != layers:
        raise AssertionError(f"{tag} has {count.stdout.strip()} layers, wanted {layers}")
    return tag
