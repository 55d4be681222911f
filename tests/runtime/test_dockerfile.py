"""The Dockerfile parser, pure: lines, directives, forms, stages, and errors with lines."""

from __future__ import annotations

import pytest

from registry.runtime.dockerfile import Instruction, parse, parse_words
from registry.runtime.errors import DockerfileError


def only(text: str) -> list[Instruction]:
    return parse(text).stages[-1].instructions


def test_continuations_comments_and_blank_lines() -> None:
    df = parse("FROM scratch\n"
               "RUN echo one \\\n"
               "  # a comment inside is dropped\n"
               "\n"
               "    two \\   \n"
               "three\n"
               "  # a comment between instructions\n"
               "ENV A=1\r\n")
    run, env = df.stages[0].instructions
    assert run.args == ("echo one     two three",)
    assert (run.line, env.line) == (2, 8)
    assert run.text == "RUN echo one     two three"
    assert env.pairs == (("A", "1"),)


def test_escape_directive_changes_the_continuation_and_escape() -> None:
    df = parse("# escape=`\n"
               "FROM scratch\n"
               "RUN dir c:\\windows `\n"
               "  /w\n"
               "ENV P=a`\"b C=c\\d\n")
    run, env = df.stages[0].instructions
    assert df.escape == "`"
    assert run.args == ("dir c:\\windows   /w",)
    assert env.pairs == (("P", 'a`"b'), ("C", "c\\d"))


def test_directives_only_at_the_top() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# escape=\\\nFROM scratch\n")
    assert df.syntax == "docker/dockerfile:1" and df.escape == "\\"
    late = parse("FROM scratch\n# escape=`\nRUN a \\\n b\n")
    assert late.escape == "\\" and late.stages[0].instructions[0].args == ("a  b",)
    after_comment = parse("# hello\n# escape=`\nFROM scratch\nRUN a \\\n b\n")
    assert after_comment.escape == "\\"
    with pytest.raises(DockerfileError, match="Dockerfile:2: only one escape"):
        parse("# escape=`\n# escape=\\\nFROM scratch\n")
    with pytest.raises(DockerfileError, match="invalid escape token"):
        parse("# escape=x\nFROM scratch\n")


def test_exec_and_shell_forms() -> None:
    run_exec, run_shell, cmd, entry, shell, bad_json = only(
        'FROM scratch\nRUN ["echo", "a b"]\nRUN [not json\nCMD ["x"]\n'
        "ENTRYPOINT exec top -b\n"
        'SHELL ["/bin/bash", "-c"]\nRUN ["a", \'b\']\n')
    assert (run_exec.args, run_exec.json) == (("echo", "a b"), True)
    assert (run_shell.args, run_shell.json) == (("[not json",), False)
    assert (cmd.args, cmd.json) == (("x",), True)
    assert (entry.args, entry.json) == (("exec top -b",), False)
    assert shell.args == ("/bin/bash", "-c") and shell.json
    assert bad_json.args == ("[\"a\", 'b']",) and not bad_json.json  # not JSON: shell form
    with pytest.raises(DockerfileError, match="Dockerfile:2: when using JSON array syntax"):
        parse('FROM scratch\nCMD ["a", 1]\n')
    with pytest.raises(DockerfileError, match="SHELL requires the arguments to be in JSON"):
        parse("FROM scratch\nSHELL /bin/bash -c\n")
    assert only("FROM scratch\nENTRYPOINT []\n")[0].args == ()


def test_env_label_and_arg_forms() -> None:
    env, old, label, arg = only(
        'FROM scratch\nENV A="two words" B=c\\ d C=\'$x\'\nENV OLD some value  here\n'
        'LABEL "com.example.key"="v 1" other=2\nARG NAME DEF=x EMPTY=\n')
    assert env.pairs == (("A", '"two words"'), ("B", "c\\ d"), ("C", "'$x'"))
    assert old.pairs == (("OLD", "some value  here"),)
    assert label.pairs == (('"com.example.key"', '"v 1"'), ("other", "2"))
    assert arg.pairs == (("NAME", None), ("DEF", "x"), ("EMPTY", ""))
    with pytest.raises(DockerfileError, match="Dockerfile:2: syntax error - can't find ="):
        parse("FROM scratch\nENV A=1 B\n")
    with pytest.raises(DockerfileError, match="ENV must have two arguments"):
        parse("FROM scratch\nENV ONLY\n")


