"""What a test needs from the machine: skipped where it is missing, except in CI, where a
missing requirement fails the test (a CI that skips what it was set up to run proves nothing).

`.ci/run` exports CI=1, and CI services set CI=true; any value but "", 0, false, no counts.

    require(shutil.which("skopeo") is not None, "skopeo not found")   # inside a test or fixture
    pytestmark = pytest.mark.requires(ROOT, "running containers needs root")  # a module's tests

The mark is this plugin's (`pytest_plugins = ["support.ci"]` in the top conftest).
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(ok: bool, reason: str) -> None:
    """Go on when `ok`; else fail in CI and skip elsewhere, saying `reason`."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason}: CI must run this test", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(ok, reason): skip the test unless ok, but fail it in CI (support.ci)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(bool(mark.args[0]), str(mark.args[1]))
