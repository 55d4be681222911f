"""Seccomp: the system calls a container may make, as Docker restricts them by default.

`DEFAULT_PROFILE` is an allow-list in Docker's profile format (the same JSON that
`--security-opt seccomp=profile.json` takes): everything not listed fails with EPERM, so
container root cannot call `unshare` for a new user namespace, `keyctl`, `bpf`,
`perf_event_open`, `kexec_load`, `mount`, `ptrace` of the host and the other calls most
escapes start from. Rules that Docker grants only with capabilities a default container
lacks (CAP_SYS_ADMIN and friends) are left out; `clone` is allowed without namespace
flags, and `clone3`, whose flags a filter cannot see, answers ENOSYS so libc falls back.

The filter is compiled to BPF with libseccomp (libseccomp2, which apt itself depends on)
on the host side, before the container exists: pid 1 never loads a library once it has
pivoted into the image (whose files are hostile). It installs the program with prctl while
it still has CAP_SYS_ADMIN (so without forcing no_new_privs, and set-id programs in the
image keep working, as under Docker); everything the container runs inherits it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.runtime import linux
from registry.runtime.capabilities import DOCKER_DEFAULT
from registry.runtime.errors import RuntimeFailure

UNCONFINED = "unconfined"

_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents
getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents
io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead
readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32
setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs
statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
process_vm_readv process_vm_writev ptrace
"""

AF_VSOCK = 40
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000


def _rule(names: Iterable[str], **extra: Any) -> dict[str, Any]:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **extra}


