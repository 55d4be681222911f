"""`registry.config`: defaults < YAML file < `REGISTRY_*` environment < flags, and bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from registry.cli import _load, build_parser
from registry.cli import main as cli_main
from registry.config import Config, ConfigError, load_config, worker_count

from support.server import RegistryServer


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.server.addr == "127.0.0.1:5000"
    assert config.host_port == ("127.0.0.1", 5000)
    assert config.storage.delete_enabled is True
    assert config.limits.max_manifest_bytes == 4 * 1024 * 1024


def test_derived_locations(tmp_path: Path) -> None:
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path)})
    assert config.storage_root == tmp_path / "storage"
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/registry.db"
    config = load_config(
        environ={},
        overrides={"storage.root": "/srv/blobs", "database.url": "postgresql+asyncpg://h/db"},
    )
    assert config.storage_root == Path("/srv/blobs")
    assert config.database_url == "postgresql+asyncpg://h/db"


def test_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "data_dir: /var/lib/registry\n"
        "server:\n  addr: 0.0.0.0:6000\n  access_log: true\n"
        "storage:\n  delete_enabled: false\n"
        "limits:\n  max_manifest_bytes: 1000\n",
    )
    config = load_config(path, environ={})
    assert config.data_dir == "/var/lib/registry"
    assert config.server.addr == "0.0.0.0:6000"
    assert config.server.access_log is True
    assert config.storage.delete_enabled is False
    assert config.limits.max_manifest_bytes == 1000
    assert config.limits.page_size_max == Config().limits.page_size_max  # untouched


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == Config()


def test_environment_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  addr: 127.0.0.1:6000\n  workers: 2\n")
    environ = {
        "REGISTRY_SERVER_ADDR": "127.0.0.1:7000",
        "REGISTRY_DATA_DIR": "/from/env",
        "REGISTRY_STORAGE_DELETE_ENABLED": "no",
        "REGISTRY_LIMITS_PAGE_SIZE_MAX": "50",
        "UNRELATED": "x",
    }
    config = load_config(path, environ=environ)
    assert config.server.addr == "127.0.0.1:7000"
    assert config.server.workers == "2"  # from YAML, not overridden
    assert config.data_dir == "/from/env"
    assert config.storage.delete_enabled is False
    assert config.limits.page_size_max == 50


def test_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  addr: 127.0.0.1:6000\n")
    config = load_config(
        path,
        environ={"REGISTRY_SERVER_ADDR": "127.0.0.1:7000", "REGISTRY_DATA_DIR": "/env"},
        overrides={"server.addr": "127.0.0.1:8000", "data_dir": None},
    )
    assert config.server.addr == "127.0.0.1:8000"
    assert config.data_dir == "/env"  # a flag not given (None) changes nothing


def test_command_line_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `registry serve` flags, over the environment, over the file."""
    path = write(tmp_path, "data_dir: /yaml\nserver:\n  addr: 127.0.0.1:6000\n  workers: 3\n")
    monkeypatch.setenv("REGISTRY_SERVER_ADDR", "127.0.0.1:7000")
    monkeypatch.setenv("REGISTRY_SERVER_WORKERS", "4")
    monkeypatch.setenv("REGISTRY_DATA_DIR", "/env")
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--addr", "127.0.0.1:8000", "--data", "/flag"]
    )
    config = _load(args)
    assert config.server.addr == "127.0.0.1:8000"
    assert config.data_dir == "/flag"
    assert config.server.workers == "4"
    args = build_parser().parse_args(["serve", "--config", str(path)])
    config = _load(args)
    assert (config.server.addr, config.data_dir) == ("127.0.0.1:7000", "/env")


@pytest.mark.parametrize(
    ("text", "environ"),
    [
        ("server:\n  workers: many\n", {}),
        ("storage:\n  delete_enabled: maybe\n", {}),
        ("server:\n  addr: [1, 2]\n", {}),
        ("server:\n  nope: 1\n", {}),
        ("nosuch:\n  key: 1\n", {}),
        ("nosuch: 1\n", {}),
        ("server: 5\n", {}),
        ("- a\n- b\n", {}),
        ("", {"REGISTRY_SERVER_WORKERS": "two"}),
        ("", {"REGISTRY_STORAGE_DELETE_ENABLED": "perhaps"}),
        ("", {"REGISTRY_LIMITS_MAX_MANIFEST_BYTES": "4MiB"}),
    ],
)
def test_bad_values(tmp_path: Path, text: str, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text), environ=environ)


