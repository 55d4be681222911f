"""Errors a user can act on, as data: each carries a one-line message and an exit code.

    RuntimeFailure                 exit 1 unless said otherwise
    ├── InvalidReference           an image reference that does not parse
    ├── RegistryError              the registry answered something we cannot use
    │   ├── ImageNotFound          no such repository, tag or digest
    │   ├── AccessDenied           401/403: no (valid) credentials for this
    │   └── RegistryUnreachable    connection refused, DNS, TLS...
    ├── ContentInvalid             a digest, size or diff id that does not match
    ├── LayerRejected              a layer that would write outside its root
    ├── PlatformNotFound           an index without the wanted platform
    ├── LocalImageNotFound         an image not in the local store
    ├── ContainerNotFound          no container by that id or name
    ├── ContainerConflict          a name in use, a running container removed, ...
    ├── NetworkNotFound            no network by that name
    ├── NetworkConflict            a network name or subnet in use, a network still used
    ├── NotPrivileged              not root, or namespaces unavailable
    ├── StartFailure               the container's command could not start (126/127)
    ├── BuildFailure               a build step that failed (a RUN's exit code, a COPY source)
    │   └── DockerfileError        a Dockerfile that does not parse, with its file and line
    └── Interrupted                Ctrl-C: work in threads stops at its next step (130)

The CLI prints `Error: <message>` on one line and exits with `exit_code`; no tracebacks.
"""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Base of every error the runtime reports to its user."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class InvalidReference(RuntimeFailure):
    """A string that is not an image reference."""


class RegistryError(RuntimeFailure):
    """The registry answered something the runtime cannot use."""


class ImageNotFound(RegistryError):
    """The registry has no such repository, tag or digest."""


class AccessDenied(RegistryError):
    """The registry refused us: missing or wrong credentials, or no permission."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached at all."""


class ContentInvalid(RuntimeFailure):
    """Downloaded or stored content does not match its digest, size or diff id."""


class LayerRejected(RuntimeFailure):
    """A layer tar with an entry that would escape its root, or is otherwise unsafe."""


class PlatformNotFound(RuntimeFailure):
    """An index has no manifest for the wanted platform."""


class LocalImageNotFound(RuntimeFailure):
    """The image is not in the local store."""


class ContainerNotFound(RuntimeFailure):
    """No container with that id, id prefix or name."""


class ContainerConflict(RuntimeFailure):
    """An operation that conflicts with a container's state or name."""


class NetworkNotFound(RuntimeFailure):
    """No network by that name (or id prefix)."""


class NetworkConflict(RuntimeFailure):
    """A network name in use, an overlapping subnet, a network its containers still use."""


class NotPrivileged(RuntimeFailure):
    """Running containers needs root (and namespaces); we do not have them."""


class StartFailure(RuntimeFailure):
    """The container's command could not be started (126 not executable, 127 not found)."""

    exit_code = 125


class BuildFailure(RuntimeFailure):
    """A build that cannot go on: a failing RUN, a missing COPY source, a bad FROM..."""


class DockerfileError(BuildFailure):
    """A syntax error or an unsupported instruction, located as `file:line: message`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line
        self.reason = message


class Interrupted(RuntimeFailure):
    """The user pressed Ctrl-C: downloads and unpacks in other threads stop early."""

    exit_code = 130
