"""Settings from files (REGISTRY_*_FILE, for mounted secrets) and the database password kept
out of the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import MAX_SETTING_FILE_BYTES, ConfigError, load_config


def test_a_setting_comes_from_the_file_its_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t value\n")  # the trailing newline of `echo` or an editor
    config = load_config(environ={"REGISTRY_DATABASE_PASSWORD_FILE": str(secret)})
    assert config.database.password == "s3cr3t value"
    headers = tmp_path / "headers"
    headers.write_text("30")
    config = load_config(environ={"REGISTRY_SERVER_MAX_HEADERS_FILE": str(headers)})
    assert config.server.max_headers == 30


def test_a_value_and_a_file_for_one_setting_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("x")
    with pytest.raises(ConfigError, match="both set"):
        load_config(
            environ={
                "REGISTRY_DATABASE_PASSWORD": "y",
                "REGISTRY_DATABASE_PASSWORD_FILE": str(tmp_path / "p"),
            }
        )


def test_unreadable_or_huge_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(environ={"REGISTRY_DATABASE_PASSWORD_FILE": str(tmp_path / "missing")})
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SETTING_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(environ={"REGISTRY_DATABASE_PASSWORD_FILE": str(big)})


def test_unknown_file_variables_are_ignored_like_unknown_variables(tmp_path: Path) -> None:
    config = load_config(environ={"REGISTRY_NO_SUCH_THING_FILE": str(tmp_path / "x")})
    assert config == load_config(environ={})


def test_the_password_goes_into_a_url_without_one() -> None:
    base = "postgresql+asyncpg://registry@db:5432/registry"
    config = load_config(
        environ={"REGISTRY_DATABASE_URL": base, "REGISTRY_DATABASE_PASSWORD": "p@ss/word"}
    )
    assert config.database_url == "postgresql+asyncpg://registry:p%40ss%2Fword@db:5432/registry"
    own = load_config(
        environ={
            "REGISTRY_DATABASE_URL": "postgresql+asyncpg://registry:mine@db/registry",
            "REGISTRY_DATABASE_PASSWORD": "other",
        }
    )
    assert own.database_url == "postgresql+asyncpg://registry:mine@db/registry"  # the URL's wins


def test_tls_settings_are_a_nested_section() -> None:
    config = load_config(
        environ={"REGISTRY_SERVER_TLS_CERTIFICATE": "/c.pem", "REGISTRY_SERVER_TLS_KEY": "/k.pem"}
    )
    assert (config.server.tls.certificate, config.server.tls.key) == ("/c.pem", "/k.pem")
    with pytest.raises(ConfigError, match="is a section"):
        load_config(overrides={"server.tls": "x"})
