"""`.dockerignore` and path patterns as Docker matches them. Pure.

A `.dockerignore` line is a pattern relative to the context root (a leading `/` and `./`
are dropped, the path is cleaned); `#` starts a comment line; `!` makes an exception that
re-includes what an earlier pattern excluded; the last matching line decides. `*` matches
within one path component, `?` one character of it, `[a-z]` and `[^a-z]` a class, `\\`
escapes, and `**` any number of components (`**/x` also matches `x`). A path is excluded
when it or one of its parent folders matches, so excluding a folder excludes what is in it.

`path_match` is Go's `filepath.Match`, which COPY uses for its wildcard sources: the same
syntax without `**`, matched against the whole relative path.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

GLOB_CHARS = frozenset("*?[")


class PatternError(ValueError):
    """A pattern that does not compile: an unclosed `[`, a lone `!`."""


@dataclass(frozen=True)
class Pattern:
    """One line of a `.dockerignore`, compiled."""

    text: str
    exclusion: bool
    regex: re.Pattern[str]


def _class(pattern: str, i: int) -> tuple[str, int]:
    """The regex of a `[...]` class starting at `pattern[i] == "["`; the index after it."""
    j = i + 1
    out = "["
    if j < len(pattern) and pattern[j] == "^":
        out += "^"
        j += 1
    first = True
    while j < len(pattern) and (pattern[j] != "]" or first):
        ch = pattern[j]
        if ch == "\\" and j + 1 < len(pattern):
            j += 1
            ch = pattern[j]
        if ch == "/":
            raise PatternError(f"bad pattern {pattern!r}: '/' in a character class")
        out += re.escape(ch) if ch not in "-" else ch
        first = False
        j += 1
    if j >= len(pattern):
        raise PatternError(f"bad pattern {pattern!r}: unclosed '['")
    return out + "]", j + 1


def _compile(pattern: str, double_star: bool) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if double_star and pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            text, i = _class(pattern, i)
            out += text
            continue
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    try:
        return re.compile(out + "$", re.DOTALL)
    except re.error as exc:
        raise PatternError(f"bad pattern {pattern!r}: {exc}") from None


def clean(path: str) -> str:
    """A relative, cleaned path: `./a//b/` -> `a/b`, `/x` -> `x`, `` -> `.`."""
    cleaned = posixpath.normpath(path) if path else "."
    cleaned = cleaned.lstrip("/") or "."
    return cleaned


def path_match(pattern: str, path: str) -> bool:
    """Go's `filepath.Match`: the whole of `path` against `pattern` (no `**`)."""
    return bool(_compile(pattern, double_star=False).match(path))


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


class IgnoreRules:
    """The patterns of one `.dockerignore`, in order."""

    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
                if not line:
                    raise PatternError('illegal exclusion pattern: "!"')
            line = clean(line)
            self.patterns.append(Pattern(line, exclusion, _compile(line, double_star=True)))

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        return cls(text.splitlines())

    @property
    def has_exceptions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether the relative path `path` (or a folder holding it) is excluded."""
        path = clean(path)
        if path == "." or not self.patterns:
            return False
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = bool(pattern.regex.match(path))
            if not hit:
                hit = any(pattern.regex.match("/".join(parents[: i + 1]))
                          for i in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_reinclude_under(self, folder: str) -> bool:
        """Whether a walk must still look inside the excluded `folder`: Docker's rule, an
        exception pattern that starts with `folder/` (a wildcard in it does not count)."""
        prefix = clean(folder) + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)
