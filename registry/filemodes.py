"""Owner-only files: the data folder holds the password and robot-secret hashes, the audit
log and every pushed blob, none of which other local users may read.

Whatever the umask, the registry creates its folders 0700 and its files 0600: the server
sets the umask to 077 at start (so do its worker processes, and SQLite's files follow), and
the code that creates files passes those modes itself (so does the SQLite database, which
SQLite's `-wal`, `-shm` and `-journal` files copy). A data folder left looser by an older
version or by hand is tightened at start, with one line in the log: the data folder, the
storage root and the database's files; what lies under a 0700 folder is out of others'
reach whatever its own mode, so a large store is not walked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from registry.config import Config

log = logging.getLogger("registry")

FOLDER_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private_folder(path: Path) -> None:
    """Create `path` and any missing parents as 0700 (an existing folder is left alone:
    `tighten` is for those). Path.mkdir and os.makedirs give parents the umask's mode."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another request
            os.mkdir(folder, FOLDER_MODE)


def tighten(paths: list[Path]) -> list[str]:
    """Take group and other permissions off each existing path (folders to 0700, files to
    0600); what was changed, as `path (was 0755)`."""
    changed = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if not info.st_mode & 0o077:
            continue
        wanted = FOLDER_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        os.chmod(path, wanted)
        changed.append(f"{path} (was {stat.S_IMODE(info.st_mode):04o})")
    return changed


def sqlite_files(url: str) -> list[Path]:
    """The SQLite database's file and the ones SQLite keeps beside it; none for PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return []
    database = Path(parsed.database)
    return [database, *(database.with_name(database.name + side) for side in SQLITE_SIDE_FILES)]


def secure_data(config: Config) -> None:
    """At start: owner-only from now on, and the data folder's existing parts tightened."""
    os.umask(UMASK)
    data_dir = Path(config.data_dir).resolve()
    database = sqlite_files(config.database_url)
    folders = [data_dir, config.storage_root.resolve()]
    if database:
        folders.append(database[0].parent)
    for folder in folders:
        make_private_folder(folder)
    changed = tighten([*folders, *database])
    if changed:
        log.warning("made owner-only (other users could read them): %s", ", ".join(changed))
