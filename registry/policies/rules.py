"""The rules of lifecycle policies, as data, and the pure functions that apply them.

Repository patterns are the grants' (`team-a/app`, `team-a/*`, `team-*/app`, `*`:
registry/auth/permissions.py). Tag patterns are comma-separated globs over tag names: `*`
any run of characters, `?` one character, everything else itself (`latest`, `v*`,
`release-?.*`). Globs, not regular expressions: a pattern is matched against a name the
pusher chooses, on the push path, and a glob cannot backtrack for ever.

A namespace is a repository name's first component: `team-a/app` and `team-a/tools/x` are
in `team-a`, `alpine` in `alpine`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.auth.permissions import pattern_matches

MAX_TAG_GLOBS = 1024  # characters of a comma-separated list
_TAG_GLOB = re.compile(r"^[A-Za-z0-9_.*?-]{1,128}\Z")


class RuleError(ValueError):
    """A rule that cannot be stored: a bad pattern, glob, size or duration."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What a repository keeps. A tag is kept when any `keep_*` rule keeps it (or an
    immutable rule protects it); the others are untagged. Without a `keep_*` rule no tag is
    untagged. `untagged_after`: manifests no tag reaches for that long are deleted."""

    pattern: str
    keep_last: int | None = None
    keep_tags: tuple[str, ...] = ()
    keep_pulled_within: int | None = None  # seconds
    keep_pushed_within: int | None = None  # seconds
    untagged_after: int | None = None  # seconds
    source: str = "database"  # or "config"

    @property
    def prunes_tags(self) -> bool:
        return any(
            value is not None and value != ()
            for value in (
                self.keep_last,
                self.keep_tags or None,
                self.keep_pulled_within,
                self.keep_pushed_within,
            )
        )


@dataclass(frozen=True, slots=True)
class ImmutableRule:
    """Tags matching `tags` in repositories matching `pattern` are never moved or deleted."""

    id: int | None  # None: from the config
    pattern: str
    tags: tuple[str, ...]

    def protects(self, repository: str, tag: str) -> bool:
        return pattern_matches(self.pattern, repository) and tags_match(self.tags, tag)

    def describe(self) -> str:
        where = f"rule {self.id}" if self.id is not None else "configured rule"
        return f"{where}: repositories {self.pattern!r}, tags {','.join(self.tags)!r}"


def parse_tag_globs(text: str | Sequence[str]) -> tuple[str, ...]:
    """`latest,v*` (or a list) as a tuple of globs, checked."""
    words = text.split(",") if isinstance(text, str) else list(text)
    globs = tuple(dict.fromkeys(w.strip() for w in words if isinstance(w, str) and w.strip()))
    if not globs or len(",".join(globs)) > MAX_TAG_GLOBS:
        raise RuleError(f"tag patterns are 1 to {MAX_TAG_GLOBS} characters of globs: {text!r}")
    for glob in globs:
        if not _TAG_GLOB.fullmatch(glob):
            raise RuleError(
                f"a tag pattern is tag characters (A-Z a-z 0-9 _ . -) with * and ?: {glob!r}"
            )
    return globs


def glob_matches(glob: str, text: str) -> bool:
    """Whether `text` matches `glob` (`*` and `?`), in O(len(glob) * len(text)) at worst:
    the classic wildcard walk that, on a mismatch, retries only from the last `*`."""
    g = t = 0
    star, resume = -1, 0
    while t < len(text):
        if g < len(glob) and (glob[g] == "?" or glob[g] == text[t]):
            g += 1
            t += 1
        elif g < len(glob) and glob[g] == "*":
            star, resume = g, t
            g += 1
        elif star >= 0:
            resume += 1
            g, t = star + 1, resume
        else:
            return False
    return all(c == "*" for c in glob[g:])


def tags_match(globs: Iterable[str], tag: str) -> bool:
    return any(glob_matches(glob, tag) for glob in globs)


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def governing(policies: Iterable[RetentionPolicy], repository: str) -> RetentionPolicy | None:
    """The policy of the longest pattern matching `repository` (a database policy before a
    configured one of the same pattern), or None."""
    matching = [p for p in policies if pattern_matches(p.pattern, repository)]
    if not matching:
        return None
    return max(
        matching, key=lambda p: (len(p.pattern), -p.pattern.count("*"), p.source == "database")
    )


def protecting_rule(
    rules: Iterable[ImmutableRule], repository: str, tag: str
) -> ImmutableRule | None:
    return next((r for r in rules if r.protects(repository, tag)), None)


# Sizes and durations, as people write them ------------------------------------------------

_SIZE = re.compile(r"^([0-9]{1,20})\s*([kmgtp]i?b?|b)?\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = _SIZE_UNITS[f"{_letter}b"] = 1000**_i
    _SIZE_UNITS[f"{_letter}i"] = _SIZE_UNITS[f"{_letter}ib"] = 1024**_i
MAX_SIZE = 2**62

_DURATION = re.compile(r"^([0-9]{1,9})([smhdw])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION = 100 * 366 * 86400


def parse_size(text: str | int) -> int:
    """Bytes from `10GiB`, `500MB`, `1.5`-free integers with an optional unit (k, M, G, T,
    P: powers of 1000; Ki, Mi, Gi...: of 1024), or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text).strip())
        if match is None:
            raise RuleError(f"sizes look like 10GiB, 500MB or 1048576; got {str(text)[:80]!r}")
        value = int(match[1]) * _SIZE_UNITS[(match[2] or "").lower()]
    if not 0 < value <= MAX_SIZE:
        raise RuleError(f"a size is more than 0 and at most 2^62 bytes; got {str(text)[:80]!r}")
    return value


def format_size(size: int) -> str:
    """`1.5 GiB`, `512 B`: for messages and listings."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_duration(text: str | int) -> int:
    """Seconds from `30d`, `12h`, `90m`, `2w`, `3600s` (or a number of seconds)."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _DURATION.fullmatch(str(text).strip().lower())
        if match is None:
            raise RuleError(f"durations look like 30d, 12h, 90m or 2w; got {str(text)[:80]!r}")
        seconds = int(match[1]) * _SECONDS[match[2]]
    if not 0 <= seconds <= MAX_DURATION:
        raise RuleError(f"a duration is 0 to 100 years; got {str(text)[:80]!r}")
    return seconds


def format_duration(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
