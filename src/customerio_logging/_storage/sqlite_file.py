"""Opening the spool file: one opener at a time, the file checked, a bad one moved aside.

Opening takes a lock file beside the spool, checks that the file is a sound spool of a
format this code reads and of this workspace, and makes or upgrades its schema. A damaged
or foreign file is moved aside for a fresh one; a sound file that is not for us is
refused and left as it is.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import SpoolBusyError, SpoolUnavailableError
from .sqlite_path import (
    LOCK,
    SIBLINGS,
    FileId,
    UnsafePathError,
    check_file,
    check_opened,
    check_place,
    file_id,
    make_private,
    move_aside,
    open_private,
    prepare,
)
from .sqlite_schema import APPLICATION_ID, SCHEMA_VERSION, create_schema

__all__ = [
    "OPEN_WAIT",
    "NotASpoolError",
    "OpenedFile",
    "check_spool_file",
    "check_spool_path",
    "is_busy",
    "open_spool_file",
    "plain",
]

OPEN_WAIT = 10.0
"""Seconds an open waits for another process's: a quick_check of a large file."""
_HEADER = b"SQLite format 3\x00"
_APPLICATION_ID_AT = 68  # the offset of PRAGMA application_id in SQLite's file header
_READ_WAIT = 1.0  # seconds a check waits for SQLite's read lock
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


class NotASpoolError(SpoolUnavailableError):
    """The file is not a customerio-logging spool (:func:`check_spool_file`)."""


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """A spool file opened and checked.

    Attributes:
        conn: The connection (autocommit: transactions are begun by hand).
        real: The file opened, through its folder's real location.
        moved: When a bad file was moved aside for a fresh one, words saying so.
    """

    conn: sqlite3.Connection
    real: Path
    moved: str | None


