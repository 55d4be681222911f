"""`support.ci`: a missing requirement skips a test on a developer's machine and fails it in
CI (tests that need root, dockerd, PostgreSQL or a tmpfs must run there, not vanish)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = {
    "test_marked.py": '''
import pytest

pytestmark = pytest.mark.requires(False, "the machine lacks it")

def test_marked():
    pass
''',
    "test_inside.py": '''
from support.ci import require

def test_required_inside():
    require(False, "the machine lacks this too")
''',
}


def outcome(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    answer = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "support.ci", "-p", "no:cacheprovider", "-q",
         "-rfs", *MODULES],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    return answer.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("ci", ["1", "true", "yes"])
def test_fails_in_ci(tmp_path: Path, ci: str) -> None:
    # The mark fails the test's setup (an error), `require` the test itself: the run fails.
    assert outcome(tmp_path, ci).startswith("1 failed, 1 error")


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_skips_elsewhere(tmp_path: Path, ci: str | None) -> None:
    assert outcome(tmp_path, ci).startswith("2 skipped")


def test_ci_run_says_it_is_ci() -> None:
    """CI may run `.ci/run` without CI set: the script sets it itself."""
    script = (TESTS.parent / ".ci" / "run").read_text()
    lines = script.splitlines()
    exported = [i for i, line in enumerate(lines) if line.strip() == "export CI=1"]
    started = [i for i, line in enumerate(lines) if "scripts/test.sh" in line]
    assert exported and started and exported[0] < started[0]
