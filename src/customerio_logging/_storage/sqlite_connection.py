"""One process's connection to a spool file: one thread at a time, every wait bounded.

Opened on first use, opened again after a failure (a file problem at most once a
minute) and in a forked child. The fork hooks here keep a child away from SQLite when a
parent thread was inside it at the fork.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import SpoolBusyError, SpoolUnavailableError
from .sqlite_file import OPEN_WAIT, is_busy, open_spool_file, plain
from .sqlite_size import FileBudget, keep_within

__all__ = [
    "DEFAULT_WAIT",
    "SpoolConnection",
    "after_fork_in_child",
    "after_fork_in_parent",
    "before_fork",
]

DEFAULT_WAIT = 5.0
"""Seconds a call without a ``wait`` may wait for the spool's lock in this process."""
_BUSY_WAIT = 2.0  # seconds such a call may wait for another process's write
_RETRY_OPEN_AFTER = 60.0  # seconds between attempts to use a spool that failed
_FILE_PROBLEMS = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PERM",
)

# Connections opened before a fork, kept alive in the child: closing one there could
# checkpoint or delete the parent's write-ahead log under it (SQLite: never carry a
# connection across fork).
_abandoned: list[sqlite3.Connection] = []
_connections: weakref.WeakSet[SpoolConnection] = weakref.WeakSet()
# Set in a child forked while a thread was inside SQLite (a fork that skipped os.fork's
# hooks, or one that could not wait): SQLite's own process-wide locks may be held by a
# thread that does not exist here, so this process never touches SQLite through us.
_forked_mid_call = False
_FORK_WAIT = 5.0  # seconds os.fork waits for a spool call in progress to end


