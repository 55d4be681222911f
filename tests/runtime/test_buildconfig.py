"""What metadata instructions do to an image config, pure, by Docker's rules."""

from __future__ import annotations

from typing import Any

import pytest

from registry.runtime import buildconfig as bc


def test_env_replaces_in_place_and_appends() -> None:
    run: dict[str, Any] = {"Env": ["PATH=/bin", "A=1"]}
    bc.set_env(run, [("A", "2"), ("B", "x y"), ("A", "3")])
    assert run["Env"] == ["PATH=/bin", "A=3", "B=x y"]
    fresh: dict[str, Any] = {}
    bc.add_default_path(fresh)
    assert fresh["Env"] == [f"PATH={bc.DEFAULT_PATH}"]
    bc.add_default_path(run)
    assert run["Env"][0] == "PATH=/bin" and len(run["Env"]) == 3


@pytest.mark.parametrize(("current", "path", "expected"), [
    ("/", "app", "/app"), ("/app", "sub/../x", "/app/x"), ("/app", "/abs", "/abs"),
    ("", "rel", "/rel"), ("/a", "..", "/"), ("/a", ".", "/a"),
])
def test_workdir(current: str, path: str, expected: str) -> None:
    assert bc.workdir(current, path) == expected


def test_expose_volumes_and_commands() -> None:
    run: dict[str, Any] = {}
    bc.expose(run, ["80", "53/UDP", "8000-8002/tcp"])
    assert sorted(run["ExposedPorts"]) == ["53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
    for bad in ("x", "0", "70000", "80/icmp", "90-80"):
        with pytest.raises(bc.ConfigError):
            bc.expose({}, [bad])
    bc.volumes(run, ["/data", "/logs"])
    assert run["Volumes"] == {"/data": {}, "/logs": {}}
    assert bc.command(("echo hi",), False, ["/bin/bash", "-c"]) == ["/bin/bash", "-c", "echo hi"]
    assert bc.command(("echo", "hi"), True, ["/bin/sh", "-c"]) == ["echo", "hi"]


def test_healthcheck_and_durations() -> None:
    assert bc.parse_duration("1m30s") == 90_000_000_000
    assert bc.parse_duration("1.5s") == 1_500_000_000
    assert bc.parse_duration("250ms") == 250_000_000
    for bad in ("", "5", "1x", "s"):
        with pytest.raises(bc.ConfigError):
            bc.parse_duration(bad)
    check = bc.healthcheck(("CMD", "curl x"), False, {"interval": "5s", "retries": "3"})
    assert check == {"Test": ["CMD-SHELL", "curl x"], "Interval": 5_000_000_000, "Retries": 3}
    assert bc.healthcheck(("CMD", "a", "b"), True, {}) == {"Test": ["CMD", "a", "b"]}
    assert bc.healthcheck(("NONE",), False, {}) == {"Test": ["NONE"]}
    with pytest.raises(bc.ConfigError, match="less than 1ms"):
        bc.healthcheck(("CMD", "x"), False, {"timeout": "10us"})
    with pytest.raises(bc.ConfigError, match="negative"):
        bc.healthcheck(("CMD", "x"), False, {"retries": "-1"})


def test_stop_signal() -> None:
    for good in ("SIGTERM", "TERM", "sigkill", "9", "SIGRTMIN+3"):
        assert bc.check_signal(good) == good
    for bad in ("SIGNOPE", "0", "99", "x"):
        with pytest.raises(bc.ConfigError):
            bc.check_signal(bad)


def test_state_ids_are_stable_and_commits_record_history() -> None:
    state = bc.ImageState(bc.scratch_config("amd64", "linux", None), [], "k0")
    same = bc.ImageState(bc.scratch_config("amd64", "linux", None), [], "other")
    assert state.image_id == same.image_id
    layer = bc.LayerRef("sha256:" + "a" * 64, "sha256:" + "b" * 64, 10, "x")
    child = state.commit("k1", "2024-01-01T00:00:00Z", "RUN x", layer)
    meta = child.commit("k2", "2024-01-01T00:00:01Z", "ENV A=1")
    assert state.config["history"] == [] and child.config["rootfs"]["diff_ids"] == [layer.diff_id]
    assert meta.config["history"][-1] == {"created": "2024-01-01T00:00:01Z",
                                          "created_by": "ENV A=1", "empty_layer": True}
    assert bc.ImageState.from_json(meta.to_json()).image_id == meta.image_id
    assert bc.cache_key("p", ["RUN", "x"]) != bc.cache_key("p", ["RUN", "y"])
