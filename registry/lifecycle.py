"""Start and stop of a server: its run folder, and the graceful shutdown a load balancer needs.

On SIGTERM (or SIGINT) a replica

1. marks itself draining: `/readyz` answers 503 from then on, in every worker process (a
   marker file in the run folder, which all of them see);
2. keeps serving for `server.shutdown_delay` seconds, so that load balancers that poll
   readiness, or learn of the stop late (Kubernetes endpoints), send it nothing new;
3. stops accepting connections, closes idle ones, and lets requests in flight finish for up
   to `server.shutdown_timeout` seconds (uvicorn's graceful shutdown), then cancels what is
   left and exits.

With several workers this happens in uvicorn's supervisor (steps 1-2), which then stops the
workers (step 3 in each). A second signal during the delay skips the rest of the delay.

The run folder (a private temporary folder per server start, `REGISTRY__RUN_DIR` for the
worker processes) holds the marker and the metrics files of the worker processes; it is
removed when the server exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger("registry")

RUN_DIR_ENV = "REGISTRY__RUN_DIR"
DRAINING = "draining"


class Draining:
    """Whether this server is shutting down (readiness false). Cheap to ask: only probes do."""

    def __init__(self, run_dir: Path | None) -> None:
        self.marker = run_dir / DRAINING if run_dir is not None else None
        self._set = False

    def set(self) -> None:
        self._set = True
        if self.marker is not None:
            with contextlib.suppress(OSError):
                self.marker.touch()

    def is_set(self) -> bool:
        return self._set or (self.marker is not None and self.marker.exists())


def run_dir_from_environment() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


@contextlib.contextmanager
def run_folder() -> Iterator[Path]:
    """A fresh private folder for this server's run, named in the environment for workers."""
    folder = Path(tempfile.mkdtemp(prefix="registry-run-"))
    os.environ[RUN_DIR_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


class _DelayedExit:
    """The first stop signal marks the server draining and calls `stop` after `delay`
    seconds; a second one calls it at once."""

    def __init__(self, draining: Draining, delay: float) -> None:
        self.draining = draining
        self.delay = delay
        self.timer: threading.Timer | None = None

    def begin(self, signum: int, stop: object) -> bool:
        """True when `stop` should run now."""
        if self.timer is not None or self.delay <= 0:
            if self.timer is not None:
                self.timer.cancel()
            self.draining.set()
            return True
        self.draining.set()
        log.info(
            "%s: readiness is now false; stopping in %g s", signal.Signals(signum).name, self.delay
        )
        self.timer = threading.Timer(self.delay, stop)  # type: ignore[arg-type]
        self.timer.daemon = True
        self.timer.start()
        return False


class GracefulServer(uvicorn.Server):
    """uvicorn's single-process server, draining first (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, draining: Draining, delay: float) -> None:
        super().__init__(config)
        self._exit = _DelayedExit(draining, delay)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit.begin(sig, lambda: super(GracefulServer, self).handle_exit(sig, None)):
            super().handle_exit(sig, frame)


class GracefulSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, draining first."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], draining: Draining, delay: float
    ) -> None:
        super().__init__(config, sockets)
        self._exit = _DelayedExit(draining, delay)

    def handle_term(self) -> None:
        if self._exit.begin(signal.SIGTERM, self._stop_term):
            self._stop_term()

    def handle_int(self) -> None:
        if self._exit.begin(signal.SIGINT, self._stop_int):
            self._stop_int()

    def _stop_term(self) -> None:
        self._close_listeners()
        super().handle_term()

    def _stop_int(self) -> None:
        self._close_listeners()
        super().handle_int()

    def _close_listeners(self) -> None:
        """The supervisor's copy of the listening socket: while it is open the kernel keeps
        accepting connections that no worker will ever take, once the workers stop."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
