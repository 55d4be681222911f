"""Crafted images against the runtime: each tries to reach the host when root pulls or runs
it, and each probe is harmless (canaries in a temporary folder, read-only checks)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.runtime.cgroups import Cgroup, Limits
from registry.runtime.store import Store
from runtime.imaging import (
    Entry,
    Image,
    Layer,
    Pusher,
    busybox_entries,
    directory,
    file,
    symlink,
    tar_bytes,
)
from runtime.runner import ROOT, cli

from support.server import RegistryServer

needs_root = pytest.mark.requires(ROOT, "running containers needs root")
APPLETS = ("mknod", "dd", "cp", "chmod", "cut")


def _state(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid


def _push(registry_server: RegistryServer, pusher: Pusher, name: str,
          extra: list[Entry]) -> str:
    base = busybox_entries(APPLETS)
    pusher.image(f"hostile/{name}", "v1", Image([Layer(tar_bytes(base)),
                                                 Layer(tar_bytes(extra))]))
    return f"{registry_server.host}/hostile/{name}:v1"


@pytest.fixture(autouse=True)
def cleanup(store: Store) -> Iterator[None]:
    yield
    ids = cli("ps", "-aq").stdout.split()
    if ids:
        cli("rm", "-f", *ids)


def test_pull_never_chowns_through_a_symlink_the_layer_made(
        registry_server: RegistryServer, pusher: Pusher, store: Store, tmp_path: Path) -> None:
    """The review's layer: `x/` (06777, uid 1000), `x/shadow/`, then `x -> /etc`; with a
    canary folder standing in for /etc."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    (etc / "shadow").write_text("root:*:1:0:::::\n")
    os.chmod(etc / "shadow", 0o640)
    before = {p: _state(p) for p in (etc, etc / "shadow")}
    layer = tar_bytes([
        directory("x", 0o6777, uid=1000, gid=1000),
        directory("x/shadow", 0o6777, uid=1000, gid=1000),
        symlink("x", str(etc)),
        directory("d", 0o6777, uid=1000, gid=1000),
        symlink("d", str(etc / "shadow")),
    ])
    pusher.image("hostile/chown", "v1", Image([Layer(layer)]))
    done = cli("pull", f"{registry_server.host}/hostile/chown:v1")
    assert done.returncode == 0, done.stderr
    assert {p: _state(p) for p in before} == before


# --- device nodes ------------------------------------------------------------------------------

KMSG = Entry("kmsg", "chr", mode=0o666, devmajor=1, devminor=11)


def _openable_block_device(workdir: Path) -> tuple[int, int]:
    """A block device that root on this host can open: the disk under / (the attacker's
    prize), else the first loop device. Checked through a node made in `workdir`; the
    probes open read-only and read nothing (`dd count=0`)."""
    root = os.stat("/").st_dev
    for major, minor in ((os.major(root), os.minor(root)), (7, 0)):
        node = workdir / f"probe-{major}-{minor}"
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
        try:
            os.close(os.open(node, os.O_RDONLY))
            return major, minor
        except OSError:
            continue
        finally:
            node.unlink()
    raise AssertionError("no block device that root can open here (not even /dev/loop0)")


