"""`registry build` end to end, as root: instructions, config, layers, cache and errors."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from registry.runtime.store import Store
from runtime.buildhelp import build, config_of, push_base, run_in, write_context
from runtime.imaging import Pusher
from runtime.runner import CLI, PROJECT, ROOT, cli

from support.server import RegistryServer

pytestmark = pytest.mark.requires(ROOT, "building needs root")


@pytest.fixture(scope="session")
def base(registry_server: RegistryServer, pusher: Pusher) -> str:
    return f"{registry_server.host}/{push_base(pusher)}"


def test_instructions_config_and_run(base: str, store: Store, tmp_path: Path,
                                     registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"""# syntax=docker/dockerfile:1
ARG BASE={base}
FROM $BASE
ARG GREETING=hello
ENV APP_HOME=/srv/app MSG="$GREETING world" \\
    RAW='$GREETING'
LABEL org.example.name="demo app" version=${{VERSION:-1.0}}
WORKDIR $APP_HOME
COPY --chown=app:staff app.conf conf/
COPY --chmod=0700 run.sh ./
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "$MSG from $(pwd) as $(id -un)" > greeting
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER app:staff
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD test -f /srv/app/greeting
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat greeting; id; echo $MSG; ls -l conf/app.conf run.sh | cut -c1-10"]
""",
        "app.conf": "key=value\n",
        "run.sh": "#!/bin/sh\necho run\n",
    })
    ref = f"{registry_server.host}/build/all:v1"
    done = build(context, "-t", ref, "--build-arg", "GREETING=hi")
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"Step 1/17 : ARG BASE={base}" in done.stdout
    assert done.stdout.count(" ---> Running in ") == 1
    assert f"Successfully tagged {ref}" in done.stdout
    record, config = config_of(store, ref)
    assert done.stdout.strip().endswith(f"Successfully tagged {ref}")
    assert f"Successfully built {record.id[7:19]}" in done.stdout
    run = config["config"]
    assert run["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "APP_HOME=/srv/app", "MSG=hi world", "RAW=$GREETING"]
    assert run["Labels"] == {"org.example.name": "demo app", "version": "1.0"}
    assert run["WorkingDir"] == "/srv/app" and run["User"] == "app:staff"
    assert run["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert run["Volumes"] == {"/data": {}}
    assert run["StopSignal"] == "SIGQUIT"
    assert run["Healthcheck"] == {"Test": ["CMD-SHELL", "test -f /srv/app/greeting"],
                                  "Interval": 30_000_000_000, "Timeout": 3_000_000_000,
                                  "Retries": 2}
    assert run["Shell"] == ["/bin/sh", "-e", "-c"]
    assert run["Entrypoint"] == ["/bin/sh", "-c"]
    history = config["history"]  # the base image has none of its own
    assert len(history) == 15
    layered = [h["created_by"] for h in history if not h.get("empty_layer")]
    assert len(layered) == len(config["rootfs"]["diff_ids"]) - 1 == 4  # WORKDIR, 2 COPY, RUN
    assert any(h.startswith("|1 GREETING=hi /bin/sh -e -c echo") for h in layered)
    assert len(record.layers) == 5 and record.manifest_media_type.endswith("v2+json")

    out = cli("run", "--rm", "--network", "none", ref, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "hi world from /srv/app as root",
        "uid=1000(app) gid=50(staff) groups=50(staff)",
        "hi world",
        "-rw-r--r--",
        "-rwx------",
    ]
    owners = run_in(ref, "stat -c '%U:%G %a %n' conf conf/app.conf run.sh greeting /srv/app",
                    "-u", "0")
    assert owners.stdout.splitlines() == [
        "app:staff 755 conf", "app:staff 644 conf/app.conf", "root:root 700 run.sh",
        "root:root 644 greeting", "root:root 755 /srv/app"]


def test_cache(base: str, store: Store, tmp_path: Path, registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base}\nCOPY one.txt /one.txt\nRUN echo ran > /ran\n"
                      "COPY two.txt /two.txt\nRUN cat /one.txt /two.txt > /both\n"
                      "CMD [\"cat\", \"/both\"]\n",
        "one.txt": "1\n", "two.txt": "2\n",
    })
    ref = f"{registry_server.host}/build/cache:v1"
    first = build(context, "-t", ref)
    assert first.returncode == 0, first.stderr
    layers = set(store.layer_ids())
    image = config_of(store, ref)[0].id

    again = build(context, "-t", ref)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" ---> Using cache") == 5
    assert " ---> Running in" not in again.stdout
    assert set(store.layer_ids()) == layers and config_of(store, ref)[0].id == image

    os.utime(context / "one.txt", (1, 1))  # times alone change nothing, as Docker's cache
    assert build(context, "-t", ref).stdout.count(" ---> Using cache") == 5

    (context / "two.txt").write_text("two\n")
    changed = build(context, "-t", ref)
    assert changed.returncode == 0, changed.stderr
    steps = changed.stdout.split("Step ")[1:]
    assert [" ---> Using cache" in s for s in steps] == [False, True, True, False, False, False]
    assert changed.stdout.count(" ---> Running in") == 1
    assert len(set(store.layer_ids()) - layers) == 2
    out = run_in(ref, "cat /both; cat /ran")
    assert out.stdout == "1\ntwo\nran\n"

    # same size, same mtime, other bytes: the remembered digest is not trusted (ctime moved)
    before = (context / "one.txt").stat()
    (context / "one.txt").write_text("9\n")
    os.utime(context / "one.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    sneaky = build(context, "-t", ref)
    assert sneaky.stdout.count(" ---> Using cache") == 0, sneaky.stdout
    assert run_in(ref, "cat /both").stdout == "9\ntwo\n"

    fresh = build(context, "-t", ref, "--no-cache")
    assert " ---> Using cache" not in fresh.stdout
    assert fresh.stdout.count(" ---> Running in") == 2


@pytest.mark.parametrize(("dockerfile", "files", "line", "message"), [
    ("FROM {base}\nRUN true\nFROB x\n", {}, 3, "unknown instruction: FROB"),
    ("FROM {base}\nENV A=1\nRUN echo before; exit 3\n", {}, 3,
     "the command '/bin/sh -c echo before; exit 3' returned a non-zero code: 3"),
    ("FROM {base}\nCOPY there.txt missing.txt /\n", {"there.txt": "x"}, 2,
     "COPY failed: file not found in build context or excluded by .dockerignore: "
     "stat missing.txt: file does not exist"),
    ("FROM {base}\nCOPY *.none /\n", {}, 2, "COPY failed: no source files were specified"),
    ("FROM {base}\nCOPY ../outside /\n", {}, 2,
     "COPY failed: forbidden path outside the build context: ../outside"),
    ("FROM {base}\nADD https://example.com/x.tgz /\n", {}, 2, "ADD from a URL is not supported"),
    ("FROM {base}\nCOPY a b /notadir\n", {"a": "", "b": ""}, 2,
     "the destination must be a directory and end with a /"),
    ("FROM {base}\nRUN [\"/no/such/tool\"]\n", {}, 2, "could not start"),
    ("FROM {base}\nCOPY --chown=nosuch a /a\n", {"a": ""}, 2, "no such user: nosuch"),
    ("FROM {base}\nUSER ${{X:?is required}}\n", {}, 2, "X: is required"),
    ("FROM {base}\nSTOPSIGNAL SIGNOPE\n", {}, 2, "invalid signal: SIGNOPE"),
    ("FROM {base}\nCOPY --from=later /x /x\nFROM {base} AS later\n", {}, 2,
     "a stage can only copy from an earlier one"),
])
def test_build_errors_name_file_line_and_cause(
        base: str, store: Store, tmp_path: Path, dockerfile: str, files: dict[str, str],
        line: int, message: str) -> None:
    context = write_context(tmp_path / "ctx", {**files,
                                               "Dockerfile": dockerfile.format(base=base)})
    done = build(context)
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: Dockerfile:{line}: "), done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    if "exit 3" in dockerfile:
        assert "before\n" in done.stdout


def test_multi_stage_target_args_and_dockerfile_flag(
        base: str, store: Store, tmp_path: Path, registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {"src.txt": "source\n"})
    dockerfile = write_context(tmp_path / "elsewhere", {"Build.df": f"""
