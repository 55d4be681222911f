"""config.example.yaml documents every setting, and loads to exactly the defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from registry.config import Config, all_keys, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def _documented_keys(doc: dict[str, object] | None = None, prefix: str = "") -> set[str]:
    doc = doc if doc is not None else yaml.safe_load(EXAMPLE.read_text())
    keys: set[str] = set()
    for key, value in doc.items():
        if isinstance(value, dict):
            keys |= _documented_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_example_lists_every_setting() -> None:
    assert _documented_keys() == set(all_keys())


def test_every_setting_has_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        assert lines[index - 1].strip().startswith("#"), f"no comment above {stripped!r}"


def test_example_values_are_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()
