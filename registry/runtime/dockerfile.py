"""Parsing a Dockerfile as Docker's parser does, into stages of instructions. Pure.

- Parser directives (`# escape=\\``, `# syntax=...`, `# check=...`) only at the very top: the
  first line that is not one ends them. The escape character (`\\` or a backtick) continues
  a line when it ends it (trailing blanks allowed); comment lines inside a continued
  instruction are dropped, as are empty ones.
- An instruction is a case-insensitive keyword, then `--flag=value` words, then arguments
  in the form the keyword takes: exec (a JSON array of strings) or shell form for RUN, CMD,
  ENTRYPOINT and HEALTHCHECK CMD; a JSON array or words for COPY, ADD and VOLUME;
  `key=value` words (or the old `KEY value`) for ENV and LABEL; `name[=default]` for ARG.
- Nothing is substituted here: values keep their quotes until the builder substitutes
  variables (`shellwords`) with the stage's environment at that step.

Every error is a `DockerfileError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from registry.runtime.errors import DockerfileError

DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
KNOWN_DIRECTIVES = ("escape", "syntax", "check")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
FLAGS = {
    "FROM": ("platform",),
    "COPY": ("from", "chown", "chmod"),
    "ADD": ("chown", "chmod"),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}
BUILDKIT_ONLY_FLAGS = ("mount", "network", "security", "link", "parents", "exclude",
                       "checksum", "keep-git-dir")
SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE",
             "VOLUME", "CMD", "ENTRYPOINT", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "MAINTAINER")
EXACTLY_ONE = ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER")
Fail = Callable[[str], DockerfileError]


@dataclass(frozen=True)
class Instruction:
    """One instruction as written: keyword, flags and arguments, not yet substituted."""

    command: str  # upper case
    args: tuple[str, ...]  # unsubstituted; shell form is one string
    line: int
    text: str  # as written, continuations joined: what progress and history show
    flags: dict[str, str] = field(default_factory=dict)
    json: bool = False  # exec form (RUN, CMD, ENTRYPOINT, HEALTHCHECK CMD), JSON list
    pairs: tuple[tuple[str, str | None], ...] = ()  # ENV, LABEL, ARG


@dataclass
class Stage:
    """A FROM and the instructions after it, up to the next FROM."""

    index: int
    name: str | None  # lower case, as Docker compares them
    base: str  # the FROM image, unsubstituted
    source: Instruction  # the FROM
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """A parsed Dockerfile: its directives, the ARGs before the first FROM, its stages."""

    path: str
    escape: str
    syntax: str | None
    meta_args: list[Instruction]
    stages: list[Stage]

    @property
    def step_count(self) -> int:
        return len(self.meta_args) + sum(1 + len(s.instructions) for s in self.stages)

    def stage(self, name: str) -> Stage | None:
        """A stage by name or index, as `--from` and `--target` name them."""
        wanted = name.lower()
        for stage in self.stages:
            if stage.name == wanted or (stage.name is None and str(stage.index) == wanted):
                return stage
        if wanted.isdigit() and int(wanted) < len(self.stages):
            return self.stages[int(wanted)]
        return None


def parse(text: str, path: str = "Dockerfile") -> Dockerfile:
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    escape, syntax, first = _directives(lines, path)
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    instructions: list[Instruction] = []
    i = first
    while i < len(lines):
        start = i + 1
        line = lines[i].lstrip()
        i += 1
        if line.startswith("#"):
            continue
        line, done = _trim_continuation(line, continuation)
        if done and not line.strip():
            continue
        while not done and i < len(lines):
            raw = lines[i]
            i += 1
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
            more, done = _trim_continuation(raw, continuation)
            line += more
        instructions.append(_instruction(line, start, escape, path))
    return _stages(instructions, path, escape, syntax)


def _directives(lines: list[str], path: str) -> tuple[str, str | None, int]:
    seen: dict[str, str] = {}
    index = 0
    while index < len(lines):
        match = DIRECTIVE.match(lines[index].lstrip())
        if not match or match.group(1).lower() not in KNOWN_DIRECTIVES:
            break
        name = match.group(1).lower()
        if name in seen:
            raise DockerfileError(path, index + 1, f"only one {name} parser directive can be used")
        seen[name] = match.group(2)
        index += 1
    escape = seen.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(path, 1, f"invalid escape token {escape!r}: must be ` or \\")
    return escape, seen.get("syntax"), index


def _trim_continuation(line: str, pattern: re.Pattern[str]) -> tuple[str, bool]:
    if pattern.search(line):
        return pattern.sub("", line), False
    return line, True


def _flags(rest: str) -> tuple[list[str], str]:
    """Leading `--name[=value]` words (quotes and `\\` honoured) and what follows them."""
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if not rest.startswith("--", pos):
            return words, rest[pos:]
        word, quote = "", ""
        while pos < len(rest) and (quote or not rest[pos].isspace()):
            ch = rest[pos]
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            elif ch == "\\" and pos + 1 < len(rest):
                pos += 1
                word += rest[pos]
            else:
                word += ch
            pos += 1
        if word == "--":
            return words, rest[pos:]
        words.append(word)


def _instruction(line: str, number: int, escape: str, path: str) -> Instruction:
    def fail(message: str) -> DockerfileError:
        return DockerfileError(path, number, message)

    head = re.split(r"\s+", line.strip(), maxsplit=1)
    keyword = head[0].upper()
    flag_words, rest = _flags(head[1]) if len(head) == 2 else ([], "")
    rest = rest.strip()
    if keyword == "ONBUILD":
        raise fail("ONBUILD is not supported by this builder")
    if keyword not in SUPPORTED:
        raise fail(f"unknown instruction: {head[0]}")
    flags: dict[str, str] = {}
    for word in flag_words:
        name, sep, value = word[2:].partition("=")
        if name in BUILDKIT_ONLY_FLAGS:
            raise fail(f"{keyword} --{name} is not supported (a BuildKit feature)")
        if name not in FLAGS.get(keyword, ()):
            raise fail(f"unknown flag for {keyword}: --{name}")
        if name in flags:
            raise fail(f"duplicate flag specified: --{name}")
        if not sep or not value:
            raise fail(f"missing a value on flag --{name}")
        flags[name] = value
    args: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str | None], ...] = ()
    exec_form = False
    if keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
        args, exec_form = _maybe_json(rest, fail)
        if keyword == "SHELL" and not exec_form:
            raise fail("SHELL requires the arguments to be in JSON form")
        empty = not args or (keyword in ("RUN", "SHELL") and not any(args))
        if empty and not (exec_form and keyword in ("CMD", "ENTRYPOINT")):
            raise fail(f"{keyword} requires at least one argument")
    elif keyword in ("COPY", "ADD", "VOLUME"):
        listed, exec_form = _maybe_json(rest, fail)
        args = listed if exec_form else tuple(rest.split())
        if keyword != "VOLUME" and len(args) < 2:
            raise fail(f"{keyword} requires at least two arguments, but only {len(args)} "
                       "provided: the destination could not be determined")
        if keyword == "VOLUME" and (not args or not all(a.strip() for a in args)):
            raise fail("VOLUME specified can not be an empty string")
    elif keyword in ("ENV", "LABEL"):
        pairs = _name_values(rest, keyword, escape, fail)
    elif keyword == "ARG":
        pairs = _arg_pairs(rest, escape, fail)
    elif keyword in EXACTLY_ONE:
        if not rest:
            raise fail(f"{keyword} requires exactly one argument")
        args = (rest,)
    elif keyword in ("FROM", "EXPOSE"):
        args = tuple(rest.split())
        if keyword == "FROM" and not (len(args) == 1 or (len(args) == 3 and
                                                          args[1].upper() == "AS")):
            raise fail("FROM requires either one argument, or three: FROM <image> AS <name>")
        if not args:
            raise fail(f"{keyword} requires at least one argument")
    elif keyword == "HEALTHCHECK":
        args, exec_form = _healthcheck(rest, fail)
    return Instruction(keyword, args, number, line.strip(), flags, exec_form, pairs)


def _maybe_json(rest: str, fail: Fail) -> tuple[tuple[str, ...], bool]:
    """A JSON array of strings (exec form), else the whole text (shell form)."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise fail("when using JSON array syntax, arrays must be comprised of "
                           "strings only")
            return tuple(value), True
    return ((rest,) if rest else ()), False