ARG TAG=latest
FROM {base.rsplit(':', 1)[0]}:$TAG AS builder
ARG SUFFIX
COPY src.txt /work/
RUN cat /work/src.txt > /work/out && echo "-$SUFFIX" >> /work/out
FROM builder AS tester
RUN echo tested > /tested
FROM scratch
COPY --from=builder /work/out /out
COPY --from=0 /bin/busybox /bin/busybox
CMD ["/bin/busybox", "cat", "/out"]
"""}) / "Build.df"
    ref = f"{registry_server.host}/build/multi:v1"
    done = build(context, "-f", str(dockerfile), "-t", ref, "--build-arg", "SUFFIX=x",
                 "--build-arg", "UNUSED=1")
    assert done.returncode == 0, done.stderr
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in done.stdout
    record, config = config_of(store, ref)
    assert len(record.layers) == 2 and config["config"]["Cmd"] == ["/bin/busybox", "cat", "/out"]
    out = cli("run", "--rm", ref, timeout=120)
    assert (out.returncode, out.stdout) == (0, "source\n-x\n")
    target = build(context, "-f", str(dockerfile), "-t", f"{ref}-tester", "--target", "tester")
    assert target.returncode == 0 and "Step 8/" not in target.stdout
    assert run_in(f"{ref}-tester", "cat /tested /work/out").stdout == "tested\nsource\n-\n"
    missing = build(context, "-f", str(dockerfile), "--target", "nope")
    assert missing.returncode == 1 and "failed to reach build target nope" in missing.stderr


def test_dockerignore_globs_and_symlinks_in_the_context(
        base: str, store: Store, tmp_path: Path, registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base}\nCOPY . /all/\nCOPY *.txt /txt/\nCOPY docs /docs/\n",
        ".dockerignore": "*.log\nsecret*\ndocs\n!docs/keep.md\nbuild/**\n",
        "a.txt": "a", "b.txt": "b", "c.md": "c", "x.log": "log", "secret.key": "k",
        "docs/keep.md": "keep", "docs/drop.md": "drop", "build/out/bin": "bin",
        "sub/deep.txt": "deep",
    })
    (context / "link").symlink_to("sub/deep.txt")
    ref = f"{registry_server.host}/build/ignore:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    listing = run_in(ref, "cd /all && find . | sort; ls /txt; ls /docs; readlink /all/link")
    assert listing.stdout.split() == [
        ".", "./.dockerignore", "./Dockerfile", "./a.txt", "./b.txt", "./build", "./c.md",
        "./docs", "./docs/keep.md", "./link", "./sub", "./sub/deep.txt",
        "a.txt", "b.txt", "keep.md", "sub/deep.txt"]


def archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, uid in (("pkg/bin/tool", b"#!/bin/sh\necho tool\n", 1000),
                                ("pkg/README", b"read me\n", 0)):
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, 50, 0o755
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return {"tar": raw, "gz": gzip.compress(raw), "bz2": bz2.compress(raw),
            "xz": lzma.compress(raw)}[kind]


def test_add_unpacks_local_archives_keeping_owners(
        base: str, store: Store, tmp_path: Path, registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base}\nADD plain.tar /p/\nADD pkg.tgz /g\nADD pkg.tbz /b/\n"
                      "ADD pkg.txz /x/\nADD notes.txt /n/\nADD --chown=1000 notes.txt /c\n",
        "plain.tar": archive("tar"), "pkg.tgz": archive("gz"), "pkg.tbz": archive("bz2"),
        "pkg.txz": archive("xz"), "notes.txt": "just a file\n",
    })
    ref = f"{registry_server.host}/build/add:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    out = run_in(ref, "for d in /p /g /b /x; do stat -c '%u:%g %a' $d/pkg/bin/tool; "
                 "$d/pkg/bin/tool; done; cat /n/notes.txt; stat -c %u /c")
    assert out.stdout.splitlines() == ["1000:50 755", "tool"] * 4 + ["just a file", "1000"]


def test_layers_record_deletions_and_volume_writes_are_dropped(
        base: str, store: Store, tmp_path: Path, registry_server: RegistryServer) -> None:
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""FROM {base}
RUN mkdir -p /d/old && touch /d/old/x /gone && ln /bin/busybox /bin/hard
RUN rm /gone && rm -rf /d/old && mkdir /d/old && touch /d/old/new
VOLUME /data
RUN echo dropped > /data/file && echo kept > /kept
"""})
    ref = f"{registry_server.host}/build/layers:v1"
    done = build(context, "-t", ref)
    assert done.returncode == 0, done.stderr
    record, _ = config_of(store, ref)
    with tarfile.open(store.blob_path(record.layers[2])) as tar:
        names = tar.getnames()
    assert ".wh.gone" in names and "d/old/.wh..wh..opq" in names
    plain = [n for n in names if ".wh." not in n]
    assert plain == sorted(plain, key=lambda n: n.split("/"))
    assert names.index("d/old/.wh..wh..opq") == names.index("d/old") + 1
    with tarfile.open(store.blob_path(record.layers[1])) as tar:
        # only what the command did: no /proc, /sys, /dev or /etc/hosts of the runtime's
        assert sorted(tar.getnames()) == ["bin", "bin/busybox", "bin/hard", "d", "d/old",
                                          "d/old/x", "gone"]
        assert tar.getmember("bin/hard").islnk() or tar.getmember("bin/busybox").islnk()
    with tarfile.open(store.blob_path(record.layers[3])) as tar:
        assert "kept" in tar.getnames() and not any(n.startswith("data/") for n in
                                                    tar.getnames())
    out = run_in(ref, "ls /d/old; test -e /gone || echo gone; ls /data; cat /kept")
    assert out.stdout == "new\ngone\nkept\n"


