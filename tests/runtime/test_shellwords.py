"""Variable substitution in Dockerfile arguments, pure, against what Docker gives."""

from __future__ import annotations

import pytest

from registry.runtime.shellwords import SubstitutionError, process_word, process_words

ENV = {"A": "x y", "EMPTY": "", "N": "n", "PATH": "/bin"}


@pytest.mark.parametrize(("word", "expected"), [
    ("$A", "x y"),
    ("${A}", "x y"),
    ("pre${N}post", "prenpost"),
    ("$N.txt", "n.txt"),
    ("$UNSET", ""),
    ("${UNSET:-default}", "default"),
    ("${EMPTY:-default}", "default"),
    ("${EMPTY-default}", ""),
    ("${UNSET-default}", "default"),
    ("${N:-default}", "n"),
    ("${N:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET:+alt}", ""),
    ("${UNSET:-$N-${A}}", "n-x y"),
    ("${UNSET:-\"}\"}", "}"),
    ("$PATH:/usr/bin", "/bin:/usr/bin"),
    ("'$A'", "$A"),
    ('"$A"', "x y"),
    ('"a\\"b"', 'a"b'),
    ('"a\\$A"', "a$A"),
    ('"a\\b"', "a\\b"),
    ("a\\ b", "a b"),
    ("\\$A", "$A"),
    ("$", "$"),
    ("a$", "a$"),
    ("$1", ""),
    ("${N}${N}", "nn"),
])
def test_process_word(word: str, expected: str) -> None:
    assert process_word(word, ENV) == expected


def test_words_split_after_substitution_outside_quotes() -> None:
    assert process_words("$A 'b c' \"$A\" d\\ e", ENV) == ["x", "y", "b c", "x y", "d e"]
    assert process_words("  80/tcp   443 ", ENV) == ["80/tcp", "443"]


def test_backtick_escape() -> None:
    assert process_word("a`$N b\\c", ENV, "`") == "a$N b\\c"
    assert process_word('"`""', ENV, "`") == '"'


@pytest.mark.parametrize(("word", "message"), [
    ("${", "missing '}'"),
    ("${A", "missing '}'"),
    ("${}", "bad substitution"),
    ("${:x}", "bad substitution"),
    ("${A:x}", "unsupported modifier"),
    ("${A:-x", "missing '}'"),
    ("'open", "matching single-quote"),
    ('"open', "matching double-quote"),
    ("${UNSET:?must be set}", "UNSET: must be set"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
])
def test_errors(word: str, message: str) -> None:
    with pytest.raises(SubstitutionError, match=message.replace("?", "\\?")):
        process_word(word, ENV)
    assert process_word("${EMPTY?ok}", ENV) == ""
