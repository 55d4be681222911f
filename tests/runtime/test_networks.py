"""Networks and published ports, end to end: containers on one network reach each other by
name and alias, and nothing else; the host reaches only published ports; every piece of
plumbing goes away with its container, even after a supervisor was killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.runtime import linux, netns
from registry.runtime.state import ContainerStore
from registry.runtime.store import Store
from runtime.imaging import Image, Layer, Pusher, busybox_entries, directory, file, tar_bytes
from runtime.runner import CLI, PROJECT, ROOT, cli

from support.server import RegistryServer, free_port

pytestmark = pytest.mark.requires(ROOT, "running containers needs root")
PAGE = "hello from web\n"
APPLETS = ("httpd", "wget", "nc", "ip", "nsenter", "cut")


@pytest.fixture(scope="module")
def image(registry_server: RegistryServer, pusher: Pusher) -> str:
    """Busybox with httpd, wget, nc and ip, and a page to serve at /www/index.html."""
    entries = [*busybox_entries(APPLETS), directory("www"), file("www/index.html", PAGE)]
    pusher.image("net/busybox", "v1", Image([Layer(tar_bytes(entries))]))
    return f"{registry_server.host}/net/busybox:v1"


@pytest.fixture(autouse=True)
def cleanup(store: Store) -> Iterator[None]:
    yield
    ids = cli("ps", "-aq").stdout.split()
    if ids:
        cli("rm", "-f", *ids)
    names = cli("network", "ls", "-q").stdout.split()
    if names:
        assert cli("network", "rm", *names).returncode == 0


def network(name: str, *flags: str) -> str:
    done = cli("network", "create", *flags, name)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def detached(*args: str) -> str:
    done = cli("run", "-d", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def inspect(name: str) -> dict:  # type: ignore[type-arg]
    done = cli("inspect", name)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]  # type: ignore[no-any-return]


def address(name: str, net: str) -> str:
    return str(inspect(name)["NetworkSettings"]["Networks"][net]["IPAddress"])


def veths(store: Store, net: str) -> list[str]:
    links = netns.links(store.root / "networks" / net / "netns")
    return sorted(str(link["ifname"]) for link in links if link["ifname"].startswith("veth"))


def assert_port_free(port: int) -> None:
    """Nothing listens on 127.0.0.1:port (SO_REUSEADDR: connections in TIME_WAIT aside)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)


