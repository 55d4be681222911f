"""The pure parts of networks: `-p` specs, subnets, names, and the /etc/hosts text."""

from __future__ import annotations

import ipaddress

import pytest

from registry.runtime.endpoints import LOCALHOST, hosts_text
from registry.runtime.errors import RuntimeFailure
from registry.runtime.networks import NAME, check_name, choose_subnet, parse_subnet
from registry.runtime.ports import format_binding, parse_publish, parse_publishes, port_map
from registry.runtime.state import Container, Endpoint, PortBinding


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:80", PortBinding("127.0.0.1", 8080, 80)),
    ("8080:80/tcp", PortBinding("127.0.0.1", 8080, 80)),
    ("80", PortBinding("127.0.0.1", 0, 80)),
    ("0.0.0.0:8080:80", PortBinding("0.0.0.0", 8080, 80)),
    ("127.0.0.2::80", PortBinding("127.0.0.2", 0, 80)),
    ("[::1]:8080:80", PortBinding("::1", 8080, 80)),
])
def test_publish_specs(spec: str, expected: PortBinding) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize("spec", [
    "8080:80/udp", "8080:80/sctp", "70000:80", "8080:0", "8080:", "a:80", "1.2.3:8080:80",
    "host:8080:80", "8000-8010:80", "1:2:3:4", "[::1]8080:80", "", "-1:80", "8080:+80",
    "8080:\uff18\uff10",
])
def test_bad_publish_specs(spec: str) -> None:
    with pytest.raises(RuntimeFailure):
        parse_publish(spec)


def test_a_host_port_published_twice_is_refused() -> None:
    with pytest.raises(RuntimeFailure, match="published twice"):
        parse_publishes(["8080:80", "127.0.0.1:8080:81"])
    assert len(parse_publishes(["80", "81", "0.0.0.0:8080:80", "8080:80"])) == 4


def test_docker_port_texts() -> None:
    bindings = [PortBinding("127.0.0.1", 8080, 80), PortBinding("::1", 8081, 80)]
    assert [format_binding(b) for b in bindings] == ["127.0.0.1:8080->80/tcp",
                                                     "[::1]:8081->80/tcp"]
    assert port_map(bindings) == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"},
                                             {"HostIp": "::1", "HostPort": "8081"}]}


@pytest.mark.parametrize("name", ["web", "my-db.1", "A_b", "x9"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "w", "-web", ".web", "_web", "web db", "web\n10.0.0.1 db", "web\tdb", "we#b", "web/db",
    "../x", "wéb", "x" * 129, "",
])
def test_names_that_would_corrupt_hosts_files(name: str) -> None:
    with pytest.raises(RuntimeFailure, match="invalid"):
        check_name(name)


def test_networks_and_aliases_may_be_one_character() -> None:
    assert check_name("A", "network name", NAME) == "A"
    with pytest.raises(RuntimeFailure):
        check_name("A\nB", "network name", NAME)


def test_subnets() -> None:
    assert str(parse_subnet("10.90.0.0/24")) == "10.90.0.0/24"
    for bad in ("10.90.0.1/24", "10.90.0.0/31", "10.0.0.0/7", "127.0.0.0/8", "224.0.0.0/24",
                "169.254.0.0/16", "fd00::/64", "nonsense"):
        with pytest.raises(RuntimeFailure):
            parse_subnet(bad)


def test_a_default_subnet_avoids_networks_and_host_routes() -> None:
    net = ipaddress.IPv4Network
    assert choose_subnet([], []) == net("10.89.0.0/24")
    assert choose_subnet([net("10.89.0.0/24")], [net("10.89.1.7/32")]) == net("10.89.2.0/24")
    assert choose_subnet([], [net("127.0.0.0/8")]) == net("10.89.0.0/24")


def test_no_default_subnet_left() -> None:
    with pytest.raises(RuntimeFailure, match="--subnet"):
        choose_subnet([], [ipaddress.IPv4Network("10.0.0.0/8")])


def _container(name: str, address: str, aliases: list[str] | None = None,
               hostname: str = "h") -> Container:
    c = Container(id=name * 32, name=name, image="i", image_id="sha256:x", diff_ids=[],
                  argv=["true"], env=[], user="", workdir="/", hostname=hostname,
                  network="A", aliases=aliases or [])
    c.endpoint = Endpoint("n", address, 24, "10.89.0.1", "veth")
    return c


def test_hosts_text_names_the_others() -> None:
    web = _container("web", "10.89.0.10", ["site"])
    db = _container("db", "10.89.0.9", ["data", "db"], hostname="bad host")
    me = _container("me", "10.89.0.2", hostname="box")
    assert hosts_text(me, [web, db]) == LOCALHOST + (
        "10.89.0.2\tbox me\n"
        f"10.89.0.9\tdb data {'db' * 6}\n"
        f"10.89.0.10\tweb site {'web' * 4}\n"
    )
    assert hosts_text(db, []) == LOCALHOST + "10.89.0.9\tdb data\n"  # bad hostname left out
