"""The container side of a run: what happens between fork and exec.

Design (a helper process per container, no long-lived daemon)::

    supervisor (the `run` CLI in the foreground, a detached process for `-d`)
      └─ stage 1: setsid, stdio, unshare(PID), fork, wait; exits with pid 1's status
           └─ stage 2 = pid 1 of the new PID namespace:
                unshare(mount, UTS, IPC[, net]) -> make / rprivate -> overlay (or copy)
                at rootfs -> volumes and /etc/{hostname,hosts,resolv.conf} bind mounts
                -> /proc (with Docker's masked paths), /dev (tmpfs, nodes, pts, shm,
                mqueue), read-only /sys -> pivot_root(".", ".") and detach the old root
                -> hostname, `lo` up -> join cgroups -> Docker's capabilities ->
                groups/gid/uid -> exec the command (or, with --init, stay as a tiny init
                that forwards signals and reaps zombies).

Stage 2 reports a failure before exec on a close-on-exec pipe as `<exit code>\\n<message>`
and exits with that code (127 not found, 126 not executable, 125 otherwise); EOF without a
message means the exec happened. Everything used after pivot_root is imported up front.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from registry.runtime import capabilities, linux
from registry.runtime.errors import StartFailure
from registry.runtime.rootfs import copy_layers, makedirs_in, mount_overlay, secure_join
from registry.runtime.spec import ExecUser, resolve_user, with_home
from registry.runtime.state import Container

FORWARDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGCONT,
)
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_MASKED = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass
class Launch:
    """Everything pid 1 needs, decided before the fork."""

    container: Container
    lowers: list[Path]  # unpacked layer dirs, bottom first
    container_dir: Path
    storage: str  # "overlay", "copy" or "auto"
    cgroup_fds: list[int] = field(default_factory=list)
    error_fd: int = -1
    stdio: tuple[int, int, int] = (0, 1, 2)
    last_cap: int = 40


def stage1(launch: Launch, info_fd: int) -> None:
    """Runs in the supervisor's child; never returns."""
    code = 125
    try:
        _reset_signals()
        os.setsid()
        for target, fd in enumerate(launch.stdio):
            if fd != target:
                os.dup2(fd, target)
        for fd in set(launch.stdio) - {0, 1, 2}:
            os.close(fd)
        linux.unshare(linux.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os.close(info_fd)
            container_init(launch)
        os.write(info_fd, f"{pid}\n".encode())
        os.close(info_fd)
        os.close(launch.error_fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            code = 128 - code
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(launch.error_fd, f"125\n{exc}".encode())
    finally:
        os._exit(code)


def container_init(launch: Launch) -> None:
    """Pid 1 of the container: set everything up, then exec. Never returns."""
    try:
        user, env = _setup(launch)
        if launch.container.init:
            _run_init(launch, user, env)
        _exec(launch, user, env)
    except StartFailure as exc:
        _report(launch.error_fd, exc.exit_code, exc.message)
    except OSError as exc:
        _report(launch.error_fd, 125, f"container setup failed: {exc}")
    except BaseException as exc:  # pid 1 must never unwind into the parent's code
        _report(launch.error_fd, 125, f"container setup failed: {exc!r}")
    finally:
        os._exit(125)


def _report(fd: int, code: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"{code}\n{message}".encode())
    os._exit(code)


def _reset_signals() -> None:
    for sig in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _setup(launch: Launch) -> tuple[ExecUser, list[str]]:
    c = launch.container
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
    if c.network == "none":
        flags |= linux.CLONE_NEWNET
    linux.unshare(flags)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    rootfs = launch.container_dir / "rootfs"
    _mount_rootfs(launch, rootfs)
    root = str(rootfs)
    user = resolve_user(c.user, _read(root, "/etc/passwd"), _read(root, "/etc/group"))
    env = with_home(c.env, user.home)
    for m in c.mounts:
        _bind(root, m.source, m.destination, m.readonly, seed=bool(m.volume))
    _etc_files(launch, root)
    makedirs_in(root, c.workdir)
    _mount_proc(root)
    _mount_dev(root)
    _mount_sys(root)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
    socket.sethostname(c.hostname)
    if c.network == "none":
        _loopback_up()
    try:
        os.chdir(c.workdir)
    except OSError as exc:
        raise StartFailure(
            f"cannot enter working directory {c.workdir}: {exc.strerror}", 126
        ) from None
    return user, env


def _mount_rootfs(launch: Launch, rootfs: Path) -> None:
    d = launch.container_dir
    storage = launch.storage
    if storage in ("overlay", "auto"):
        lowers = list(reversed(launch.lowers)) or [d / "empty"]
        (d / "empty").mkdir(exist_ok=True)
        try:
            mount_overlay(lowers, d / "upper", d / "work", rootfs)
            return
        except OSError:
            if storage == "overlay":
                raise
    if not (d / "copied").exists():
        copy_layers([fs.parent for fs in launch.lowers], rootfs)
        (d / "copied").touch()
    linux.mount(str(rootfs), str(rootfs), None, linux.MS_BIND | linux.MS_REC)


def _read(root: str, path: str) -> str | None:
    try:
        with open(secure_join(root, path), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _bind(root: str, source: str, destination: str, readonly: bool, seed: bool) -> None:
    target = secure_join(root, destination)
    if os.path.isdir(source):
        if seed and os.path.isdir(target) and not os.listdir(source):
            # a new named volume starts with the image's content at its mount point
            shutil.copytree(target, source, symlinks=True, dirs_exist_ok=True)
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    if readonly:
        linux.mount(
            None, target, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC
        )


def _etc_files(launch: Launch, root: str) -> None:
    etc = secure_join(root, "/etc")
    if not os.path.isdir(etc):
        return
    for name in ("hostname", "hosts", "resolv.conf"):
        source = launch.container_dir / name
        if source.exists():
            _bind(root, str(source), f"/etc/{name}", readonly=False, seed=False)


def _mount_proc(root: str) -> None:
    proc = makedirs_in(root, "/proc")
    linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    for path in _READONLY:
        target = os.path.join(root, path.lstrip("/"))
        if os.path.exists(target):
            linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC)
            linux.mount(
                None,
                target,
                None,
                linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC,
            )


def _mask(root: str) -> None:
    for path in _MASKED:
        target = os.path.join(root, path.lstrip("/"))
        if os.path.isdir(target) and not os.path.islink(target):
            linux.mount("tmpfs", target, "tmpfs", linux.MS_RDONLY)
        elif os.path.exists(target):
            linux.mount(os.path.join(root, "dev/null"), target, None, linux.MS_BIND)


def _mount_dev(root: str) -> None:
    dev = makedirs_in(root, "/dev")
    linux.mount(
        "tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME, "mode=755,size=65536k"
    )
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)
        except OSError:
            open(path, "a").close()
            linux.mount(f"/dev/{name}", path, None, linux.MS_BIND)
    os.makedirs(os.path.join(dev, "pts"))
    linux.mount(
        "devpts",
        os.path.join(dev, "pts"),
        "devpts",
        linux.MS_NOSUID | linux.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.makedirs(os.path.join(dev, "shm"))
    linux.mount(
        "shm",
        os.path.join(dev, "shm"),
        "tmpfs",
        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
        "mode=1777,size=65536k",
    )
    os.makedirs(os.path.join(dev, "mqueue"))
    with contextlib.suppress(OSError):
        linux.mount(
            "mqueue",
            os.path.join(dev, "mqueue"),
            "mqueue",
            linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
        )
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ):
        os.symlink(target, os.path.join(dev, name))
    _mask(root)


def _mount_sys(root: str) -> None:
    sys_dir = makedirs_in(root, "/sys")
    flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    try:
        linux.mount("sysfs", sys_dir, "sysfs", flags)
    except OSError:
        linux.mount("/sys", sys_dir, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, sys_dir, None, linux.MS_BIND | linux.MS_REMOUNT | flags)
    firmware = os.path.join(sys_dir, "firmware")
    if os.path.isdir(firmware):
        linux.mount("tmpfs", firmware, "tmpfs", linux.MS_RDONLY)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))