DEFAULT_PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": errno.EPERM,
    "syscalls": [
        _rule(_ALLOWED.split()),
        _rule(["socket"], args=[{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]),
        *(_rule(["personality"], args=[{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}])
          for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
        _rule(["arch_prctl", "modify_ldt"], includes={"arches": ["amd64", "x32", "x86"]}),
        _rule(["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
               "cacheflush", "set_tls"], includes={"arches": ["arm", "arm64"]}),
        _rule(["riscv_flush_icache"], includes={"arches": ["riscv64"]}),
        _rule(["chroot"], includes={"caps": ["CAP_SYS_CHROOT"]}),
        _rule(["clone"], args=[{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ"}]),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ],
}

# libseccomp's names and numbers
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_INSTRUCTION_BYTES = 8  # struct sock_filter
_NR_SCMP_ERROR = -1
_COMPARE = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
            "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# Docker's arch names for this machine, and the 32-bit ABIs its programs may also use.
_ARCHES = {"x86_64": (["amd64"], ["x86", "x32"]), "aarch64": (["arm64"], ["arm"]),
           "riscv64": (["riscv64"], []), "s390x": (["s390x"], ["s390"]),
           "ppc64le": (["ppc64le"], [])}
_LIBSECCOMP_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "x86": "x86", "x32": "x32",
                    "arm": "arm", "s390": "s390", "s390x": "s390x", "riscv64": "riscv64",
                    "ppc64le": "ppc64le"}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(RuntimeFailure):
    """libseccomp is missing, or the profile cannot be compiled."""

    exit_code = 125


@dataclass(frozen=True)
class SecurityOptions:
    """What `--security-opt` asked for. `seccomp` is "default", "unconfined" or
    "custom" (then `profile` is the profile itself, read at `run`)."""

    seccomp: str = "default"
    profile: dict[str, Any] | None = None
    no_new_privileges: bool = False


def parse_security_opts(options: Iterable[str]) -> SecurityOptions:
    """Docker's spellings: `seccomp=unconfined`, `seccomp=<profile.json>`,
    `no-new-privileges[=true|false]` (and the older `:` for `=`)."""
    seccomp, profile, nnp = "default", None, False
    for option in options:
        key, sep, value = option.replace(":", "=", 1).partition("=")
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise RuntimeFailure(f"invalid --security-opt {option!r}: expected true or false")
            nnp = value != "false"
        elif key == "seccomp" and sep and value:
            profile = _load_profile(value)
            seccomp = "unconfined" if profile is None else "custom"
        else:
            raise RuntimeFailure(
                f"invalid --security-opt {option!r} (supported: seccomp=unconfined, "
                "seccomp=<profile.json>, no-new-privileges)"
            )
    return SecurityOptions(seccomp, profile, nnp)


def _load_profile(spec: str) -> dict[str, Any] | None:
    """`unconfined` (None), else a profile file in Docker's format, read now so that the
    container keeps what it was started with."""
    if spec == UNCONFINED:
        return None
    try:
        doc = json.loads(Path(spec).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read seccomp profile {spec}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("syscalls", []), list):
        raise RuntimeFailure(f"seccomp profile {spec} is not in Docker's format")
    return doc


def _action(rule: Mapping[str, Any], default_errno: int) -> int:
    name = rule.get("action") or rule.get("defaultAction")
    if name == "SCMP_ACT_ALLOW":
        return _ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | (int(rule.get("errnoRet", default_errno)) & 0xFFFF)
    raise SeccompUnavailable(f"seccomp action {name!r} is not supported")


def _applies(rule: Mapping[str, Any], arches: list[str]) -> bool:
    """Docker's `includes`/`excludes` on arches and capabilities (a container has the
    default capabilities)."""
    caps = set(DOCKER_DEFAULT)
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("arches") and not set(includes["arches"]) & set(arches):
        return False
    if includes.get("caps") and not set(includes["caps"]) <= caps:
        return False
    if set(excludes.get("arches") or []) & set(arches):
        return False
    return not set(excludes.get("caps") or []) & caps


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    try:
        lib = ctypes.CDLL(name or "libseccomp.so.2", use_errno=True)
    except OSError:
        raise SeccompUnavailable(
            "libseccomp is not installed (Debian: libseccomp2); run with "
            "--security-opt seccomp=unconfined to do without"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    return lib


def compile_filter(profile: Mapping[str, Any]) -> bytes:
    """`profile` (Docker's format) as a BPF program for this machine, ready for `install`."""
    lib = _libseccomp()
    default_errno = int(profile.get("defaultErrnoRet", errno.EPERM))
    native, extra = _ARCHES.get(platform.machine(), ([platform.machine()], []))
    ctx = lib.seccomp_init(_action(profile, default_errno))
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for arch in extra:
            token = lib.seccomp_arch_resolve_name(_LIBSECCOMP_ARCH[arch].encode())
            if token:
                _check(lib.seccomp_arch_add(ctx, token), f"seccomp_arch_add {arch}",
                       ok=(-errno.EEXIST,))
        for rule in profile.get("syscalls", []):
            if not _applies(rule, native + extra):
                continue
            action = _action(rule, default_errno)
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(1, len(args)))()
            for i, arg in enumerate(args):
                cmps[i] = _ArgCmp(int(arg["index"]), _COMPARE[arg["op"]], int(arg["value"]),
                                  int(arg.get("valueTwo", 0)))
            for syscall in rule.get("names", []):
                number = lib.seccomp_syscall_resolve_name(syscall.encode())
                if number == _NR_SCMP_ERROR:
                    continue  # a call this libseccomp does not know: nothing to allow
                # EACCES: the rule's action is the default one, so it is already in force
                _check(lib.seccomp_rule_add_array(ctx, action, number, len(args), cmps),
                       f"seccomp rule for {syscall}", ok=(-errno.EEXIST, -errno.EACCES))
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            program = b""
            while chunk := os.read(fd, 1 << 16):
                program += chunk
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % _INSTRUCTION_BYTES:
        raise SeccompUnavailable("libseccomp exported no filter")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Load a compiled filter into this process: prctl(PR_SET_SECCOMP, FILTER, &prog).
    Needs CAP_SYS_ADMIN or no_new_privs; loads no library."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _INSTRUCTION_BYTES, ctypes.addressof(buffer))
    linux.prctl_pointer(linux.PR_SET_SECCOMP, linux.SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def _check(result: int, what: str, ok: tuple[int, ...] = ()) -> None:
    if result < 0 and result not in ok:
        raise SeccompUnavailable(f"{what}: {errno.errorcode.get(-result, result)}")
