"""The auth settings: list values from YAML and the environment, and the start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.auth.services import check_listen_address, is_loopback, validate
from registry.config import Config, ConfigError, load_config


def test_lists_from_the_environment() -> None:
    config = load_config(
        environ={
            "REGISTRY_AUTH_ALGORITHMS": "ES256, RS256,PS256",
            "REGISTRY_AUTH_TRUSTED_ISSUERS": '[{"issuer": "gitlab", "jwks_url": "https://g/jwks"}]',
        }
    )
    assert config.auth.algorithms == ["ES256", "RS256", "PS256"]
    assert config.auth.trusted_issuers == [{"issuer": "gitlab", "jwks_url": "https://g/jwks"}]
    json_list = load_config(environ={"REGISTRY_AUTH_ALGORITHMS": '["ES256"]'})
    assert json_list.auth.algorithms == ["ES256"]


def test_lists_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "auth:\n"
        "  enabled: true\n"
        "  algorithms: [RS256]\n"
        "  signing_algorithm: RS256\n"
        "  trusted_issuers:\n"
        "    - issuer: https://sso.example\n"
        "      audience: registry\n"
        "      pem_file: /etc/registry/sso.pem\n"
    )
    config = load_config(path, environ={})
    assert config.auth.enabled and config.auth.algorithms == ["RS256"]
    assert config.auth.trusted_issuers[0]["pem_file"] == "/etc/registry/sso.pem"
    validate(config)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REGISTRY_AUTH_TRUSTED_ISSUERS": "[oops"}, "invalid JSON"),
        ({"REGISTRY_AUTH_TRUSTED_ISSUERS": '{"issuer": "x"}'}, "must be a list"),
        ({"REGISTRY_AUTH_TOKEN_TTL_SECONDS": "soon"}, "integer"),
        ({"REGISTRY_AUTH_ENABLED": "perhaps"}, "true or false"),
    ],
)
def test_bad_values(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_yaml_list_must_be_a_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  trusted_issuers: gitlab\n")
    with pytest.raises(ConfigError, match="must be a list"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("localhost.example.com", False),
        ("registry", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listen_address_check() -> None:
    def config(addr: str, **auth: bool) -> Config:
        cfg = Config()
        cfg.server.addr = addr
        for key, value in auth.items():
            setattr(cfg.auth, key, value)
        return cfg

    check_listen_address(config("127.0.0.1:5000"))
    check_listen_address(config("[::1]:5000"))
    check_listen_address(config("0.0.0.0:5000", enabled=True))
    check_listen_address(config("0.0.0.0:5000", insecure=True))
    with pytest.raises(ConfigError, match="refusing"):
        check_listen_address(config("0.0.0.0:5000"))
    with pytest.raises(ConfigError, match="refusing"):
        check_listen_address(config("[::]:5000"))


def test_the_keys_store_and_its_secret(tmp_path: Path) -> None:
    secret = tmp_path / "keys-secret"
    secret.write_text("x" * 32 + "\n")
    shared = {"REGISTRY_AUTH_KEYS_STORE": "database"}
    config = load_config(environ={**shared, "REGISTRY_AUTH_KEYS_SECRET_FILE": str(secret)})
    assert config.auth.keys_secret == "x" * 32
    validate(config)
    validate(load_config(environ={}))  # the folder, as before: no secret needed
    for environ, message in (
        ({"REGISTRY_AUTH_KEYS_STORE": "vault"}, "folder or database"),
        (shared, "at least 32 characters"),
        ({**shared, "REGISTRY_AUTH_KEYS_SECRET": "x" * 31}, "at least 32 characters"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(load_config(environ=environ))