def test_arg_scoping(base: str, store: Store, tmp_path: Path,
                     registry_server: RegistryServer) -> None:
    """ARGs before FROM are seen by FROM only, until a stage declares them again (then with
    their value); an ARG is empty before its line; ENV wins over an ARG of the same name;
    a stage's ARGs end with it; RUN sees them in its environment, not the image's config."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""ARG WHERE=meta
ARG IMAGE={base}
FROM $IMAGE AS first
RUN echo "before=[$LATE] where=[$WHERE]" > /args
ARG LATE=late
ARG WHERE
ENV SHADOW=env
ARG SHADOW=arg
RUN echo "late=[$LATE] where=[$WHERE] shadow=[$SHADOW]" >> /args
FROM first
RUN echo "next=[$LATE]" >> /args
"""})
    ref = f"{registry_server.host}/build/args:v1"
    done = build(context, "-t", ref, "--build-arg", "LATE=given")
    assert done.returncode == 0, done.stderr
    assert run_in(ref, "cat /args; env | grep -c '^LATE=' || true").stdout.splitlines() == [
        "before=[] where=[]", "late=[given] where=[meta] shadow=[env]", "next=[]", "0"]


def test_ctrl_c_stops_the_build_and_its_container(
        base: str, store: Store, tmp_path: Path) -> None:
    """One Ctrl-C stops a build as it stops `docker build`: the RUN's container is killed
    (its shell, pid 1 of its namespace, would not die of SIGINT), nothing is left behind."""
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base}\nRUN echo started; sleep 60; echo finished\n"})
    process = subprocess.Popen([*CLI, "build", "--no-cache", str(context)], cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line == "started\n":
                break
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and time.monotonic() - started < 10
    assert "finished" not in out and "Error: interrupted" in err
    assert cli("ps", "-aq").stdout == ""
    assert list((store.root / "tmp").iterdir()) == []


def test_copy_layers_are_reproducible(base: str, store: Store, tmp_path: Path,
                                      registry_server: RegistryServer) -> None:
    """The same sources over the same parent give the same COPY and ADD layers, byte for
    byte, even built again from nothing (`--no-cache`): entries sorted, the sources' times,
    folders made by the copy dated as their source, existing ones keeping their time."""
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {base}\nCOPY tree /opt/app/\nCOPY one.txt /etc/\n"
                      "ADD bundle.tar /srv/\nCOPY --chown=1000:50 one.txt /new/deep/\n",
        "tree/a/b.txt": "b", "tree/c.txt": "c", "one.txt": "1", "bundle.tar": archive("tar")})
    ref = f"{registry_server.host}/build/repro:v1"
    first = build(context, "-t", ref)
    assert first.returncode == 0, first.stderr
    layers = config_of(store, ref)[0].layers
    time.sleep(1.1)  # a copy that took "now" for a time would show it
    again = build(context, "-t", ref, "--no-cache")
    assert again.returncode == 0, again.stderr
    assert config_of(store, ref)[0].layers == layers and len(layers) == 5
