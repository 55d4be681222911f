"""Network namespaces, and iproute2's `ip` run inside them.

Two kinds of namespace, neither of them the host's:

- a network's own: it holds the bridge `br0` and lives as long as a bind mount of its
  nsfs file at `networks/<name>/netns` (what `ip netns add` does under /run/netns, but in
  the store, so two stores never share one); `persist` makes it, `remove` lets it go;
- a container's: anonymous, held by a file descriptor from `new_namespace` until pid 1 has
  joined it. The kernel frees it, and the veth end in it (whose peer goes with it), when
  the container's last process exits.

`ip` runs under `nsenter --net=PATH`, one batch (`ip -batch -`) per namespace: nothing in
this module ever runs `ip` in the host's namespace, so the host's interfaces, addresses,
routes and firewall are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from registry.runtime import linux
from registry.runtime.errors import RuntimeFailure

IP_TIMEOUT = 30


def new_namespace() -> int:
    """A new, empty network namespace, held by the returned (close-on-exec) descriptor.

    Made in a short-lived thread: unshare(CLONE_NEWNET) moves only the calling thread, so
    the process itself never leaves the host's namespace, and nothing is forked."""
    result: dict[str, int | OSError] = {}

    def make() -> None:
        try:
            linux.unshare(linux.CLONE_NEWNET)
            result["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=make, name="new-netns")
    thread.start()
    thread.join()
    fd = result.get("fd")
    if not isinstance(fd, int):
        raise RuntimeFailure(f"cannot create a network namespace: {result.get('error')}")
    return fd


def is_namespace(path: Path) -> bool:
    """True when `path` is a mounted namespace file (after a reboot it is an empty file)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def persist(path: Path) -> None:
    """A new network namespace that lives as long as `path` is a bind mount of it."""
    fd = new_namespace()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        linux.mount(f"/proc/self/fd/{fd}", str(path), None, linux.MS_BIND)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Unmount a namespace file made by `persist` (the kernel frees the namespace once
    nothing else holds it) and delete the file."""
    with contextlib.suppress(OSError):  # EINVAL: not mounted (any more)
        linux.umount(str(path), linux.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _tools() -> tuple[str, str]:
    nsenter, ip = shutil.which("nsenter"), shutil.which("ip")
    if not nsenter or not ip:
        raise RuntimeFailure("networks need `ip` (iproute2) and `nsenter` (util-linux)")
    return nsenter, ip


def _target(ns: Path | int) -> tuple[str, tuple[int, ...]]:
    if isinstance(ns, int):  # a descriptor: passed down, named through /proc/self/fd
        return f"/proc/self/fd/{ns}", (ns,)
    if not is_namespace(ns):  # never let nsenter fall back to anything else
        raise RuntimeFailure(f"{ns} is not a network namespace")
    return str(ns), ()


def ip_batch(ns: Path | int, commands: Sequence[str], *, check: bool = True,
             extra_fds: tuple[int, ...] = ()) -> str:
    """Run `ip -batch -` with `commands` (one per line) in the namespace `ns` (a path or a
    descriptor); with check=False every line is tried (`-force`) and failures ignored."""
    nsenter, ip = _tools()
    target, fds = _target(ns)
    argv = [nsenter, f"--net={target}", "--", ip, *([] if check else ["-force"]), "-batch", "-"]
    done = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                          text=True, timeout=IP_TIMEOUT, pass_fds=(*fds, *extra_fds),
                          check=False)
    if check and done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise RuntimeFailure(f"cannot configure the network: {message}")
    return done.stdout


def links(ns: Path | int) -> list[dict[str, Any]]:
    """The interfaces of a namespace, as `ip -j link` shows them."""
    nsenter, ip = _tools()
    target, fds = _target(ns)
    done = subprocess.run([nsenter, f"--net={target}", "--", ip, "-j", "link"],
                          capture_output=True, text=True, timeout=IP_TIMEOUT, pass_fds=fds,
                          check=False)
    if done.returncode != 0:
        raise RuntimeFailure(f"cannot list interfaces: {' '.join(done.stderr.split())}")
    parsed = json.loads(done.stdout or "[]")
    return [link for link in parsed if isinstance(link, dict)]
