"""Variable substitution and word splitting in Dockerfile arguments, as Docker does them. Pure.

Docker does not run a shell for `ENV`, `COPY`, `WORKDIR`... but mimics one: `$VAR` and
`${VAR}`, `${VAR:-default}` and `${VAR-default}` (the default when unset, or with `:`
also when empty), `${VAR:+alt}` and `${VAR+alt}` (the alternative when set), `${VAR:?msg}`
and `${VAR?msg}` (an error), single quotes taking everything literally, double quotes
substituting inside, and the escape character (`\\` or the `# escape` directive's
backtick) escaping the next character outside quotes, and only `"`, `$` and itself inside
double quotes. Unset variables become empty. A `$` not followed by a name stays a `$`.

`process_word` gives one string (quotes removed, spaces kept); `process_words` splits the
result into words on unquoted white space, as `EXPOSE` and `VOLUME` need.
"""

from __future__ import annotations

from collections.abc import Mapping

SPECIAL_PARAMETERS = frozenset("@*#?-$!0")


class SubstitutionError(ValueError):
    """A malformed substitution: `${}`, a missing `}`, an unclosed quote, `${X:?msg}`."""


class _Words:
    """The words of a result, built alongside it (Docker's `wordsStruct`)."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Scanner:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch

    def process(self, stop: str = "") -> tuple[str, list[str]]:
        """Up to `stop` (consumed) or the end: (the result, its words)."""
        result: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.result()
            if ch == "$":
                value = self.dollar()
                result.append(value)
                words.add_string(value)
            elif ch == "'":
                value = self.single_quote()
                result.append(value)
                words.add_raw(value)
            elif ch == '"':
                value = self.double_quote()
                result.append(value)
                words.add_raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise SubstitutionError(
                f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def single_quote(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.next()
            if not ch:
                raise SubstitutionError(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise SubstitutionError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdigit():
                while self.peek().isdigit():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in SPECIAL_PARAMETERS:
                return self.next()
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        if not self.peek():
            raise SubstitutionError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise SubstitutionError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if not ch:
            raise SubstitutionError("syntax error: missing '}'")
        if ch == "}":
            return self.env.get(name, "")
        modifier, null_is_unset = ch, False
        if ch == ":":
            null_is_unset = True
            modifier = self.next()
        if modifier not in ("-", "+", "?"):
            raise SubstitutionError(f"unsupported modifier ({ch}{modifier if ch == ':' else ''})"
                                    " in substitution")
        try:
            word, _ = self.process("}")
        except SubstitutionError:
            if self.pos >= len(self.text):
                raise SubstitutionError("syntax error: missing '}'") from None
            raise
        is_set = name in self.env
        value = self.env.get(name, "")
        missing = not is_set or (null_is_unset and value == "")
        if modifier == "-":
            return word if missing else value
        if modifier == "+":
            return "" if missing else word
        if not is_set:
            raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
        if missing:
            raise SubstitutionError(f"{name}: {word or 'is not allowed to be empty'}")
        return value


def process_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """`text` with its variables substituted and its quotes and escapes removed."""
    return _Scanner(text, env, escape).process()[0]


def process_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """The same, split into words on white space outside quotes."""
    return _Scanner(text, env, escape).process()[1]


def env_map(env: list[str]) -> dict[str, str]:
    """`["K=v", ...]` as a mapping; a later entry for the same key wins."""
    out: dict[str, str] = {}
    for entry in env:
        key, _, value = entry.partition("=")
        out[key] = value
    return out