def parse_words(rest: str, escape: str) -> list[str]:
    """Words split on white space outside quotes, keeping quotes and escapes in them (they
    go when the value is substituted), as Docker's `parseWords`."""
    words: list[str] = []
    word, quote, in_word, blank_ok = "", "", False, False
    pos = 0
    while pos < len(rest):
        ch = rest[pos]
        if not in_word and not quote:
            if ch.isspace():
                pos += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if pos + 1 == len(rest):
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        elif ch.isspace():
            if blank_ok or word:
                words.append(word)
            word, in_word, blank_ok = "", False, False
        else:
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == escape:
                if pos + 1 == len(rest):
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        pos += 1
    if in_word and (blank_ok or word):
        words.append(word)
    return words


def _name_values(rest: str, keyword: str, escape: str,
                 fail: Fail) -> tuple[tuple[str, str | None], ...]:
    words = parse_words(rest, escape)
    if not words:
        raise fail(f"{keyword} requires at least one argument")
    if "=" not in words[0]:  # the old form: KEY value with spaces
        parts = re.split(r"\s+", rest, maxsplit=1)
        if len(parts) < 2:
            raise fail(f"{keyword} must have two arguments")
        return ((parts[0], parts[1]),)
    pairs = []
    for word in words:
        if "=" not in word:
            raise fail(
                f"syntax error - can't find = in {word!r}: must be of the form name=value")
        key, _, value = word.partition("=")
        if not key:
            raise fail(f"{keyword} names cannot be blank")
        pairs.append((key, value))
    return tuple(pairs)


