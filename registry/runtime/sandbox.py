"""The container side of a run: what happens between fork and exec.

Design (a helper process per container, no long-lived daemon)::

    supervisor (the `run` CLI in the foreground, a detached process for `-d`)
      └─ stage 1: setsid, stdio, unshare(PID), fork, wait; exits with pid 1's status
           └─ stage 2 = pid 1 of the new PID namespace:
                unshare(mount, UTS, IPC[, net]) (or join a network's namespace made for
                it) -> make / rprivate -> overlay (or copy)
                at rootfs -> volumes and /etc/{hostname,hosts,resolv.conf} bind mounts
                -> /proc (with Docker's masked paths), /dev (tmpfs, nodes, pts, shm,
                mqueue), read-only /sys -> pivot_root(".", ".") and detach the old root
                -> hostname, `lo` up -> join cgroups -> no_new_privs (if asked) ->
                seccomp -> Docker's capabilities -> groups/gid/uid -> exec the command
                (or, with --init, stay as a tiny init that forwards signals and reaps
                zombies).

Stage 2 reports a failure before exec on a close-on-exec pipe as `<exit code>\\n<message>`
and exits with that code (127 not found, 126 not executable, 125 otherwise); EOF without a
message means the exec happened. Everything used after pivot_root is imported up front.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from registry.runtime import capabilities, linux, mounts, seccomp
from registry.runtime.errors import StartFailure
from registry.runtime.rootfs import makedirs_in, secure_join
from registry.runtime.spec import ExecUser, resolve_user, with_home
from registry.runtime.state import Container

MAX_ACCOUNT_FILE = 64 << 20
FORWARDED_SIGNALS = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM, signal.SIGCONT,
)


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
    keep_mknod: bool = True  # False where no devices cgroup filters what mknod makes
    seccomp_filter: bytes | None = None  # compiled before the fork; None: unconfined
    netns_fd: int = -1  # a network's container: the namespace made for it (`endpoints`)


def stage1(launch: Launch, info_fd: int) -> None:
    """Runs in the supervisor's child; never returns."""
    code = 125
    try:
        _reset_signals()
        os.setsid()
        for target, fd in enumerate(launch.stdio):
            if fd != target:
                os.dup2(fd, target)
        _close_all_but({0, 1, 2, info_fd, launch.error_fd, launch.netns_fd,
                        *launch.cgroup_fds})
        linux.unshare(linux.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os.close(info_fd)
            container_init(launch)
        if launch.netns_fd >= 0:
            os.close(launch.netns_fd)  # pid 1 holds it now
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


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor this process inherited from the supervisor (listening
    sockets of published ports, log pipes, the store's lock...) but those in `keep`: pid 1
    runs inside the container, which could reach anything it holds through /proc/1/fd."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


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
    if launch.netns_fd >= 0:  # its eth0 is configured already; /sys shows this namespace
        linux.setns(launch.netns_fd, linux.CLONE_NEWNET)
        os.close(launch.netns_fd)
    linux.unshare(flags)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    rootfs = launch.container_dir / "rootfs"
    mounts.mount_rootfs(launch.lowers, launch.container_dir, rootfs, launch.storage)
    root = str(rootfs)
    mounts.refuse_special_symlinks(root)
    user = resolve_user(c.user, _read(root, "/etc/passwd"), _read(root, "/etc/group"))
    env = with_home(c.env, user.home)
    for m in c.mounts:
        mounts.bind(root, m.source, m.destination, m.readonly, seed=bool(m.volume))
    mounts.etc_files(launch.container_dir, root)
    makedirs_in(root, c.workdir)
    mounts.mount_proc(root)
    mounts.mount_dev(root)
    mounts.mount_sys(root)
    mounts.mask(root)
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
        raise StartFailure(f"cannot enter working directory {c.workdir}: {exc.strerror}",
                           126) from None
    return user, env


def _read(root: str, path: str) -> str | None:
    """A small text file of the image (/etc/passwd, /etc/group), or None. Only a regular
    file is read, and only its first MAX_ACCOUNT_FILE bytes: a fifo there would block pid 1
    and an endless file would fill its memory."""
    try:
        fd = os.open(secure_join(root, path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(MAX_ACCOUNT_FILE).decode("utf-8", "replace")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))


def _confine(launch: Launch) -> None:
    """What every process of the container lives under, applied once in pid 1: its
    cgroups, no_new_privs when asked, the seccomp filter (loaded while CAP_SYS_ADMIN still
    allows it without no_new_privs), then Docker's default capabilities."""
    for fd in launch.cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    launch.cgroup_fds = []
    if launch.container.no_new_privileges:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if launch.seccomp_filter is not None:
        seccomp.install(launch.seccomp_filter)
    capabilities.drop_to_default(launch.last_cap, keep_mknod=launch.keep_mknod)


def _become(user: ExecUser) -> None:
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
            raise StartFailure(f'exec: "{argv0}": stat {argv0}: {(exc.strerror or "").lower()}',
                               code) from None
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


def _exec(launch: Launch, user: ExecUser, env: list[str], confined: bool = False) -> None:
    if not confined:
        _confine(launch)
    _become(user)
    argv = launch.container.argv
    path = _lookup(argv[0], env)
    _reset_signals()
    os.closerange(3, launch.error_fd)
    os.closerange(launch.error_fd + 1, 1 << 16)
    try:
        os.execve(path, argv, dict(e.split("=", 1) for e in env if "=" in e))
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        raise StartFailure(f'exec: "{argv[0]}": {os.strerror(exc.errno or 0).lower()}',
                           code) from None


def _run_init(launch: Launch, user: ExecUser, env: list[str]) -> None:
    """--init: fork the command, forward signals to it, reap every zombie; exit as it did.
    The init is confined like the command (it stays root)."""
    linux.set_process_name("init")
    _confine(launch)
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            _exec(launch, user, env, confined=True)
        except StartFailure as exc:
            _report(launch.error_fd, exc.exit_code, exc.message)
        finally:
            os._exit(125)
    os.close(launch.error_fd)

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