def wait_for_log(name: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cli("logs", name).stdout
        if text in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the logs of {name}: {out!r}")


def serve_web(image: str, *flags: str) -> None:
    detached("--network", "A", "--name", "web", "--network-alias", "site", *flags, image,
             "httpd", "-f", "-p", "80", "-h", "/www")


# busybox-static's wget crashes on start (Debian 12's 1.35): HTTP by hand through nc
GET = 'printf "GET /index.html HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {0} 80'
FETCH = f"for i in $(seq 100); do {GET} > /tmp/r && grep -q '200 OK' /tmp/r && cat /tmp/r " \
        "&& exit 0; sleep 0.1; done; exit 1"


def fetched(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0 and done.stdout.startswith("HTTP/1.1 200 OK") and \
        done.stdout.endswith("\n\n" + PAGE)  # text mode turned \r\n into \n


def test_three_container_app(image: str) -> None:
    network("A")
    network("B")
    port = free_port()
    serve_web(image, "-p", f"127.0.0.1:{port}:80")
    for name in ("web", "site"):  # by container name and by alias
        done = cli("run", "--rm", "--network", "A", image, "sh", "-c", FETCH.format(name))
        assert fetched(done), (done.stdout, done.stderr)
    web_ip = address("web", "A")
    by_address = cli("run", "--rm", "--network", "A", image, "sh", "-c", GET.format(web_ip))
    assert fetched(by_address)  # the same probe as from B below, which must fail
    for target in ("web", "site", web_ip):
        done = cli("run", "--rm", "--network", "B", image, "sh", "-c", GET.format(target))
        assert done.returncode != 0 and done.stdout == "", (target, done.stdout)
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (response.status_code, response.text) == (200, PAGE)
    ps = cli("ps").stdout.splitlines()
    assert ps[0].split()[-3:] == ["PORTS", "NETWORKS", "NAMES"]
    assert ps[1].split()[-3:] == [f"127.0.0.1:{port}->80/tcp", "A", "web"]
    settings = inspect("web")["NetworkSettings"]
    assert settings["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    a_net = json.loads(cli("network", "inspect", "A").stdout)[0]
    assert settings["Networks"]["A"]["Aliases"] == ["site"]
    assert settings["Networks"]["A"]["NetworkID"] == a_net["Id"]
    assert web_ip.startswith(a_net["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0])
    assert [c["Name"] for c in a_net["Containers"].values()] == ["web"]


def test_hosts_follow_containers_and_rm_refuses_a_used_network(image: str,
                                                                store: Store) -> None:
    network("A")
    watch = ('until grep -qw web /etc/hosts; do sleep 0.1; done; echo web-joined; '
             'while grep -qw web /etc/hosts; do sleep 0.1; done; echo web-left; sleep 300')
    detached("--network", "A", "--name", "peer", image, "sh", "-c", watch)
    serve_web(image)
    wait_for_log("peer", "web-joined")  # the running peer's /etc/hosts gained a line
    assert len(veths(store, "A")) == 2
    refused = cli("network", "rm", "A")
    assert refused.returncode != 0 and "active endpoints" in refused.stderr
    assert cli("stop", "web").returncode == 0  # the exit itself: `stop` cleans nothing
    wait_for_log("peer", "web-left")  # ... and lost it
    assert len(veths(store, "A")) == 1
    assert inspect("web")["NetworkSettings"]["Networks"]["A"]["IPAddress"] == ""
    assert cli("rm", "web").returncode == 0
    peer_hosts = (ContainerStore(store).dir(inspect("peer")["Id"]) / "hosts").read_text()
    assert "web" not in peer_hosts and "site" not in peer_hosts
    refused = cli("network", "rm", "A")
    assert refused.returncode != 0 and "peer" in refused.stderr
    assert cli("rm", "-f", "peer").returncode == 0
    assert veths(store, "A") == []
    assert cli("network", "rm", "A").returncode == 0
    assert not (store.root / "networks" / "A").exists()
    assert cli("network", "ls", "-q").stdout == ""


OWN_ADDRESS = "ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f4"


def test_exit_with_rm_cleans_up(image: str, store: Store) -> None:
    network("A")
    detached("--network", "A", "--name", "peer", image, "sleep", "300")
    port = free_port()
    done = cli("run", "--rm", "--network", "A", "--name", "brief", "-p", f"{port}:80", image,
               "sh", "-c", f"grep -w peer /etc/hosts | cut -f2; {OWN_ADDRESS}")
    peer_id = inspect("peer")["Id"]
    assert done.returncode == 0, done.stderr
    names, brief_address = done.stdout.splitlines()
    assert names == f"peer {peer_id[:12]}"
    assert cli("ps", "-aq").stdout.split() == [peer_id[:12]]
    assert len(veths(store, "A")) == 1
    assert_port_free(port)  # the relay let go of it
    assert "brief" not in (ContainerStore(store).dir(peer_id) / "hosts").read_text()
    again = cli("run", "--rm", "--network", "A", image, "sh", "-c", OWN_ADDRESS)
    assert again.stdout.strip() == brief_address  # the address was given back


def _kill_supervisor(store: Store, name: str) -> int:
    record = ContainerStore(store).find(name)
    os.kill(record.supervisor_pid, signal.SIGKILL)
    return record.pid


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def test_plumbing_a_killed_supervisor_left_is_cleaned_up(image: str, store: Store) -> None:
    network("A")
    detached("--network", "A", "--name", "peer", image, "sleep", "300")
    port = free_port()
    detached("--network", "A", "--name", "victim", "-p", f"{port}:80", image, "sleep", "300")
    detached("--network", "A", "--name", "victim2", image, "sleep", "300")
    peer_hosts = ContainerStore(store).dir(inspect("peer")["Id"]) / "hosts"
    assert "victim" in peer_hosts.read_text() and "victim2" in peer_hosts.read_text()
    victim_ip = address("victim", "A")
    published = inspect("victim")["NetworkSettings"]["Ports"]
    assert published == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    # victim: supervisor and container die; the next `ps` finds the stale endpoint
    pid = _kill_supervisor(store, "victim")
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    records = {c.name: c for c in ContainerStore(store).all()}
    assert records["victim"].endpoint is not None  # nobody cleaned up yet
    assert cli("ps").returncode == 0
    records = {c.name: c for c in ContainerStore(store).all()}
    assert records["victim"].endpoint is None
    assert "victim\t" not in peer_hosts.read_text() and "victim " not in peer_hosts.read_text()
    assert "victim2" in peer_hosts.read_text()
    assert sorted(veths(store, "A")) == sorted(
        c.endpoint.veth for c in records.values() if c.endpoint is not None)
    assert_port_free(port)  # the relay died with its supervisor
    # victim2: its supervisor dies, the container lives on until `rm -f`
    _kill_supervisor(store, "victim2")
    assert cli("rm", "-f", "victim2").returncode == 0
    assert "victim2" not in peer_hosts.read_text()
    assert len(veths(store, "A")) == 1
    reused = cli("run", "--rm", "--network", "A", image, "sh", "-c", OWN_ADDRESS)
    assert reused.stdout.split("/")[0] == victim_ip  # the stale address was freed
    assert cli("rm", "-f", "peer", "victim").returncode == 0
    assert veths(store, "A") == []
    assert cli("network", "rm", "A").returncode == 0


def _host_state() -> dict[str, object]:
    """The host's interfaces, addresses, routes, firewall and forwarding, without counters
    that move on their own (address lifetimes, route expiry)."""
    volatile = ("valid_life_time", "preferred_life_time", "expires", "stats64")

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    state: dict[str, object] = {}
    for key, argv in {
        "links": ["ip", "-j", "link"], "addrs": ["ip", "-j", "addr"],
        "routes4": ["ip", "-j", "-4", "route", "show", "table", "all"],
        "routes6": ["ip", "-j", "-6", "route", "show", "table", "all"],
        "rules": ["ip", "-j", "rule"],
    }.items():
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        state[key] = strip(json.loads(done.stdout or "[]"))
    for tool in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        try:
            done = subprocess.run(tool, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            continue
        lines = [ln for ln in done.stdout.splitlines() if not ln.startswith("#")]
        state[tool[0]] = [ln.split("[")[0] for ln in lines]  # without packet counters
    for sysctl in ("ipv4/ip_forward", "ipv6/conf/all/forwarding"):
        state[sysctl] = Path(f"/proc/sys/net/{sysctl}").read_text()
    state["netns"] = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    return state


def test_the_host_is_untouched(image: str) -> None:
    before = _host_state()
    network("A")
    network("B", "--subnet", "10.90.0.0/24")
    serve_web(image, "-p", f"{free_port()}:80")
    detached("--network", "B", "--name", "other", image, "sleep", "300")
    done = cli("run", "--rm", "--network", "A", image, "sh", "-c", FETCH.format("web"))
    assert fetched(done), done.stderr
    during = _host_state()
    assert during == before
    assert cli("rm", "-f", "web", "other").returncode == 0
    assert cli("network", "rm", "A", "B").returncode == 0
    assert _host_state() == before


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP port open on every address of the host, which answers "host" and hangs up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"host\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    thread.join(10)


def _host_addresses() -> list[str]:
    done = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True,
                          check=True)
    return [a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])]


def test_a_container_cannot_reach_the_host(image: str, registry_server: RegistryServer,
                                           host_listener: int) -> None:
    network("A")
    registry_port = registry_server.host.rsplit(":", 1)[1]
    gateway = json.loads(cli("network", "inspect", "A").stdout)[0]["IPAM"]["Config"][0][
        "Gateway"]
    targets = [f"127.0.0.1 {registry_port}", *(f"{a} {host_listener}" for a in _host_addresses())]

    def probe(extra: list[str]) -> str:
        return "; ".join(f"nc -w 3 {t} </dev/null && echo reached {t} || true"
                         for t in [*targets, *extra])

    # The probe works: on the host's network every one of the host's services answers.
    on_host = cli("run", "--rm", image, "sh", "-c", probe([]))
    assert on_host.stdout.count("reached") == len(targets), on_host.stdout
    done = cli("run", "--rm", "--network", "A", image, "sh", "-c",
               probe([f"{gateway} {host_listener}", f"{gateway} {registry_port}"]))
    assert done.returncode == 0 and "reached" not in done.stdout, done.stdout


def test_a_container_cannot_touch_its_interface(image: str) -> None:
    network("A")
    script = ("ip link set dev eth0 netns 1 2>&1; echo rc=$?; "
              "ip addr add 10.89.1.200/24 dev eth0 2>&1; echo rc=$?; "
              "ip link set dev eth0 down 2>&1; echo rc=$?; "
              "ip link add dummy0 type dummy 2>&1; echo rc=$?; "
              "ip route add 192.0.2.0/24 dev eth0 2>&1; echo rc=$?; "
              "nsenter -t 1 -n true 2>&1; echo rc=$?; "
              "ip -o link show eth0 | grep -c UP")
    done = cli("run", "--rm", "--network", "A", image, "sh", "-c", script)
    lines = done.stdout.splitlines()
    assert lines.count("rc=0") == 0, done.stdout
    assert sum("Operation not permitted" in line for line in lines) >= 5, done.stdout
    assert lines[-1] == "1"  # eth0 is still up, in the container's namespace


@pytest.mark.parametrize("flags", [
    ["--name", "evil\n10.0.0.1 web"],
    ["--name", "evil web"],
    ["--name=-x"],
    ["--name", "a"],  # Docker: two characters at least
    ["--network-alias", "web\t10.0.0.1"],
    ["--network-alias=x\n# comment"],
    ["--network", "../A"],
])
def test_names_cannot_inject_lines_into_hosts(image: str, flags: list[str]) -> None:
    network("A")
    args = flags if flags[0] == "--network" else ["--network", "A", *flags]
    done = cli("run", "--rm", *args, image, "true")
    assert done.returncode != 0 and done.stderr.startswith("Error: invalid "), done.stderr
    assert cli("ps", "-aq").stdout == ""


def test_network_commands(image: str, store: Store) -> None:
    a_id = network("A")
    assert len(a_id) == 64
    network("B")
    subnets = {n["Name"]: n["IPAM"]["Config"][0]["Subnet"]
               for n in json.loads(cli("network", "inspect", "A", "B").stdout)}
    assert subnets["A"] != subnets["B"]
    assert all(s.startswith("10.89.") and s.endswith(".0/24") for s in subnets.values())
    assert cli("network", "create", "A").returncode != 0  # name in use
    overlap = cli("network", "create", "--subnet", subnets["A"], "C")
    assert overlap.returncode != 0 and "overlaps" in overlap.stderr
    for name in ("host", "none", "-x", "../etc", "a b", "a\nb"):
        assert cli("network", "create", name).returncode != 0
    custom = network("C", "--subnet", "192.168.77.0/28")
    listing = cli("network", "ls").stdout
    assert "192.168.77.0/28" in listing and custom[:12] in listing
    assert cli("network", "inspect", a_id[:12]).returncode == 0
    missing = cli("run", "--rm", "--network", "nosuch", image, "true")
    assert missing.returncode != 0 and "network nosuch not found" in missing.stderr
    no_net = cli("run", "--rm", "-p", "8080:80", image, "true")
    assert no_net.returncode != 0 and "need a network" in no_net.stderr
    assert (store.root / "networks" / "A").stat().st_mode & 0o777 == 0o700
    assert cli("network", "rm", "A", "B", "C").returncode == 0
    assert cli("network", "ls", "-q").stdout == ""


def test_published_port_in_use_fails_the_start(image: str) -> None:
    network("A")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        done = cli("run", "--rm", "--network", "A", "-p", f"{port}:80", image, "true")
        assert done.returncode != 0 and "port is already allocated" in done.stderr
        done = cli("run", "-d", "--network", "A", "-p", f"{port}:80", image, "true")
        assert done.returncode != 0 and "port is already allocated" in done.stderr


def test_no_host_socket_reaches_the_container(image: str) -> None:
    """The relay's listening sockets live in the host's namespace: not one of them may be
    inherited by the container's processes (with --init, pid 1 stays our code)."""
    network("A")
    done = cli("run", "--rm", "--init", "--network", "A", "-p", f"{free_port()}:80", image,
               "sh", "-c", "ls -l /proc/1/fd/ /proc/self/fd/")
    assert done.returncode == 0 and "/proc/1/fd/" in done.stdout, done.stderr
    assert "socket:" not in done.stdout, done.stdout


def test_a_foreground_run_relays_its_ports(image: str) -> None:
    network("A")
    port = free_port()
    proc = subprocess.Popen([*CLI, "run", "--rm", "--init", "--network", "A", "-p",
                             f"{port}:80", image, "sh", "-c", "echo ready; httpd -f -p 80 -h /www"],
                            stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert (response.status_code, response.text) == (200, PAGE)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert_port_free(port)  # the relay is gone with the run


def test_a_network_outlives_its_namespace_mount(image: str, store: Store) -> None:
    """After a reboot the namespace file is an empty file: the next run makes it again."""
    network("A")
    path = store.root / "networks" / "A" / "netns"
    linux.umount(str(path), linux.MNT_DETACH)  # what a reboot leaves
    assert not netns.is_namespace(path)
    done = cli("run", "--rm", "--network", "A", image, "sh", "-c", OWN_ADDRESS)
    assert done.returncode == 0 and done.stdout.startswith("10.89."), done.stderr
    assert netns.is_namespace(path)