@needs_root
def test_device_nodes_made_or_shipped_cannot_be_opened(
        registry_server: RegistryServer, pusher: Pusher, store: Store, tmp_path: Path) -> None:
    """A host block device and /dev/kmsg (c 1:11), made with mknod in /dev and on the root
    filesystem, and shipped in a layer: opening any of them fails; /dev/null still works."""
    major, minor = _openable_block_device(tmp_path)
    disk = Entry("disk", "blk", mode=0o666, devmajor=major, devminor=minor)
    image = _push(registry_server, pusher, "devices", [KMSG, disk])
    script = (f"mknod /dev/d b {major} {minor}; mknod /tmp/d b {major} {minor}; "
              "mknod /dev/k c 1 11; mknod /tmp/k c 1 11; "
              "for f in /dev/d /tmp/d /disk /dev/k /tmp/k /kmsg /dev/null; do "
              "dd if=$f of=/dev/null bs=1 count=0 2>/dev/null && echo open || echo denied; done")
    done = cli("run", "--rm", image, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["denied"] * 6 + ["open"]


def _mount_options(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> its per-mount options, the last mount of each point winning."""
    out: dict[str, set[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


@needs_root
def test_every_writable_mount_is_nodev_and_proc_sys_is_read_only(
        registry_server: RegistryServer, pusher: Pusher, store: Store, tmp_path: Path) -> None:
    image = _push(registry_server, pusher, "mounts", [directory("data")])
    (tmp_path / "shared").mkdir()
    done = cli("run", "--rm", "-v", "nodevvol:/data", "-v", f"{tmp_path}/shared:/host", image,
               "cat", "/proc/self/mountinfo")
    assert done.returncode == 0, done.stderr
    options = _mount_options(done.stdout)
    for point in ("/", "/dev", "/data", "/host", "/etc/hostname", "/dev/shm"):
        assert "nodev" in options[point], (point, options[point])
    for point in ("/dev/null", "/dev/zero", "/dev/urandom"):
        assert "nodev" not in options[point], point
    for point in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/sys"):
        if point != "/proc/sysrq-trigger" or os.path.exists(point):  # per kernel config
            assert "ro" in options[point], (point, options[point])
    masked = [p for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/acpi")
              if os.path.exists(p)]
    assert masked and all(p in options for p in masked), masked


@needs_root
def test_devices_cgroup_denies_what_is_not_on_the_allow_list(tmp_path: Path) -> None:
    """The allow-list on its own: a process in the container's cgroup opening a block
    device node on a mount that allows devices is refused."""
    major, minor = _openable_block_device(tmp_path)
    node = str(tmp_path / "node")
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    group = Cgroup(f"test-{uuid.uuid4().hex[:12]}", Limits())
    if not group.filters_devices:
        pytest.skip("no devices cgroup here (v2): the container loses CAP_MKNOD instead")
    group.create()
    try:
        fds = group.open_procs()
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                for fd in fds:
                    os.write(fd, b"0")
                os.close(os.open("/dev/null", os.O_RDONLY))
                try:
                    os.close(os.open(node, os.O_RDONLY))
                    code = 1
                except PermissionError:
                    code = 0
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        group.remove()


# --- /proc, /sys and /dev as symlinks ----------------------------------------------------------


@needs_root
@pytest.mark.parametrize("name", ["proc", "sys", "dev"])
def test_a_symlinked_proc_sys_or_dev_is_refused(
        registry_server: RegistryServer, pusher: Pusher, store: Store, name: str) -> None:
    """With `proc -> /elsewhere`, the read-only binds of /proc/sys would land elsewhere and
    leave the real /proc/sys writable (kernel/core_pattern runs code as host root)."""
    image = _push(registry_server, pusher, f"symlinked-{name}",
                  [directory("elsewhere"), symlink(name, "/elsewhere")])
    done = cli("run", "--rm", image, "true")
    assert done.returncode == 125
    assert f"/{name} is a symlink" in done.stderr


# --- volumes seeded from the image -------------------------------------------------------------


@needs_root
def test_volume_seeding_never_reads_device_nodes_or_fifos(
        registry_server: RegistryServer, pusher: Pusher, store: Store) -> None:
    image = _push(registry_server, pusher, "seed", [
        directory("data"), file("data/kept", "hello\n"), symlink("data/link", "kept"),
        Entry("data/fifo", "fifo", mode=0o644),
        Entry("data/null", "chr", mode=0o666, devmajor=1, devminor=3),
        directory("data/sub"), Entry("data/sub/kmsg", "chr", mode=0o666, devmajor=1,
                                     devminor=11),
    ])
    done = cli("run", "--rm", "-v", "seeded:/data", image, "cat", "/data/kept")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr
    data = store.root / "volumes/seeded/_data"
    assert os.readlink(data / "link") == "kept"
    assert stat.S_ISFIFO(os.lstat(data / "fifo").st_mode)
    for node in ("null", "sub/kmsg"):
        assert not os.path.lexists(data / node), node


# --- the runtime's own folders -----------------------------------------------------------------


@needs_root
def test_state_folders_keep_other_local_users_out(
        registry_server: RegistryServer, pusher: Pusher, store: Store) -> None:
    """A set-uid root file that container root writes into its upper dir must not be
    reachable by another user of the host."""
    image = _push(registry_server, pusher, "state", [])
    old = os.umask(0)
    try:
        done = cli("run", "--name", "suid", "-v", "statevol:/data", image, "sh", "-c",
                   "cp /bin/busybox /tmp/sh && chmod 4755 /tmp/sh && "
                   "cp /bin/busybox /data/sh && chmod 4755 /data/sh")
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    cid = cli("inspect", "suid").stdout.split('"Id": "')[1].split('"')[0]
    container = store.root / "containers" / cid
    planted = [container / "upper/tmp/sh", store.root / "volumes/statevol/_data/sh"]
    assert all(p.exists() for p in planted)
    for folder in (store.root, *(store.root / s for s in ("containers", "volumes", "layers",
                                                          "blobs", "tmp")), container):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    pid = os.fork()
    if pid == 0:
        reached = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            for path in planted:
                try:
                    os.stat(path)
                    reached += 1
                except PermissionError:
                    pass
        finally:
            os._exit(10 + reached)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 10  # nobody reached either file


@needs_root
@pytest.mark.parametrize("node", [Entry("etc/passwd", "fifo", mode=0o644),
                                  Entry("etc/passwd", "chr", mode=0o644, devmajor=1,
                                        devminor=5)], ids=["fifo", "dev-zero"])
def test_a_hostile_passwd_neither_hangs_nor_floods_the_start(
        registry_server: RegistryServer, pusher: Pusher, store: Store, node: Entry) -> None:
    """pid 1 reads /etc/passwd and /etc/group to resolve the user: a fifo there must not
    block it, nor an endless device fill its memory."""
    image = _push(registry_server, pusher, f"passwd-{node.kind}", [directory("etc"), node])
    done = cli("run", "--rm", "-u", "1000:1000", image, "echo", "started", timeout=30)
    assert (done.returncode, done.stdout) == (0, "started\n"), done.stderr


@needs_root
def test_the_init_process_holds_no_descriptor_of_the_runtime(
        registry_server: RegistryServer, pusher: Pusher, store: Store) -> None:
    """pid 1 under --init is the runtime's own code, inside the container: it must keep no
    file of the host's open (a container could reach it through /proc/1/fd)."""
    image = _push(registry_server, pusher, "init-fds", [])
    assert cli("network", "create", "initfds").returncode == 0
    try:
        for extra in ([], ["--network", "initfds", "-p", "127.0.0.1::80"]):
            done = cli("run", "--rm", "--init", "-m", "64m", *extra, image, "ls", "/proc/1/fd")
            assert done.returncode == 0, done.stderr
            assert sorted(done.stdout.split(), key=int) == ["0", "1", "2"], extra
    finally:
        cli("network", "rm", "initfds")
