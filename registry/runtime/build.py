"""`build`: a Dockerfile and its context into an image of the local store, as Docker's
classic builder makes it and says it (`Step 1/7 : FROM ...`, ` ---> Using cache`,
` ---> 1a2b3c4d5e6f`, `Successfully built ...`, `Successfully tagged ...`).

Stages run in order up to `--target` (all of them, as the classic builder does). Each
instruction is one step: substitution (`shellwords`) with the stage's environment (its
Env, then the ARGs declared in it, whose values come from `--build-arg` or their
defaults; FROM sees only the ARGs before the first FROM), a cache lookup (`buildcache`),
then either a new config (metadata instructions) or a new layer as well (`buildsteps`).
The result is stored as a pulled image is: config, manifest (Docker schema2, or OCI when
a base layer is not gzip) and layer blobs, unpacked layers, and an image record with the
`-t` references, so `run` runs it and `push` pushes it.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.oci.manifest import Platform
from registry.runtime import buildconfig as bc
from registry.runtime.buildcache import BuildCache, FileDigests
from registry.runtime.buildconfig import ImageState, LayerRef
from registry.runtime.buildcontext import CopyOptions, SourceRoot, content_key
from registry.runtime.buildimage import from_record, store_image
from registry.runtime.dockerfile import Dockerfile, Instruction, Stage
from registry.runtime.errors import BuildFailure, DockerfileError, RuntimeFailure
from registry.runtime.images import ImageIndex, ImageRecord
from registry.runtime.platform import format_platform, host_platform, parse_platform
from registry.runtime.references import parse_reference
from registry.runtime.shellwords import SubstitutionError, env_map, process_word, process_words
from registry.runtime.store import Store

if TYPE_CHECKING:
    from rich.console import Console

# The steps that run containers and mount overlays (`buildsteps`) and the HTTP client
# (`pull`) are imported where a step misses the cache or an image is missing: a build that
# is all cache hits does not pay for loading them.
METADATA = ("ENV", "LABEL", "USER", "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT", "SHELL",
            "STOPSIGNAL", "HEALTHCHECK", "MAINTAINER")


@dataclass
class BuildOptions:
    """What `registry build` was asked: the context, Dockerfile, tags and flags."""

    context: Path
    dockerfile: Dockerfile
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    platform: Platform | None = None


@dataclass
class _StageRun:
    """A stage being built: its state, its ARGs, whether it set CMD."""

    spec: Stage
    state: ImageState
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False

    def env(self) -> dict[str, str]:
        """What `$VAR` sees: the stage's Env, then its ARGs that Env does not set."""
        env = env_map(list(self.state.run.get("Env") or []))
        for name, value in self.args.items():
            if value is not None and name not in env:
                env[name] = value
        return env

    def arg_env(self) -> list[str]:
        env = env_map(list(self.state.run.get("Env") or []))
        return [f"{k}={v}" for k, v in sorted(self.args.items()) if v is not None and k not in env]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Builder:
    """One build: `build()` runs the stages and stores the image (see the module docstring).
    `say` prints a line of progress; `console` makes where a pull shows its bars."""

    def __init__(self, store: Store, options: BuildOptions,
                 say: Callable[[str], None] | None = None,
                 console: Callable[[], Console] | None = None) -> None:
        self.store = store
        self.options = options
        self.df = options.dockerfile
        self.cache = BuildCache(store)
        self.file_digests = FileDigests(store)
        self.say = say or (lambda line: print(line, flush=True))
        self._make_console = console
        self._console: Console | None = None
        self.platform = options.platform or host_platform()
        self.meta: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.stages: list[_StageRun] = []
        self.step = 0

    # --- the whole build -------------------------------------------------------------------

    def build(self) -> ImageRecord:
        try:
            return self._build()
        finally:
            self.file_digests.save()

    def _build(self) -> ImageRecord:
        target = self._target()
        for inst in self.df.meta_args:
            self._announce(inst)
            for name, default in inst.pairs:
                self.meta[name] = self._arg_value(name, default, env_map([
                    f"{k}={v}" for k, v in self.meta.items() if v is not None]), inst)
        for spec in self.df.stages[: target.index + 1]:
            run = self._from(spec)
            self.stages.append(run)
            for inst in spec.instructions:
                self._announce(inst)
                try:
                    self._instruction(run, inst)
                except DockerfileError:
                    raise
                except BuildFailure as exc:
                    raise BuildFailure(f"{self.df.path}:{inst.line}: {exc.message}",
                                       exc.exit_code) from None
                self.say(f" ---> {run.state.image_id.split(':')[1][:12]}")
        unused = sorted(set(self.options.build_args) - self.used_args)
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
        record = store_image(self.store, self.stages[-1].state, self._tags())
        self.say(f"Successfully built {record.id.split(':')[1][:12]}")
        for tag in record.refs:
            if tag in self._tags():
                self.say(f"Successfully tagged {tag}")
        return record

    def _target(self) -> Stage:
        if not self.options.target:
            return self.df.stages[-1]
        found = self.df.stage(self.options.target)
        if found is None:
            raise BuildFailure(f"failed to reach build target {self.options.target} in "
                               "Dockerfile")
        return found

    @property
    def console(self) -> Console:
        """Where a pull shows its progress (made when one is needed)."""
        if self._console is None:
            if self._make_console is not None:
                self._console = self._make_console()
            else:
                from rich.console import Console

                self._console = Console(stderr=True, highlight=False)
        return self._console

    def _image(self, reference: str, platform: Platform) -> ImageRecord:
        """A FROM or --from image: the local one, else pulled, as Docker's builder does."""
        images = ImageIndex(self.store)
        record = images.find(str(parse_reference(reference))) or images.find(reference)
        if record is not None and all(self.store.has_layer(d) for d in record.diff_ids):
            return record
        from registry.runtime.pull import ensure_image

        return ensure_image(self.store, reference, platform, self.console)

    def _tags(self) -> list[str]:
        return [str(parse_reference(tag)) for tag in self.options.tags]

    def _announce(self, inst: Instruction) -> None:
        self.step += 1
        self.say(f"Step {self.step}/{self.df.step_count} : {inst.text}")

    def _fail(self, inst: Instruction, message: str) -> DockerfileError:
        return DockerfileError(self.df.path, inst.line, message)

    def _word(self, inst: Instruction, text: str, env: dict[str, str]) -> str:
        try:
            return process_word(text, env, self.df.escape)
        except SubstitutionError as exc:
            raise self._fail(inst, str(exc)) from None

    def _arg_value(self, name: str, default: str | None, env: dict[str, str],
                   inst: Instruction) -> str | None:
        if name in self.options.build_args:
            self.used_args.add(name)
            return self.options.build_args[name]
        if default is not None:
            return self._word(inst, default, env)
        return self.meta.get(name)

    # --- FROM ---------------------------------------------------------------------------

    def _from(self, spec: Stage) -> _StageRun:
        inst = spec.source
        self._announce(inst)
        meta_env = {k: v for k, v in self.meta.items() if v is not None}
        base = self._word(inst, spec.base, meta_env)
        platform = self.platform
        if "platform" in inst.flags:
            try:
                platform = parse_platform(self._word(inst, inst.flags["platform"], meta_env))
            except RuntimeFailure as exc:
                raise self._fail(inst, exc.message) from None
        earlier = {s.spec.name: s for s in self.stages if s.spec.name}
        if base.lower() in earlier:
            state = earlier[base.lower()].state.clone()
        elif base.lower() == "scratch":
            config = bc.scratch_config(platform.architecture, platform.os, platform.variant)
            state = ImageState(config, [], bc.cache_key("", ["FROM", "scratch",
                                                             format_platform(platform)]))
        else:
            try:
                record = self._image(base, platform)
            except RuntimeFailure as exc:
                raise BuildFailure(f"{self.df.path}:{inst.line}: {exc.message}") from None
            state = from_record(self.store, record)
        self.say(f" ---> {state.image_id.split(':')[1][:12]}")
        run = _StageRun(spec, state)
        if spec.instructions:
            bc.add_default_path(run.state.run)
        return run

    # --- one instruction -----------------------------------------------------------------

    def _cached(self, key: str) -> ImageState | None:
        if self.options.no_cache:
            return None
        hit = self.cache.get(key)
        if hit is not None:
            self.say(" ---> Using cache")
        return hit

    def _commit(self, run: _StageRun, step: object, created_by: str,
                change: Callable[[ImageState], LayerRef | None], nop: bool = True) -> None:
        """Take the cached result of `step` or make it: `change` edits a copy of the state
        (its config) and returns the step's layer, if any. History says what a step that
        ran nothing did as Docker does: `/bin/sh -c #(nop)  ENV A=1`."""
        key = bc.cache_key(run.state.key, step)
        hit = self._cached(key)
        if hit is not None:
            run.state = hit
            return
        if nop:
            created_by = " ".join([*run.state.shell, "#(nop) ", created_by])
        working = run.state.clone()
        layer = change(working)
        run.state = working.commit(key, _now(), created_by, layer)
        if layer is not None:
            run.state.sources.pop(layer.digest, None)
        self.cache.put(run.state)

    def _instruction(self, run: _StageRun, inst: Instruction) -> None:
        env = run.env()

        def word(text: str) -> str:
            return self._word(inst, text, env)

        command = inst.command
        if command == "ARG":
            for name, default in inst.pairs:
                run.args[name] = self._arg_value(name, default, env, inst)
            self._commit(run, ["ARG", inst.text], inst.text, lambda state: None)
        elif command in METADATA:
            self._metadata(run, inst, word)
        elif command == "WORKDIR":
            path = bc.workdir(str(run.state.run.get("WorkingDir") or "/"), word(inst.args[0]))

            def change(state: ImageState) -> LayerRef | None:
                state.run["WorkingDir"] = path
                from registry.runtime.buildsteps import workdir_step

                return workdir_step(self.store, state, path)

            self._commit(run, ["WORKDIR", path], f"WORKDIR {path}", change)
        elif command == "RUN":
            self._run(run, inst)
        else:
            self._copy(run, inst, word)

    def _metadata(self, run: _StageRun, inst: Instruction, word: Callable[[str], str]) -> None:
        command, args = inst.command, inst.args
        changes: dict[str, Any] = {}
        try:
            if command in ("ENV", "LABEL"):
                pairs = [(word(k), word(v or "")) for k, v in inst.pairs]
                text = f"{command} " + " ".join(f"{k}={v}" for k, v in pairs)
                setter = bc.set_env if command == "ENV" else bc.set_labels

                def set_pairs(state: ImageState) -> None:
                    setter(state.run, pairs)

                self._commit(run, [command, pairs], text, set_pairs)
                return
            if command == "CMD":
                changes["Cmd"] = bc.command(args, inst.json, run.state.shell) if args else []
                run.cmd_set = True
            elif command == "ENTRYPOINT":
                changes["Entrypoint"] = bc.command(args, inst.json, run.state.shell) \
                    if args else []
                if not run.cmd_set:
                    changes["Cmd"] = None
            elif command == "USER":
                changes["User"] = word(args[0])
            elif command == "EXPOSE":
                ports = [p for a in args for p in process_words(a, run.env(), self.df.escape)]
                probe = run.state.clone()
                bc.expose(probe.run, ports)
                changes["ExposedPorts"] = probe.run["ExposedPorts"]
            elif command == "VOLUME":
                probe = run.state.clone()
                bc.volumes(probe.run, [word(a) for a in args])
                changes["Volumes"] = probe.run["Volumes"]
            elif command == "SHELL":
                changes["Shell"] = list(args)
            elif command == "STOPSIGNAL":
                changes["StopSignal"] = bc.check_signal(word(args[0]))
            elif command == "HEALTHCHECK":
                changes["Healthcheck"] = bc.healthcheck(args, inst.json, inst.flags)
            elif command == "MAINTAINER":
                author = word(args[0])


                def set_author(state: ImageState) -> None:
                    state.config["author"] = author

                self._commit(run, [command, author], inst.text, set_author)
                return
        except (bc.ConfigError, SubstitutionError) as exc:
            raise self._fail(inst, str(exc)) from None

        def change(state: ImageState) -> None:
            for key, value in changes.items():
                if value is None:
                    state.run.pop(key, None)
                else:
                    state.run[key] = value

        self._commit(run, [command, changes], inst.text, change)

    def _run(self, run: _StageRun, inst: Instruction) -> None:
        argv = bc.command(inst.args, inst.json, run.state.shell)
        args_env = run.arg_env()
        for name in self.options.build_args:
            if name in run.args:
                self.used_args.add(name)
        prefix = f"|{len(args_env)} {' '.join(args_env)} " if args_env else ""
        created_by = prefix + " ".join(argv)
        env = list(run.state.run.get("Env") or []) + args_env
        user = str(run.state.run.get("User") or "")
        workdir = str(run.state.run.get("WorkingDir") or "/")

        def change(state: ImageState) -> LayerRef | None:
            from registry.runtime.buildsteps import RunStep, run_step

            return run_step(self.store, state, RunStep(argv, env, user, workdir), self.say)

        self._commit(run, ["RUN", argv, args_env], created_by, change, nop=False)

    def _copy(self, run: _StageRun, inst: Instruction, word: Callable[[str], str]) -> None:
        values = [word(a) for a in inst.args]
        sources, dest = values[:-1], values[-1]
        if inst.command == "ADD":
            for source in sources:
                if "://" in source or source.startswith("git@"):
                    raise BuildFailure(f"ADD from a URL is not supported: {source} (download "
                                       "it into the build context, or fetch it in a RUN)")
        workdir = str(run.state.run.get("WorkingDir") or "/")
        absolute = posixpath.join(workdir, dest)
        if dest.endswith("/") and not absolute.endswith("/"):
            absolute += "/"
        chown = word(inst.flags.get("chown", ""))
        chmod_text = word(inst.flags.get("chmod", ""))
        chmod = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                chmod = -1
            if not 0 <= chmod <= 0o7777:
                raise self._fail(inst, f"invalid chmod value {chmod_text!r}: octal expected")
        options = CopyOptions(chown, chmod, unpack_archives=inst.command == "ADD")
        source_state, context, origin = self._copy_source(run, inst, word)
        kind = "file" if len(sources) == 1 else "multi"
        if context is not None:
            try:
                resolved = context.resolve(sources)
            except BuildFailure as exc:
                raise BuildFailure(f"{inst.command} failed: {exc.message}") from None
            origin = content_key(context, resolved, self.file_digests)
            if len(resolved) == 1 and resolved[0].is_dir:
                kind = "dir"
        created_by = f"{inst.command} {kind}:{origin.split(':')[-1]} in {absolute} "

        def change(state: ImageState) -> LayerRef | None:
            from registry.runtime.buildsteps import CopyStep, copy_step

            step = CopyStep(sources, absolute, options, context, source_state)
            try:
                return copy_step(self.store, state, step)
            except BuildFailure as exc:
                raise BuildFailure(f"{inst.command} failed: {exc.message}") from None

        self._commit(run, [inst.command, sources, absolute, chown, chmod, origin], created_by,
                     change)

    def _copy_source(self, run: _StageRun, inst: Instruction, word: Callable[[str], str]
                     ) -> tuple[ImageState | None, SourceRoot | None, str]:
        """(the stage or image copied from, or the context; the cache's word for it)."""
        if "from" not in inst.flags:
            return None, SourceRoot.context(self.options.context), ""
        name = word(inst.flags["from"])
        stage = self.df.stage(name)
        if stage is not None:
            if stage.index >= run.spec.index:
                raise self._fail(inst, f"invalid --from={name}: a stage can only copy from an "
                                       "earlier one")
            state = self.stages[stage.index].state
            return state, None, state.key
        try:
            record = self._image(name, self.platform)
        except RuntimeFailure as exc:
            raise BuildFailure(exc.message) from None
        state = from_record(self.store, record)
        return state, None, state.key

    # --- the result ----------------------------------------------------------------------

def default_output() -> Callable[[str], None]:
    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return say


def force_overlay() -> None:
    """Builds diff an overlay's upper directory: never let a step fall back to copying."""
    if os.environ.get("POCKET_RUNTIME_STORAGE", "auto") == "copy":
        raise BuildFailure("building needs overlayfs (POCKET_RUNTIME_STORAGE=copy is set)")
    os.environ["POCKET_RUNTIME_STORAGE"] = "overlay"
