"""`.dockerignore` patterns and COPY wildcards, pure, by Docker's rules."""

from __future__ import annotations

import pytest

from registry.runtime.dockerignore import IgnoreRules, PatternError, clean, path_match


def rules(*lines: str) -> IgnoreRules:
    return IgnoreRules(list(lines))


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    (["*.log"], "a.log", True),
    (["*.log"], "dir/a.log", False),  # `*` stays in one component
    (["**/*.log"], "dir/sub/a.log", True),
    (["**/*.log"], "a.log", True),
    (["dir"], "dir/sub/file", True),  # a folder takes what is in it
    (["dir/*"], "dir/file", True),
    (["dir/*"], "dir", False),
    (["/dir/file"], "dir/file", True),
    (["./dir//file/"], "dir/file", True),
    (["f?le"], "file", True),
    (["f?le"], "f/le", False),
    (["[a-c]*"], "beta", True),
    (["[^a-c]*"], "beta", False),
    (["\\*star"], "*star", True),
    (["\\*star"], "xstar", False),
    (["build/**"], "build/x/y", True),
    (["build/**"], "buildx", False),
    (["**"], "anything/at/all", True),
    (["*", "!keep.txt"], "keep.txt", False),
    (["*", "!keep.txt"], "other.txt", True),
    (["*.txt", "!important.txt", "important.txt"], "important.txt", True),
    (["docs", "!docs/readme.md"], "docs/readme.md", False),
    (["docs", "!docs/readme.md"], "docs/other.md", True),
    (["# a comment", "", "  spaced.txt  "], "spaced.txt", True),
    (["# a comment"], "# a comment", False),
])
def test_excluded(patterns: list[str], path: str, excluded: bool) -> None:
    assert rules(*patterns).excluded(path) is excluded


def test_walking_into_excluded_folders_only_for_their_exceptions() -> None:
    ignore = rules("docs", "!docs/keep/*.md")
    assert ignore.may_reinclude_under("docs") and ignore.may_reinclude_under("docs/keep")
    assert not ignore.may_reinclude_under("other")
    assert not rules("docs").may_reinclude_under("docs")


def test_bad_patterns() -> None:
    with pytest.raises(PatternError, match="illegal exclusion"):
        rules("!")
    with pytest.raises(PatternError, match="unclosed"):
        rules("[abc")


def test_path_match_is_go_filepath_match() -> None:
    assert path_match("*.txt", "a.txt") and not path_match("*.txt", "d/a.txt")
    assert path_match("d/*.txt", "d/a.txt") and path_match("d/?.txt", "d/a.txt")
    assert not path_match("**", "d/a.txt") or path_match("**", "da")
    assert path_match("[ab]", "a") and not path_match("[ab]", "c")


def test_clean() -> None:
    assert clean("/a/../b/./c/") == "b/c"
    assert clean("") == "." and clean("/") == "."
    assert clean("../x") == "../x"