class SpoolConnection:
    """The connection to one spool file, for every thread of this process.

    Args:
        path: The spool file (see :func:`~.sqlite_file.open_spool_file`).
        site_id: The workspace the file must belong to; None accepts any.
        track_url: The API host, checked like ``site_id``.
        on_problem: Told, in words, when a corrupt or foreign file was moved aside.
        max_bytes: The spool's byte bound, which the file, its log and its index are
            kept within (see ``sqlite_size``).
    """

    def __init__(
        self,
        path: Path,
        *,
        site_id: str | None,
        track_url: str | None,
        on_problem: Callable[[str], None] | None,
        max_bytes: int,
    ) -> None:
        self.path = path
        self._site_id = site_id
        self._track_url = track_url
        self._on_problem = on_problem
        self._max_bytes = max_bytes
        self.budget: FileBudget | None = None
        """The open file's budget of pages in use; None before it opens, and for a bound
        too small for one (see ``sqlite_size.file_budget``)."""
        self._lock = threading.RLock()
        self._holder: int | None = None  # the thread inside a transaction
        self._conn: sqlite3.Connection | None = None
        self._busy_millis = -1  # the connection's busy_timeout, as last set
        self._real: Path | None = None  # the file the connection has open, links resolved
        self._pid = os.getpid()
        self._broken_until = 0.0
        self._broken_message = ""
        self._held_for_fork = False
        _connections.add(self)

    @property
    def is_open(self) -> bool:
        """True once this process has the file open."""
        return self._conn is not None and self._pid == os.getpid()

    @contextlib.contextmanager
    def transaction(
        self, *, write: bool = True, wait: float | None = None, open_file: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """One transaction, committed at the end of the block, rolled back on an error.

        Args:
            write: Take the write lock at the start (``BEGIN IMMEDIATE``).
            wait: Most seconds for the whole call (the lock here, then SQLite's); None:
                ``DEFAULT_WAIT`` for the lock here, then the ordinary waits.
            open_file: Open the file if it is not open yet; when False the call raises
                :class:`SpoolBusyError` instead.

        Raises:
            SpoolUnavailableError: The file cannot be used.
            SpoolBusyError: It stayed busy, or this thread is inside a transaction already.
        """
        if self._pid != os.getpid():
            self._after_fork()
        if self._holder == threading.get_ident():
            # A signal handler on this thread, run in the middle of a transaction.
            raise SpoolBusyError("the spool is in use by this very thread (a signal handler)")
        lock_wait = DEFAULT_WAIT if wait is None else wait
        end = time.monotonic() + lock_wait  # a given wait bounds the whole call, not each step
        if not self._lock.acquire(timeout=lock_wait):
            raise SpoolBusyError(f"the spool stayed busy for {lock_wait:g} s")
        try:
            self._holder = threading.get_ident()
            if self._conn is None and not open_file:
                raise SpoolBusyError("the spool is not open yet")
            left = None if wait is None else max(0.0, end - time.monotonic())
            conn = self._connection(OPEN_WAIT if left is None else left)
            try:
                left = None if wait is None else max(0.0, end - time.monotonic())
                self._set_busy_wait(conn, _BUSY_WAIT if left is None else left)
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                    raise
                conn.commit()
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
        finally:
            self._holder = None
            self._lock.release()

    def prepare(self, wait: float = DEFAULT_WAIT) -> None:
        """Open the file now, if it is not open yet (see ``Storage.prepare``)."""
        if self._conn is None or self._pid != os.getpid():
            with self.transaction(write=False, wait=wait, open_file=True):
                pass

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        self.reset_after_fork()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connection without closing it."""
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        # A forked child: the parent's connection is the parent's (see _abandoned), and
        # a parent thread may have held the lock at the fork.
        global _forked_mid_call
        if self._holder is not None:
            _forked_mid_call = True
        if self._conn is not None:
            _abandoned.append(self._conn)
        self._conn = None
        self._lock = threading.RLock()
        self._holder = None
        self._pid = os.getpid()
        self._broken_until = 0.0
        # A new process: its first problem with the file is its own to warn about.
        self._broken_message = ""

    def _set_busy_wait(self, conn: sqlite3.Connection, seconds: float) -> None:
        # How long SQLite waits for another process's write lock; set only on a change.
        millis = int(seconds * 1000)
        if millis != self._busy_millis:
            conn.execute(f"PRAGMA busy_timeout = {millis}")
            self._busy_millis = millis

    def _connection(self, open_wait: float) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._broken_until:
            raise SpoolUnavailableError(self._broken_message, first=False)
        if _forked_mid_call:
            self._broken_until = math.inf
            self._broken_message = (
                f"the spool at {self.path} is off in this process: it was forked while a "
                f"thread was using the spool, which leaves SQLite unsafe to use here"
            )
            raise SpoolUnavailableError(self._broken_message)
        try:
            self._conn = self._open(open_wait)
            self._busy_millis = -1
        except SpoolUnavailableError as exc:
            self._broken_until = time.monotonic() + _RETRY_OPEN_AFTER
            if str(exc) == self._broken_message:
                # The same problem as a minute ago (a refused path stays refused): tried
                # again, but said once, not every minute.
                raise SpoolUnavailableError(self._broken_message, first=False) from None
            self._broken_message = str(exc)
            raise
        self._broken_message = ""  # a later problem is a new episode, worth its warning
        return self._conn

    def _open(self, wait: float) -> sqlite3.Connection:
        opened = open_spool_file(
            self.path,
            site_id=self._site_id,
            track_url=self._track_url,
            wait=wait,
            in_use=self._open_elsewhere,
        )
        self._real = opened.real
        if opened.moved is not None and self._on_problem is not None:
            with contextlib.suppress(Exception):  # a notice must not undo a sound open
                self._on_problem(opened.moved)
        try:
            self.budget = keep_within(opened.conn, self._max_bytes)
        except sqlite3.Error as exc:
            opened.conn.close()
            raise SpoolUnavailableError(
                f"the spool at {self.path} cannot be opened: {plain(exc)}"
            ) from None
        return opened.conn

    def _open_elsewhere(self, real: Path) -> bool:
        """True when another connection of this process has the file ``real`` open."""
        return any(
            c is not self and c._conn is not None and c._real == real for c in list(_connections)
        )

    def _failed(self, exc: sqlite3.Error) -> Exception:
        if is_busy(exc):
            return SpoolBusyError(f"the spool at {self.path} is busy (locked by another process)")
        # Whatever it was, start again with a fresh connection next time: opening checks
        # the file, and moves it aside if it has gone bad.
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        message = f"the spool at {self.path} cannot be used: {plain(exc)}"
        if getattr(exc, "sqlite_errorname", "").startswith(_FILE_PROBLEMS):
            # The disk or the file: don't try again on every event, only every minute.
            self._broken_until = time.monotonic() + _RETRY_OPEN_AFTER
            self._broken_message = message
        return SpoolUnavailableError(message)


# -- fork -------------------------------------------------------------------------------


def before_fork() -> None:
    """Before os.fork: wait (bounded) until no thread is inside a spool call."""
    for connection in list(_connections):
        connection._held_for_fork = connection._lock.acquire(timeout=_FORK_WAIT)


def after_fork_in_parent() -> None:
    """After os.fork, in the parent: let spool calls go on."""
    for connection in list(_connections):
        if connection._held_for_fork:
            connection._held_for_fork = False
            connection._lock.release()


def after_fork_in_child() -> None:
    """After os.fork, in the child: every connection is the parent's; start afresh."""
    for connection in list(_connections):
        connection._held_for_fork = False
        connection.reset_after_fork()