def open_spool_file(
    path: Path,
    *,
    site_id: str | None,
    track_url: str | None,
    wait: float,
    in_use: Callable[[Path], bool],
) -> OpenedFile:
    """Open the spool at ``path``, made if missing, checked and brought up to date.

    Args:
        path: The spool file, as given (messages name it so).
        site_id: The workspace the file must belong to (recorded in a fresh file); None
            accepts any.
        track_url: The API host, checked like ``site_id`` once recorded.
        wait: Most seconds to wait for another process opening the file.
        in_use: Whether this process has the file (its real path) open already; then
            no descriptor of ours may be opened and closed on it.

    Raises:
        SpoolUnavailableError: The place is unsafe, the file cannot be made or opened,
            or it is sound but not for us (another workspace's, a newer format).
        SpoolBusyError: Another process kept it locked for ``wait`` seconds.
    """
    try:
        real = prepare(path)
        lock = open_private(real, LOCK)  # ours alone: SQLite never opens it
    except UnsafePathError as exc:
        raise SpoolUnavailableError(f"the spool at {path} {exc}") from None
    except OSError as exc:
        raise SpoolUnavailableError(
            f"the spool at {path} cannot be created: {exc.strerror or type(exc).__name__}"
        ) from None
    moved: str | None = None
    checks = _Checks(site_id, track_url, in_use)
    try:
        # One process at a time checks (and maybe moves aside) the file. A POSIX
        # record lock, not flock(): a child forked meanwhile does not inherit it.
        _lock_file(lock, path, wait)
        make_private(real, LOCK)  # no one else's to hold
        try:
            conn = checks.open(real)
        except _UnusableFileError as exc:
            moved = f"the spool file {path} {exc}; moved it to {move_aside(real).name}"
            conn = checks.open(real)
    except (_UnusableFileError, _RefusedFileError, UnsafePathError) as exc:
        raise SpoolUnavailableError(f"the spool at {path} {exc}") from None
    except sqlite3.Error as exc:
        if is_busy(exc):
            raise SpoolBusyError(
                f"the spool at {path} is busy (locked by another process)"
            ) from None
        raise SpoolUnavailableError(f"the spool at {path} cannot be opened: {plain(exc)}") from None
    except OSError as exc:
        raise SpoolUnavailableError(
            f"the spool at {path} cannot be opened: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        os.close(lock)  # closing releases the lock
    return OpenedFile(conn, real, None if moved is None else f"{moved} and started a fresh one")


def check_spool_path(path: Path) -> None:
    """Refuse, as the spool would, a spool path that is unsafe to open; make nothing.

    Raises:
        SpoolUnavailableError: A symbolic link, another user's file or folder, a folder
            other users can write to without the sticky bit; the message says which.
    """
    try:
        check_place(path)
    except UnsafePathError as exc:
        raise SpoolUnavailableError(f"the spool at {path} {exc}") from None


def check_spool_file(path: Path) -> None:
    """Refuse a path the spool would refuse, or a file that is not a spool; change nothing.

    For a command given a path by hand: opening moves a file that is not a spool aside as
    damaged and starts a fresh one, right for the app, wrong for a mistyped path. An
    empty file passes (the spool makes it one); a missing one cannot be read.

    Raises:
        NotASpoolError: The file is not a customerio-logging spool.
        SpoolUnavailableError: The place is unsafe (see :func:`check_spool_path`), or
            the file cannot be read.
    """
    check_spool_path(path)
    try:
        with path.open("rb") as file:
            head = file.read(_APPLICATION_ID_AT + 4)
    except OSError as exc:
        raise SpoolUnavailableError(
            f"the spool at {path} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    if not head:
        return
    app_id = int.from_bytes(head[_APPLICATION_ID_AT:], "big")
    if app_id == 0 and head.startswith(_HEADER):
        # A spool an app made recently has its stamp in the write-ahead log until the
        # next checkpoint: ask SQLite, which reads the log too, without writing anything.
        app_id = _stamp_read_only(path)
    if not head.startswith(_HEADER) or (
        len(head) > _APPLICATION_ID_AT and app_id != APPLICATION_ID
    ):
        raise NotASpoolError(f"{path} is not a customerio-logging spool, so it was left as it is")


def _stamp_read_only(path: Path) -> int:
    """The file's ``application_id`` as SQLite sees it (its write-ahead log included),
    read through a read-only connection; 0 when SQLite cannot tell."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=_READ_WAIT, isolation_level=None)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("PRAGMA application_id").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(row[0]) if row else 0


def is_busy(exc: sqlite3.Error) -> bool:
    """True when SQLite stayed locked by another connection: try again later."""
    return getattr(exc, "sqlite_errorname", "") in _BUSY


def plain(exc: sqlite3.Error) -> str:
    """SQLite's words for ``exc``: they name the problem ("database or disk is full"),
    never the data."""
    text = str(exc) or getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR"):
        text += " (is the disk full, or a file size limit reached?)"
    return text


class _UnusableFileError(Exception):
    """The file is damaged or not ours: move it aside and start a fresh one."""


class _RefusedFileError(Exception):
    """The file is sound but not for us: leave it be, and do without."""


@dataclass(frozen=True, slots=True)
class _Checks:
    """What a file must be to be opened as this spool (see :func:`open_spool_file`)."""

    site_id: str | None
    track_url: str | None
    in_use: Callable[[Path], bool]

    def open(self, path: Path) -> sqlite3.Connection:
        checked = self._checked_file(path)
        for suffix in SIBLINGS:
            make_private(path, suffix)
        conn = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
        try:
            # SQLite opens the path by name, itself: the file it opened must be the one
            # checked, not one (or a link) put in its place meanwhile.
            check_opened(conn, checked)
            new = _check_format(conn)
            make_private(path)  # before the -wal is made: SQLite gives it the file's mode
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with synchronous=NORMAL: a commit survives the process being killed
            # (it is in the OS's cache); only a power loss can take the last ones.
            conn.execute("PRAGMA synchronous = NORMAL")
            create_schema(conn, stamp=new)
            self._check_workspace(conn)
            for suffix in ("-wal", "-shm"):  # made by SQLite by now: check them again
                make_private(path, suffix)
        except BaseException:
            conn.close()
            raise
        return conn

    def _checked_file(self, path: Path) -> FileId:
        """Check the spool file (made if missing, never through a link); its identity."""
        if self.in_use(path):
            # Another spool of this process has it open (and checked it then). No
            # descriptor of ours on it: closing one would drop that connection's SQLite
            # locks, POSIX locks being the process's, not the descriptor's.
            found = check_file(path)
            if found is not None:
                return found
        fd = open_private(path)
        try:
            _check_header(fd)
            return file_id(fd)
        finally:
            os.close(fd)

    def _check_workspace(self, conn: sqlite3.Connection) -> None:
        if self.site_id is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN ('site_id', 'track_url')")
            )
            mine = {"site_id": self.site_id}
            if self.track_url:
                mine["track_url"] = self.track_url
            if any(key in found and found[key] != value for key, value in mine.items()):
                raise _RefusedFileError(
                    f"holds events for another workspace (site id {found.get('site_id')!r} "
                    f"at {found.get('track_url')!r}); give this app its own spool_path"
                )
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", list(mine.items())
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise


def _check_format(conn: sqlite3.Connection) -> bool:
    """Check the file is a sound spool of a format this code reads (nothing written).

    Returns:
        True for an empty database, to be made a spool.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            return True
        if app_id != APPLICATION_ID:
            raise _UnusableFileError("is not a customerio-logging spool")
        check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in _CORRUPT:
            raise _UnusableFileError(f"is damaged ({plain(exc)})") from None
        raise
    if check != "ok":
        raise _UnusableFileError("is damaged (integrity check failed)")
    if version > SCHEMA_VERSION:
        raise _RefusedFileError(
            f"was written by a newer customerio-logging (format {version}); upgrade, "
            f"or point spool_path elsewhere"
        )
    return False


def _lock_file(fd: int, path: Path, wait: float) -> None:
    """Take the open lock, waiting at most ``wait`` seconds for another process."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise SpoolBusyError(
                    f"the spool at {path} stayed locked by another process for {wait:g} s"
                ) from None
        # lockf has no timed wait: a short poll, for the rare open that meets another.
        time.sleep(0.01)


def _check_header(fd: int) -> None:
    head = os.pread(fd, len(_HEADER), 0)
    if head and head != _HEADER:
        raise _UnusableFileError("is not an SQLite database")