def _drop_privileges(launch: Launch, user: ExecUser) -> None:
    for fd in launch.cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    capabilities.drop_to_default(launch.last_cap)
    os.setgroups(sorted({user.gid, *user.groups}))  # Docker adds the primary group too
    os.setgid(user.gid)
    os.setuid(user.uid)


def _lookup(argv0: str, env: list[str]) -> str:
    """Find the executable as runc (Go's exec.LookPath) does, with Docker's messages."""
    if "/" in argv0:
        try:
            st = os.stat(argv0)
        except OSError as exc:
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            raise StartFailure(
                f'exec: "{argv0}": stat {argv0}: {(exc.strerror or "").lower()}', code
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise StartFailure(f'exec: "{argv0}": is a directory', 126)
        if not st.st_mode & 0o111:
            raise StartFailure(f'exec: "{argv0}": permission denied', 126)
        return argv0
    path = next((e[5:] for e in env if e.startswith("PATH=")), "")
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", argv0)
        with contextlib.suppress(OSError):
            st = os.stat(candidate)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return candidate
    raise StartFailure(f'exec: "{argv0}": executable file not found in $PATH', 127)


def _exec(launch: Launch, user: ExecUser, env: list[str]) -> None:
    _drop_privileges(launch, user)
    argv = launch.container.argv
    path = _lookup(argv[0], env)
    _reset_signals()
    os.closerange(3, launch.error_fd)
    os.closerange(launch.error_fd + 1, 1 << 16)
    try:
        os.execve(path, argv, dict(e.split("=", 1) for e in env if "=" in e))
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        raise StartFailure(
            f'exec: "{argv[0]}": {os.strerror(exc.errno or 0).lower()}', code
        ) from None


def _run_init(launch: Launch, user: ExecUser, env: list[str]) -> None:
    """--init: fork the command, forward signals to it, reap every zombie; exit as it did."""
    linux.set_process_name("init")
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            _exec(launch, user, env)
        except StartFailure as exc:
            _report(launch.error_fd, exc.exit_code, exc.message)
        finally:
            os._exit(125)
    os.close(launch.error_fd)
    for fd in launch.cgroup_fds:
        os.close(fd)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