def test_parse_words_keeps_quotes_for_substitution() -> None:
    assert parse_words('a="b c" d\\ e \'f g\'', "\\") == ['a="b c"', "d\\ e", "'f g'"]
    assert parse_words("x \\", "\\") == ["x"]


def test_flags() -> None:
    df = parse("FROM --platform=linux/arm64 x AS one\n"
               "COPY --from=one --chown=1:2 --chmod=755 a b /c/\n")
    frm, copy = df.stages[0].source, df.stages[0].instructions[0]
    assert copy.flags == {"from": "one", "chown": "1:2", "chmod": "755"}
    assert copy.args == ("a", "b", "/c/")
    assert frm.flags == {"platform": "linux/arm64"} and frm.args == ("x", "AS", "one")
    for text, message in [
        ("COPY --nope=1 a b", "unknown flag for COPY: --nope"),
        ("ADD --from=x a b", "unknown flag for ADD: --from"),
        ("COPY --chown a b", "missing a value on flag --chown"),
        ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
        ("RUN --mount=type=cache,target=/x make", "RUN --mount is not supported"),
    ]:
        with pytest.raises(DockerfileError, match=f"Dockerfile:2: {message}"):
            parse(f"FROM scratch\n{text}\n")


def test_stages_meta_args_and_steps() -> None:
    df = parse("ARG V=1\nARG BASE\nFROM img:${V} AS Build\nRUN x\nFROM scratch\n"
               "COPY --from=build /a /a\nFROM build\n")
    assert [a.pairs for a in df.meta_args] == [(("V", "1"),), (("BASE", None),)]
    assert [(s.index, s.name, s.base) for s in df.stages] == [
        (0, "build", "img:${V}"), (1, None, "scratch"), (2, None, "build")]
    assert df.step_count == 7
    assert df.stage("BUILD") is df.stages[0] and df.stage("1") is df.stages[1]
    assert df.stage("nope") is None


def test_healthcheck_forms() -> None:
    check, none, exec_check = only(
        "FROM scratch\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/ || exit 1\n"
        'HEALTHCHECK NONE\nHEALTHCHECK CMD ["/bin/check", "--quick"]\n')
    assert check.args == ("CMD", "curl -f http://x/ || exit 1") and not check.json
    assert check.flags == {"interval": "5s", "retries": "3"}
    assert none.args == ("NONE",)
    assert exec_check.args == ("CMD", "/bin/check", "--quick") and exec_check.json
    with pytest.raises(DockerfileError, match="HEALTHCHECK NONE takes no arguments"):
        parse("FROM scratch\nHEALTHCHECK NONE x\n")
    with pytest.raises(DockerfileError, match="unknown type 'EXEC' in HEALTHCHECK"):
        parse("FROM scratch\nHEALTHCHECK EXEC x\n")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("FROM scratch\nFROB x\n", 2, "unknown instruction: FROB"),
    ("FROM scratch\nONBUILD RUN x\n", 2, "ONBUILD is not supported"),
    ("RUN x\nFROM scratch\n", 1, "RUN before the first FROM"),
    ("# only a comment\n\n", 0, "no instructions"),
    ("FROM a b\n", 1, "FROM requires either one argument, or three"),
    ("FROM a AS 1x\n", 1, "invalid name for build stage"),
    ("FROM a AS x\nFROM b AS X\n", 2, "duplicate stage name 'x'"),
    ("FROM scratch\nCOPY onlyone\n", 2, "COPY requires at least two arguments"),
    ("FROM scratch\nRUN\n", 2, "RUN requires at least one argument"),
    ("FROM scratch\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    ("FROM scratch\nVOLUME [\"\"]\n", 2, "VOLUME specified can not be an empty string"),
    ("FROM scratch\nARG =x\n", 2, "ARG names cannot be blank"),
    ("FROM scratch\n\nRUN a \\\n  b\nEXPOSE\n", 5, "EXPOSE requires at least one argument"),
])
def test_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse(text, "ctx/Dockerfile.dev")
    assert caught.value.line == line
    assert message in caught.value.message
    prefix = f"ctx/Dockerfile.dev:{line}: " if line else "ctx/Dockerfile.dev: "
    assert caught.value.message.startswith(prefix)