@pytest.mark.parametrize("override", [{"server.workers": "x"}, {"server.bogus": 1}, {"x.y": 1}])
def test_bad_overrides(override: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_config(environ={}, overrides=override)


@pytest.mark.parametrize("value", ["true", "1.5", "ten", "[1]"])
def test_integer_setting_refuses_booleans_and_fractions(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, f"limits:\n  page_size_max: {value}\n"), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("Off", False)],
)
def test_boolean_words_from_the_environment(text: str, expected: bool) -> None:
    config = load_config(environ={"REGISTRY_SERVER_ACCESS_LOG": text})
    assert config.server.access_log is expected


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:5000", ("127.0.0.1", 5000)), ("[::1]:80", ("::1", 80)), ("h:1", ("h", 1))],
)
def test_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert load_config(environ={}, overrides={"server.addr": addr}).host_port == expected


@pytest.mark.parametrize("addr", ["localhost", ":5000", "h:", "h:port"])
def test_bad_host_port(addr: str) -> None:
    config = load_config(environ={}, overrides={"server.addr": addr})
    with pytest.raises(ConfigError):
        _ = config.host_port


def test_missing_file() -> None:
    with pytest.raises(OSError):
        load_config("/nonexistent/config.yaml", environ={})


def test_cli_reports_configuration_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "server:\n  workers: many\n")
    assert cli_main(["serve", "--config", str(path)]) == 2
    assert "server.workers must be auto or a number" in capsys.readouterr().err


def test_workers_default_to_one_per_core(tmp_path: Path) -> None:
    assert Config().server.workers == "auto"
    assert worker_count("auto") == (os.cpu_count() or 1)
    assert worker_count("3") == worker_count(" 3 ") == 3
    for bad in ("0", "-1", "²", "\u0661", "2.5", "1025", ""):  # U+0661: an Arabic-Indic 1
        with pytest.raises(ConfigError):
            worker_count(bad)


def test_a_default_server_runs_one_worker_per_core(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "data", workers=None)
    server.start()
    try:
        assert server.process is not None
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        workers = [pid for pid in children.read_text().split()
                   if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        cores = os.cpu_count() or 1
        assert len(workers) == (cores if cores > 1 else 0)  # one worker: no child at all
    finally:
        server.stop()


def test_s3_settings_nest_under_storage(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storage:\n  driver: s3\n  s3:\n    bucket: blobs\n    redirect: true\n"
        "    part_size: 8388608\n",
    )
    config = load_config(path, environ={"REGISTRY_STORAGE_S3_REGION": "eu-west-1"})
    assert config.storage.s3.bucket == "blobs"
    assert config.storage.s3.redirect is True
    assert config.storage.s3.part_size == 8 * 1024 * 1024
    assert config.storage.s3.region == "eu-west-1"
    config.check()
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "storage:\n  s3:\n    nope: 1\n"), environ={})
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "storage:\n  s3: blobs\n"), environ={})


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"storage.driver": "s4"}, "storage.driver 's4' is not one this registry knows"),
        ({"storage.driver": "S3"}, "is not one this registry knows"),
        ({"storage.driver": "s3"}, "needs storage.s3.bucket"),
        (
            {"storage.driver": "s3", "storage.s3.bucket": "b", "storage.s3.access_key": "k"},
            "go together",
        ),
        ({"storage.s3.part_size": 1024}, "part_size"),
        ({"storage.s3.addressing": "dns"}, "addressing"),
        ({"storage.s3.encryption": "rot13"}, "encryption"),
        ({"storage.s3.kms_key_id": "k"}, "kms_key_id"),
        ({"storage.s3.prefix": "../x"}, "prefix"),
        ({"storage.s3.redirect_seconds": 0}, "redirect_seconds"),
        ({"limits.upload_buffer_bytes": 0}, "upload_buffer_bytes"),
        ({"limits.upload_memory_bytes": 1024 * 1024}, "at most limits.upload_memory_bytes"),
    ],
)
def test_bad_storage_settings_are_refused(settings: dict[str, object], complaint: str) -> None:
    config = load_config(environ={}, overrides=settings)
    with pytest.raises(ConfigError, match=complaint):
        config.check()


def test_serve_refuses_an_unknown_storage_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`storage.driver: s3`-like typos used to run on local disk without a word."""
    path = write(tmp_path, "storage:\n  driver: gcs\n")
    code = cli_main(["serve", "--config", str(path), "--data", str(tmp_path / "d")])
    assert code != 0
    assert "storage.driver 'gcs' is not one this registry knows" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