def _arg_pairs(rest: str, escape: str, fail: Fail) -> tuple[tuple[str, str | None], ...]:
    words = parse_words(rest, escape)
    if not words:
        raise fail("ARG requires at least one argument")
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, sep, value = word.partition("=")
        if not name:
            raise fail("ARG names cannot be blank")
        pairs.append((name, value if sep else None))
    return tuple(pairs)


def _healthcheck(rest: str, fail: Fail) -> tuple[tuple[str, ...], bool]:
    head = re.match(r"(\S*)\s*(.*)", rest, re.DOTALL)
    kind, command = (head.group(1).upper(), head.group(2)) if head else ("", "")
    if kind == "NONE":
        if command:
            raise fail("HEALTHCHECK NONE takes no arguments")
        return ("NONE",), False
    if kind != "CMD":
        raise fail(f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
    args, exec_form = _maybe_json(command, fail)
    if not args:
        raise fail("HEALTHCHECK CMD requires a command")
    return ("CMD", *args), exec_form


def _stages(instructions: list[Instruction], path: str, escape: str,
            syntax: str | None) -> Dockerfile:
    if not instructions:
        raise DockerfileError(path, 0, "the Dockerfile has no instructions")
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for inst in instructions:
        if inst.command == "FROM":
            name = inst.args[2].lower() if len(inst.args) == 3 else None
            if name is not None:
                if not STAGE_NAME.match(name):
                    raise DockerfileError(path, inst.line, f"invalid name for build stage: "
                                          f"{name!r}, it must start with a letter and hold only "
                                          "letters, digits, '-', '_' and '.'")
                if any(s.name == name for s in stages):
                    raise DockerfileError(path, inst.line, f"duplicate stage name {name!r}")
            stages.append(Stage(len(stages), name, inst.args[0], inst))
        elif not stages:
            if inst.command != "ARG":
                raise DockerfileError(path, inst.line, f"{inst.command} before the first FROM: "
                                      "only ARG may come before FROM")
            meta.append(inst)
        else:
            stages[-1].instructions.append(inst)
    if not stages:
        raise DockerfileError(path, instructions[-1].line, "no FROM: a Dockerfile needs a stage")
    return Dockerfile(path, escape, syntax, meta, stages)
