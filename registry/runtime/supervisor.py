"""The supervisor: holds one container from start to exit, records its status and logs.

In the foreground the `run` command is the supervisor, and SIGINT/SIGTERM/... it receives
are forwarded to the container's pid 1 (a second Ctrl-C kills the container: run exits
130). With `-d`, `run` starts `python -m registry.runtime.supervisor ROOT ID FD` in a new
session and waits for one line on FD (`ok` or `<code> <message>`). Either way the
supervisor copies the container's stdout and stderr into `container.log` (JSON lines, as
Docker's json-file driver), and in the foreground to its own stdout and stderr too, until
the container exits; only a foreground `--rm` container shares the terminal's stdio
directly, since nothing would be kept. Lifecycle: prepare (cgroups, /etc files) -> start
(fork, learn pid 1 and whether exec worked) -> wait (record exit code, OOM) -> finish
(cgroups gone, `--rm`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from registry.runtime import capabilities, seccomp
from registry.runtime.cgroups import Cgroup, Limits
from registry.runtime.endpoints import Plumbing
from registry.runtime.errors import NotPrivileged, RuntimeFailure, StartFailure
from registry.runtime.sandbox import FORWARDED_SIGNALS, Launch, stage1
from registry.runtime.state import Container, ContainerStore, process_start
from registry.runtime.store import Store

LOG_NAME = "container.log"
_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise NotPrivileged("running containers needs root (namespaces, mounts, cgroups)")
    if not Path("/proc/self/ns/pid").exists():
        raise NotPrivileged("this kernel has no namespaces")


def _seccomp_filter(c: Container) -> bytes | None:
    if c.seccomp == "unconfined":
        return None
    profile = c.seccomp_profile if c.seccomp == "custom" else seccomp.DEFAULT_PROFILE
    return seccomp.compile_filter(profile or {})


class Supervisor:
    def __init__(self, store: Store, container: Container) -> None:
        self.store = store
        self.containers = ContainerStore(store)
        self.container = container
        self.dir = self.containers.dir(container.id)
        self.cgroup = Cgroup(container.id, Limits(container.memory, container.pids_limit,
                                                  container.cpus))
        self.stage1_pid = 0
        self.plumbing = Plumbing(store, container)  # a network's veth, hosts, ports
        self._log_pipes: list[tuple[int, str]] = []
        self._tee = False  # copy the output to our stdout/stderr as well as to the log
        self._pending: list[int] = []
        self._interrupts = 0
        self._own_pid = os.getpid()

    # --- prepare and start ----------------------------------------------------------------

    def _prepare(self) -> None:
        c = self.container
        (self.dir / "hostname").write_text(f"{c.hostname}\n")
        (self.dir / "hosts").write_text(_HOSTS + f"127.0.1.1\t{c.hostname}\n")
        resolv = ""
        if c.network != "none":
            with contextlib.suppress(OSError):
                resolv = Path("/etc/resolv.conf").read_text()
        (self.dir / "resolv.conf").write_text(resolv)
        try:
            self.cgroup.create()
        except OSError as exc:
            raise RuntimeFailure(f"cannot set up the container's cgroups: {exc}") from None
        try:
            self.plumbing.setup()
        except BaseException:
            self.finish()
            raise

    def start(self) -> None:
        """Fork the container; return once its command runs (or raise StartFailure)."""
        check_privileges()
        c = self.container
        self._prepare()
        launch = Launch(
            container=c,
            lowers=[self.store.layer_dir(d) / "fs" for d in c.diff_ids]
            + [Path(p) for p in c.extra_lowers],
            container_dir=self.dir,
            storage=os.environ.get("POCKET_RUNTIME_STORAGE", "auto"),
            cgroup_fds=self.cgroup.open_procs(),
            last_cap=capabilities.last_cap(),
            keep_mknod=self.cgroup.filters_devices,
            seccomp_filter=_seccomp_filter(c),
            netns_fd=self.plumbing.netns_fd,
        )
        stdin = os.open("/dev/null", os.O_RDONLY) if not c.interactive else 0
        if c.detached or not c.auto_remove:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            self._log_pipes = [(out_r, "stdout"), (err_r, "stderr")]
            self._tee = not c.detached
            launch.stdio = (stdin, out_w, err_w)
        else:
            launch.stdio = (stdin, 1, 2)
        info_r, info_w = os.pipe()
        error_r, error_w = os.pipe()
        launch.error_fd = error_w
        pid = os.fork()
        if pid == 0:
            stage1(launch, info_w)  # closes every descriptor it was not handed
        self.stage1_pid = pid
        self.plumbing.started()
        os.close(info_w)
        os.close(error_w)
        for fd in launch.cgroup_fds:
            os.close(fd)
        if stdin != 0:
            os.close(stdin)
        if self._log_pipes:
            os.close(launch.stdio[1])
            os.close(launch.stdio[2])
        with os.fdopen(info_r, "rb") as info:
            line = info.read().strip()
        with os.fdopen(error_r, "rb") as errors:
            failure = errors.read().decode("utf-8", "replace")
        c.pid = int(line) if line else 0
        c.pid_start = process_start(c.pid)
        c.supervisor_pid = os.getpid()
        c.started_at = time.time()
        c.status = "running"
        if failure:
            code_text, _, message = failure.partition("\n")
            self._reap()
            c.status, c.error = "exited", message
            c.exit_code = int(code_text) if code_text.isdigit() else 125
            c.finished_at = time.time()
            with contextlib.suppress(FileNotFoundError):
                self.containers.save(c)
            self.finish()
            raise StartFailure(message, c.exit_code)
        with contextlib.suppress(FileNotFoundError):
            self.containers.save(c)
        for signum in self._pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signum)

    # --- wait and finish ------------------------------------------------------------------

    def forward_signals(self) -> None:
        """Install before `start`: signals that come before pid 1 exists wait for it."""

        def forward(signum: int, _frame: FrameType | None) -> None:
            if os.getpid() != self._own_pid:
                return  # a just-forked child, before it resets its handlers
            if signum == signal.SIGINT:
                self._interrupts += 1
                if self._interrupts > 1:
                    signum = signal.SIGKILL  # the second Ctrl-C: no more waiting
            if not self.container.pid:
                self._pending.append(signum)
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.container.pid, signum)

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, forward)

    def _pump_logs(self) -> None:
        """Copy the container's output into the log (and, in the foreground, to our own
        stdout and stderr, byte for byte) until both pipes close."""
        selector = selectors.DefaultSelector()
        for fd, stream in self._log_pipes:
            selector.register(fd, selectors.EVENT_READ, stream)
        terminal = {"stdout": 1, "stderr": 2} if self._tee else {}
        with open(self.dir / LOG_NAME, "a", encoding="utf-8", errors="surrogateescape") as log:
            open_fds = len(self._log_pipes)
            while open_fds:
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        open_fds -= 1
                        continue
                    if key.data in terminal and not _write_all(terminal[key.data], chunk):
                        del terminal[key.data]  # the terminal went away; keep logging
                    now = datetime.datetime.now(datetime.UTC).isoformat()
                    text = chunk.decode("utf-8", "surrogateescape")
                    log.write(json.dumps({"log": text, "stream": key.data, "time": now}) + "\n")
                    log.flush()
        selector.close()

    def _reap(self) -> int:
        while True:
            try:
                _, status = os.waitpid(self.stage1_pid, 0)
                break
            except ChildProcessError:
                return 255
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code

    def wait(self) -> int:
        """Block until the container exits; record and return its exit code."""
        if self._log_pipes:
            self._pump_logs()
        code = self._reap()
        c = self.container
        c.status, c.exit_code, c.finished_at = "exited", code, time.time()
        c.oom_killed = self.cgroup.limits.memory is not None and self.cgroup.oom_killed()
        with contextlib.suppress(FileNotFoundError):  # `rm -f` got there first
            self.containers.save(c)
        self.finish()
        return 130 if self._interrupts > 1 else code

    def finish(self) -> None:
        self.plumbing.teardown()
        self.cgroup.remove()
        if self.container.auto_remove:
            self.containers.remove(self.container.id)


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything to `fd`; False once it cannot take more (closed, broken pipe)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError:
            return False
    return True


def run_detached_supervisor(root: str, container_id: str, notify_fd: int) -> int:
    """Entry of the detached supervisor process."""
    store = Store(Path(root))
    container = ContainerStore(store).load(container_id)
    supervisor = Supervisor(store, container)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        supervisor.start()
    except RuntimeFailure as exc:
        os.write(notify_fd, f"{exc.exit_code} {exc.message}\n".encode())
        os.close(notify_fd)
        return exc.exit_code
    except BaseException as exc:
        os.write(notify_fd, f"125 {exc}\n".encode())
        os.close(notify_fd)
        return 125
    os.write(notify_fd, b"ok\n")
    os.close(notify_fd)
    return supervisor.wait()


if __name__ == "__main__":
    sys.exit(run_detached_supervisor(sys.argv[1], sys.argv[2], int(sys.argv[3])))
