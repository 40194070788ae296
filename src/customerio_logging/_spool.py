"""The SQLite spool, where operations wait to be sent, and the dead letter beside it.

One file, shared by every process that points at it: rows are claimed in a transaction
with a lease, so two senders never take the same row, and a dead sender's rows come back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._limits import BATCH_BODY_BYTES
from ._spool_file import (
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
from ._spool_file import sibling as _sibling
from ._wire import BODY_OVERHEAD, Operation, shorten
from .exceptions import CustomerIOLoggingError

__all__ = [
    "DeadLetterRow",
    "Spool",
    "SpoolBusyError",
    "SpoolStatus",
    "SpoolUnavailableError",
    "check_spool_path",
    "default_spool_path",
]

APPLICATION_ID = 0x43494F4C  # "CIOL": marks the file as ours (PRAGMA application_id)
SCHEMA_VERSION = 1
MAX_DEAD_LETTERS = 10_000
"""Dead-letter rows kept; the oldest go first beyond it."""
DEAD_LETTER_SHARE = 4
"""The dead letter keeps at most ``max_bytes // DEAD_LETTER_SHARE`` bytes (its bodies and
texts together); the oldest rows go first beyond it, counted in the file.

A share of the spool's own bound rather than a setting of its own: whatever the API
refuses, the file then holds at most 1.25 times ``max_spool_bytes`` of data, and a requeue
of every dead letter fits in the spool. A quarter, because the dead letter is there for a
person to read, fix the cause and requeue, not to keep everything: at the default 100 MiB
that is 25 MiB, at least 800 rows even at the Track API's 32,000-byte limit per
operation, and the full ``MAX_DEAD_LETTERS`` rows of events averaging 2.6 KB.
"""
DEAD_LETTER_TEXT = 1000
"""Characters kept of a dead letter's message (its reason and field: a fifth of it),
whoever writes it: the dead letter never keeps a payload's worth of words."""
REPLAY_LEASE = 300.0
"""Seconds a replay claim holds its rows: far beyond one request and its pacing."""
FRESH_LEASE = 3600.0
"""Seconds a row written by ``durability="disk"`` stays reserved for the live queue."""
CALLER_WAIT = 0.05
"""Seconds a write from a log call may wait for the spool (its lock, then SQLite's)."""
_WAIT = 5.0  # seconds any other spool call may wait for the spool's lock
_BUSY_WAIT = 2.0  # seconds any other spool call may wait for another process's write
_RETRY_OPEN_AFTER = 60.0  # seconds between attempts to use a spool that failed
_HEADER = b"SQLite format 3\x00"
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})
_FILE_PROBLEMS = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PERM",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('spool_bytes', 0);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    name TEXT,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS spool_lease_owner ON spool (lease_owner);
CREATE TRIGGER IF NOT EXISTS spool_bytes_added AFTER INSERT ON spool BEGIN
    UPDATE meta SET value = value + length(NEW.body) WHERE key = 'spool_bytes';
END;
CREATE TRIGGER IF NOT EXISTS spool_bytes_removed AFTER DELETE ON spool BEGIN
    UPDATE meta SET value = value - length(OLD.body) WHERE key = 'spool_bytes';
END;
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT,
    action TEXT,
    name TEXT,
    reason TEXT NOT NULL,
    field TEXT,
    message TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dead_letters_evicted', 0);
CREATE TRIGGER IF NOT EXISTS dead_letter_bytes_added AFTER INSERT ON dead_letter BEGIN
    UPDATE meta SET value = value + ({new}) WHERE key = 'dead_letter_bytes';
END;
CREATE TRIGGER IF NOT EXISTS dead_letter_bytes_removed AFTER DELETE ON dead_letter BEGIN
    UPDATE meta SET value = value - ({old}) WHERE key = 'dead_letter_bytes';
END;
-- After the triggers: a file from before them is counted once, rows written meanwhile
-- by another process included.
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'dead_letter_bytes', (SELECT COALESCE(SUM({row}), 0) FROM dead_letter)
    WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'dead_letter_bytes');
"""


def _dead_letter_bytes(row: str) -> str:
    """SQL for a dead letter's size in bytes: its body and its texts (UTF-8)."""
    texts = ("id", "action", "name", "reason", "field", "message")
    parts = [f"COALESCE(length({row}body), 0)"]
    parts += [f"COALESCE(length(CAST({row}{column} AS BLOB)), 0)" for column in texts]
    return " + ".join(parts)


_DEAD_LETTER_BYTES = _dead_letter_bytes("")
_SCHEMA = _SCHEMA.format(
    new=_dead_letter_bytes("NEW."), old=_dead_letter_bytes("OLD."), row=_DEAD_LETTER_BYTES
)


_INSERT = (
    "INSERT INTO spool (id, action, name, body, created, lease_owner, lease_until) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) "
)
_KEEP = _INSERT + "DO UPDATE SET lease_owner = NULL, lease_until = NULL"
"""Add, or release a row already there to replay."""
_RESERVE = _INSERT + "DO NOTHING"
"""Add leased; a row already there (spooled, or claimed by replay) is left as it is."""


def _statements(script: str) -> list[str]:
    """The script's statements one by one: ``executescript`` would commit between them."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


_SCHEMA_STATEMENTS = _statements(_SCHEMA)


class SpoolUnavailableError(CustomerIOLoggingError):
    """The spool cannot be used now: unwritable path, full disk, another workspace's file.

    Attributes:
        first: True for the first error of an episode (the one worth a warning); later
            calls fail fast with ``first=False`` until the spool is tried again.
    """

    def __init__(self, message: str, *, first: bool = True) -> None:
        super().__init__(message)
        self.first = first


class SpoolBusyError(CustomerIOLoggingError):
    """The spool is busy (another process holds its lock too long, or a re-entered call);
    nothing was written. Temporary: the spool stays in use."""


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What the spool holds.

    Attributes:
        path: The spool file.
        pending: Operations waiting to be sent.
        leased: Of those, the ones a sender has claimed right now.
        bytes: The waiting operations' size.
        max_bytes: The bound beyond which the oldest are evicted.
        oldest: When the oldest waiting operation was spooled (Unix seconds).
        newest: When the newest was.
        dead_letters: Rows in the dead letter.
        file_bytes: The file's size on disk, write-ahead log included.
        site_id: The workspace whose events these are, once one wrote here.
        dead_letter_bytes: The dead letter's size (bodies and texts).
        dead_letter_max_bytes: The bound beyond which its oldest rows are evicted.
        dead_letters_evicted: Dead letters evicted so far (beyond ``MAX_DEAD_LETTERS``
            rows or ``dead_letter_max_bytes``), by every process using the file.
    """

    path: str
    pending: int
    leased: int
    bytes: int
    max_bytes: int
    oldest: float | None
    newest: float | None
    dead_letters: int
    file_bytes: int
    site_id: str | None
    dead_letter_bytes: int = 0
    dead_letter_max_bytes: int = 0
    dead_letters_evicted: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One row of the dead letter: an operation that will not be sent, and why.

    ``body`` is the operation as it would have been sent (None for an event that never
    became one: invalid events keep only the reason).
    """

    seq: int
    id: str | None
    action: str | None
    name: str | None
    reason: str
    field: str | None
    message: str
    at: float
    body: bytes | None

    def as_json(self) -> dict[str, Any]:
        """The row as one JSON-lines record (the operation decoded)."""
        record: dict[str, Any] = {
            "seq": self.seq,
            "id": self.id,
            "action": self.action,
            "name": self.name,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "at": self.at,
        }
        record["operation"] = None if self.body is None else json.loads(self.body)
        return record


def default_spool_path(site_id: str, track_url: str) -> Path:
    """The per-user spool file for one workspace and API host.

    ``$XDG_STATE_HOME/customerio-logging`` (``~/.local/state/customerio-logging``) on
    Linux, ``~/Library/Application Support/customerio-logging`` on macOS. One file per
    workspace and host, so two apps sending to different workspaces never mix events.
    """
    import hashlib
    import sys
    import tempfile

    key = hashlib.sha256(f"{site_id}\n{track_url}".encode()).hexdigest()[:16]
    name = f"spool-{key}.sqlite3"
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if os.path.isabs(state) and sys.platform != "darwin":
        return Path(state) / "customerio-logging" / name
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        # No HOME and no passwd entry (a container running as an arbitrary uid): a
        # private folder in the temporary directory, rather than no spool at all.
        return Path(tempfile.gettempdir()) / f"customerio-logging-{os.getuid()}" / name
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "customerio-logging" / name
    return home / ".local" / "state" / "customerio-logging" / name


def check_spool_path(path: Path) -> None:
    """Refuse, as :class:`Spool` would, a spool path that is unsafe to open; make nothing.

    For read-only views of a spool (the command line), before they look at the file.

    Raises:
        SpoolUnavailableError: A symbolic link, another user's file or folder, a folder
            other users can write to without the sticky bit; the message says which.
    """
    try:
        check_place(path)
    except UnsafePathError as exc:
        raise SpoolUnavailableError(f"the spool at {path} {exc}") from None


# Connections opened before a fork, kept alive in the child: closing one there could
# checkpoint or delete the parent's write-ahead log under it (SQLite: never carry a
# connection across fork).
_abandoned: list[sqlite3.Connection] = []
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()
# Set in a child forked while a thread was inside SQLite (a fork that skipped os.fork's
# hooks, or one that could not wait): SQLite's own process-wide locks may be held by a
# thread that does not exist here, so this process never touches SQLite through us.
_forked_mid_call = False
_FORK_WAIT = 5.0  # seconds os.fork waits for a spool call in progress to end


class Spool:
    """The spool file: operations waiting to be sent, and the dead letter.

    Thread-safe; opened on first use (on whichever thread uses it first) and reopened in
    a forked child. Every method raises :class:`SpoolUnavailableError` when the file
    cannot be used and :class:`SpoolBusyError` when it is busy; neither loses what the
    file already holds.

    Args:
        path: The spool file; its directory is created (mode 0700) if missing. An
            unsafe place is refused (:class:`SpoolUnavailableError`) and left as it is: a
            symbolic link, a file or folder of another user's, a folder other users can
            write to without the sticky bit (see ``_spool_file``).
        max_bytes: Bound on the waiting operations' bytes; the oldest are evicted
            beyond it. The dead letter has its own bound, a share of it (see
            ``DEAD_LETTER_SHARE``).
        site_id: The workspace whose events this process spools and replays. A file
            holding another workspace's events is refused. None (the CLI's read-only
            views) accepts any.
        track_url: The API host the events are for, checked like ``site_id``.
        notice: Told, in words, when a corrupt or foreign file was moved aside.
        clock: Wall-clock seconds (leases are compared across processes); tests inject one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        site_id: str | None = None,
        track_url: str | None = None,
        notice: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dead_letter_max_bytes = max_bytes // DEAD_LETTER_SHARE
        self._site_id = site_id
        self._track_url = track_url
        self._notice = notice
        self._clock = clock
        self._lock = threading.RLock()
        self._holder: int | None = None  # the thread inside a transaction
        self._conn: sqlite3.Connection | None = None
        self._busy_millis = -1  # the connection's busy_timeout, as last set
        self._real: Path | None = None  # the file the connection has open, links resolved
        self._pid = os.getpid()
        self._broken_until = 0.0
        self._broken_message = ""
        self._held_for_fork = False
        _spools.add(self)

    def __repr__(self) -> str:
        return f"<Spool path={str(self.path)!r}>"

    @property
    def _owner(self) -> str:
        return _owner_token()

    # -- writing ----------------------------------------------------------------------

    def add(
        self,
        ops: Sequence[Operation],
        *,
        lease: bool = False,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Keep ``ops`` until they are sent; an op already here is released to replay.

        Args:
            ops: The operations, with their ids and bodies as they will be sent.
            lease: Reserve them for this process's own queue (``durability="disk"``):
                no replay takes them while this process lives. An op already here is
                left as it is (a reservation never takes a row back from replay).
            wait: Most seconds to wait for the spool, its lock and another process's
                write lock each (a log call passes :data:`CALLER_WAIT`).
            open_file: Open the file if it is not open yet (that may take seconds);
                when False the call raises :class:`SpoolBusyError` instead. By default
                only a call without a ``wait`` opens it.

        Returns:
            How many operations (the oldest, maybe some of ``ops``) were evicted to
            stay within ``max_bytes``.
        """
        if not ops:
            return 0
        now = self._clock()
        owner, until = (self._owner, now + FRESH_LEASE) if lease else (None, None)
        rows = [(op.id, op.action, op.name, op.body, now, owner, until) for op in ops]
        opens = wait is None if open_file is None else open_file
        with self._transaction(wait=wait, open_file=opens) as conn:
            conn.executemany(_RESERVE if lease else _KEEP, rows)
            return self._evict(conn)

    def _evict(self, conn: sqlite3.Connection) -> int:
        used = _meta_int(conn, "spool_bytes")
        if used <= self.max_bytes:
            return 0
        # Free a little more than the excess, so that a full spool evicts once per
        # twentieth of its size rather than on every write.
        target = used - self.max_bytes + self.max_bytes // 20
        row = conn.execute(
            "SELECT seq FROM (SELECT seq, SUM(length(body)) OVER (ORDER BY seq) AS total "
            "FROM spool) WHERE total >= ? ORDER BY seq LIMIT 1",
            (target,),
        ).fetchone()
        if row is None:
            return conn.execute("DELETE FROM spool").rowcount
        return conn.execute("DELETE FROM spool WHERE seq <= ?", (row[0],)).rowcount

    def claim(self, limit: int, *, max_bytes: int = BATCH_BODY_BYTES) -> list[Operation]:
        """Take up to ``limit`` waiting operations, oldest first, for this process to send.

        The rows stay in the file under a lease: :meth:`ack` removes them once sent,
        :meth:`release` gives them back, and if this process dies they come back by
        themselves when the lease ends (at once, for a sender on this host whose process
        is gone). Two claimers never get the same row.

        Args:
            limit: Most operations to take.
            max_bytes: Most bytes in a batch body made of them.
        """
        now = self._clock()
        limit = max(0, limit)  # SQLite reads LIMIT -1 as "no limit"
        with self._transaction() as conn:
            self._release_dead_owners(conn, now)
            rows = conn.execute(
                "SELECT id, action, name, body FROM spool "
                "WHERE lease_until IS NULL OR lease_until <= ? ORDER BY seq LIMIT ?",
                (now, limit),
            ).fetchall()
            ops: list[Operation] = []
            size = BODY_OVERHEAD
            for row in rows:
                op = Operation(*row)
                size += len(op.body) + (1 if ops else 0)
                if ops and size > max_bytes:
                    break
                ops.append(op)
            conn.executemany(
                "UPDATE spool SET lease_owner = ?, lease_until = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                [(self._owner, now + REPLAY_LEASE, op.id) for op in ops],
            )
        return ops

    def _release_dead_owners(self, conn: sqlite3.Connection, now: float) -> None:
        owners = conn.execute(
            "SELECT DISTINCT lease_owner FROM spool WHERE lease_owner IS NOT NULL "
            "AND lease_until > ?",
            (now,),
        ).fetchall()
        for (owner,) in owners:
            if owner != self._owner and _owner_is_gone(owner):
                conn.execute(
                    "UPDATE spool SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                    (owner,),
                )

    def ack(self, ids: Sequence[str]) -> None:
        """Remove operations that were sent."""
        if ids:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])

    def release(self, ids: Sequence[str]) -> None:
        """Give back claimed operations that could not be sent now."""
        if ids:
            with self._transaction() as conn:
                conn.executemany(
                    "UPDATE spool SET lease_owner = NULL, lease_until = NULL "
                    "WHERE id = ? AND lease_owner = ?",
                    [(i, self._owner) for i in ids],
                )

    def dead_letter(
        self,
        letters: Sequence[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Set operations aside for good (``seq`` is ignored); their spool rows go.

        Texts are cut to ``DEAD_LETTER_TEXT`` characters. The dead letter keeps its newest
        ``MAX_DEAD_LETTERS`` rows within ``dead_letter_max_bytes``; older ones are evicted
        and counted (:attr:`SpoolStatus.dead_letters_evicted`). ``wait`` and
        ``open_file`` are as for :meth:`add`.

        Returns:
            How many dead letters (the oldest, maybe some of ``letters``) were evicted.
        """
        if not letters:
            return 0
        opens = wait is None if open_file is None else open_file
        with self._transaction(wait=wait, open_file=opens) as conn:
            conn.executemany(
                "INSERT INTO dead_letter (id, action, name, reason, field, message, at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.id,
                        d.action,
                        d.name,
                        _capped(d.reason, DEAD_LETTER_TEXT // 5),
                        None if d.field is None else _capped(d.field, DEAD_LETTER_TEXT // 5),
                        _capped(d.message, DEAD_LETTER_TEXT),
                        d.at,
                        d.body,
                    )
                    for d in letters
                ],
            )
            conn.executemany("DELETE FROM spool WHERE id = ?", [(d.id,) for d in letters if d.id])
            return self._trim_dead_letters(conn)

    def _trim_dead_letters(self, conn: sqlite3.Connection) -> int:
        evicted: int = conn.execute(
            "DELETE FROM dead_letter WHERE seq NOT IN "
            "(SELECT seq FROM dead_letter ORDER BY seq DESC LIMIT ?)",
            (MAX_DEAD_LETTERS,),
        ).rowcount
        bound = self.dead_letter_max_bytes
        if _meta_int(conn, "dead_letter_bytes") > bound:
            # Keep the newest rows that fit in a little less than the bound, so that a
            # full dead letter is trimmed once per twentieth of it, not on every write.
            row = conn.execute(
                f"SELECT seq FROM (SELECT seq, SUM({_DEAD_LETTER_BYTES}) "  # noqa: S608
                "OVER (ORDER BY seq DESC) AS newer FROM dead_letter) "
                "WHERE newer > ? ORDER BY seq DESC LIMIT 1",
                (bound - bound // 20,),
            ).fetchone()
            if row is not None:
                evicted += conn.execute("DELETE FROM dead_letter WHERE seq <= ?", row).rowcount
        if evicted:
            conn.execute(
                "UPDATE meta SET value = value + ? WHERE key = 'dead_letters_evicted'", (evicted,)
            )
        return evicted

    def requeue(self, seqs: Sequence[int] | None = None, *, reason: str | None = None) -> int:
        """Move dead letters back into the spool, to be sent again by replay.

        Args:
            seqs: The rows to move; every row when None.
            reason: Only rows with this reason.

        Returns:
            Rows moved. Rows without an operation (invalid events) stay.
        """
        where, params = _dead_letter_filter(seqs, reason)
        now = self._clock()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO spool (id, action, name, body, created) "  # noqa: S608
                f"SELECT id, action, name, body, ? FROM dead_letter {where} "
                "AND body IS NOT NULL AND id IS NOT NULL ORDER BY seq "
                "ON CONFLICT (id) DO NOTHING",
                (now, *params),
            )
            moved: int = conn.execute(
                f"DELETE FROM dead_letter {where} AND body IS NOT NULL AND id IS NOT NULL",  # noqa: S608
                params,
            ).rowcount
        # No eviction here: a requeue is asked for by hand, and must not silently push
        # out what waits (the next write evicts if the spool is over its bound).
        return moved

    def purge(self) -> int:
        """Delete every waiting operation; returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM spool").rowcount

    def purge_dead_letters(
        self, seqs: Sequence[int] | None = None, *, reason: str | None = None
    ) -> int:
        """Delete dead letters (all, or the given rows or reason); returns how many."""
        where, params = _dead_letter_filter(seqs, reason)
        with self._transaction() as conn:
            return conn.execute(f"DELETE FROM dead_letter {where}", params).rowcount  # noqa: S608

    # -- reading ----------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        """Counts, bytes and ages of what the spool holds."""
        now = self._clock()
        with self._transaction(write=False) as conn:
            pending, oldest, newest = conn.execute(
                "SELECT COUNT(*), MIN(created), MAX(created) FROM spool"
            ).fetchone()
            (leased,) = conn.execute(
                "SELECT COUNT(*) FROM spool WHERE lease_until > ?", (now,)
            ).fetchone()
            (dead,) = conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()
            used = _meta_int(conn, "spool_bytes")
            dead_bytes = _meta_int(conn, "dead_letter_bytes")
            dead_evicted = _meta_int(conn, "dead_letters_evicted")
            site = conn.execute("SELECT value FROM meta WHERE key = 'site_id'").fetchone()
        file_bytes = sum(
            p.stat().st_size for p in (self.path, _sibling(self.path, "-wal")) if p.exists()
        )
        return SpoolStatus(
            path=str(self.path),
            pending=pending,
            leased=leased,
            bytes=used,
            max_bytes=self.max_bytes,
            oldest=oldest,
            newest=newest,
            dead_letters=dead,
            file_bytes=file_bytes,
            site_id=None if site is None else str(site[0]),
            dead_letter_bytes=dead_bytes,
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            dead_letters_evicted=dead_evicted,
        )

    def pending(self) -> int:
        """Operations waiting (claimed or not)."""
        with self._transaction(write=False) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM spool").fetchone()
        return int(count)

    def dead_letters(
        self, *, reason: str | None = None, limit: int | None = None
    ) -> Iterator[DeadLetterRow]:
        """The dead letter's rows, oldest first (read in pages, so export can stream)."""
        where, params = _dead_letter_filter(None, reason)
        after, left = 0, limit
        while left is None or left > 0:
            page = 500 if left is None else min(500, left)
            with self._transaction(write=False) as conn:
                rows = conn.execute(
                    "SELECT seq, id, action, name, reason, field, message, at, body "  # noqa: S608
                    f"FROM dead_letter {where} AND seq > ? ORDER BY seq LIMIT ?",
                    (*params, after, page),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield DeadLetterRow(*row)
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        self.reset_after_fork()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # -- the connection ---------------------------------------------------------------

    def prepare(self, wait: float = _WAIT) -> None:
        """Open the file now, if it is not open yet (it is opened on first use otherwise).

        Raises:
            SpoolUnavailableError: The file cannot be used.
            SpoolBusyError: The spool stayed busy for ``wait`` seconds.
        """
        if self._conn is None or self._pid != os.getpid():
            with self._transaction(write=False, wait=wait, open_file=True):
                pass

    @property
    def is_open(self) -> bool:
        """True once this process has the file open."""
        return self._conn is not None and self._pid == os.getpid()

    @contextlib.contextmanager
    def _transaction(
        self, *, write: bool = True, wait: float | None = None, open_file: bool = True
    ) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():
            self._after_fork()
        if self._holder == threading.get_ident():
            # A signal handler on this thread, run in the middle of a transaction.
            raise SpoolBusyError("the spool is in use by this very thread (a signal handler)")
        lock_wait = _WAIT if wait is None else wait
        end = time.monotonic() + lock_wait  # a given wait bounds the whole call, not each step
        if not self._lock.acquire(timeout=lock_wait):
            raise SpoolBusyError(f"the spool stayed busy for {lock_wait:g} s")
        try:
            self._holder = threading.get_ident()
            if self._conn is None and not open_file:
                raise SpoolBusyError("the spool is not open yet")
            left = None if wait is None else max(0.0, end - time.monotonic())
            conn = self._connection(_LOCK_WAIT if left is None else left)
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

    def _set_busy_wait(self, conn: sqlite3.Connection, seconds: float) -> None:
        # How long SQLite waits for another process's write lock; set only on a change.
        millis = int(seconds * 1000)
        if millis != self._busy_millis:
            conn.execute(f"PRAGMA busy_timeout = {millis}")
            self._busy_millis = millis

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

    def _connection(self, open_wait: float = 0.0) -> sqlite3.Connection:
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

    def _failed(self, exc: sqlite3.Error) -> Exception:
        name = getattr(exc, "sqlite_errorname", "")
        if name in _BUSY:
            return SpoolBusyError(f"the spool at {self.path} is busy (locked by another process)")
        # Whatever it was, start again with a fresh connection next time: opening checks
        # the file, and moves it aside if it has gone bad.
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        message = f"the spool at {self.path} cannot be used: {_plain(exc)}"
        if name.startswith(_FILE_PROBLEMS):
            # The disk or the file: don't try again on every event, only every minute.
            self._broken_until = time.monotonic() + _RETRY_OPEN_AFTER
            self._broken_message = message
        return SpoolUnavailableError(message)

    def _open(self, wait: float) -> sqlite3.Connection:
        path = self.path  # as given, in messages; SQLite gets the real one
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
        try:
            # One process at a time checks (and maybe moves aside) the file. A POSIX
            # record lock, not flock(): a child forked meanwhile does not inherit it.
            _lock_file(lock, path, wait)
            make_private(real, LOCK)  # no one else's to hold
            try:
                conn = self._open_checked(real)
            except _UnusableFileError as exc:
                moved = f"the spool file {path} {exc}; moved it to {move_aside(real).name}"
                conn = self._open_checked(real)
        except (_UnusableFileError, _RefusedFileError, UnsafePathError) as exc:
            raise SpoolUnavailableError(f"the spool at {path} {exc}") from None
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "") in _BUSY:
                raise SpoolBusyError(
                    f"the spool at {path} is busy (locked by another process)"
                ) from None
            raise SpoolUnavailableError(
                f"the spool at {path} cannot be opened: {_plain(exc)}"
            ) from None
        except OSError as exc:
            raise SpoolUnavailableError(
                f"the spool at {path} cannot be opened: {exc.strerror or type(exc).__name__}"
            ) from None
        finally:
            os.close(lock)  # closing releases the lock
        self._real = real
        if moved is not None and self._notice is not None:
            with contextlib.suppress(Exception):  # a notice must not undo a sound open
                self._notice(f"{moved} and started a fresh one")
        return conn

    def _open_checked(self, path: Path) -> sqlite3.Connection:
        checked = self._checked_file(path)
        for suffix in SIBLINGS:
            make_private(path, suffix)
        conn = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
        try:
            # SQLite opens the path by name, itself: the file it opened must be the one
            # checked, not one (or a link) put in its place meanwhile.
            check_opened(conn, checked)
            new = self._check_file(conn)
            make_private(path)  # before the -wal is made: SQLite gives it the file's mode
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with synchronous=NORMAL: a commit survives the process being killed
            # (it is in the OS's cache); only a power loss can take the last ones.
            conn.execute("PRAGMA synchronous = NORMAL")
            _create_schema(conn, stamp=new)
            self._check_workspace(conn)
            for suffix in ("-wal", "-shm"):  # made by SQLite by now: check them again
                make_private(path, suffix)
        except BaseException:
            conn.close()
            raise
        return conn

    def _checked_file(self, path: Path) -> FileId:
        """Check the spool file (made if missing, never through a link); its identity."""
        if any(s is not self and s._conn is not None and s._real == path for s in list(_spools)):
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

    def _check_file(self, conn: sqlite3.Connection) -> bool:
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
                raise _UnusableFileError(f"is damaged ({_plain(exc)})") from None
            raise
        if check != "ok":
            raise _UnusableFileError("is damaged (integrity check failed)")
        if version > SCHEMA_VERSION:
            raise _RefusedFileError(
                f"was written by a newer customerio-logging (format {version}); upgrade, "
                f"or point spool_path elsewhere"
            )
        return False

    def _check_workspace(self, conn: sqlite3.Connection) -> None:
        if self._site_id is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN ('site_id', 'track_url')")
            )
            mine = {"site_id": self._site_id}
            if self._track_url:
                mine["track_url"] = self._track_url
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


def _create_schema(conn: sqlite3.Connection, *, stamp: bool) -> None:
    """Make the file a spool (``stamp``: mark it ours), or bring an older one up to date:
    all in one transaction, so that a process killed meanwhile leaves no half-made file."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if stamp:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in _SCHEMA_STATEMENTS:
            conn.execute(statement)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


class _UnusableFileError(Exception):
    """The file is damaged or not ours: move it aside and start a fresh one."""


class _RefusedFileError(Exception):
    """The file is sound but not for us: leave it be, and do without."""


_LOCK_WAIT = 10.0  # seconds: a quick_check of a large file, done by another process


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


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else shorten(text, limit)


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _dead_letter_filter(
    seqs: Sequence[int] | None, reason: str | None
) -> tuple[str, tuple[Any, ...]]:
    # Placeholders only: the values travel as parameters, never in the SQL text.
    clauses: list[str] = ["1"]
    params: list[Any] = []
    if seqs is not None:
        clauses.append(f"seq IN ({', '.join('?' * len(seqs))})" if seqs else "0")
        params.extend(seqs)
    if reason is not None:
        clauses.append("reason = ?")
        params.append(reason)
    return "WHERE " + " AND ".join(clauses), tuple(params)


def _plain(exc: sqlite3.Error) -> str:
    # SQLite's messages name the problem ("database or disk is full"), never the data.
    text = str(exc) or getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR"):
        text += " (is the disk full, or a file size limit reached?)"
    return text


# -- leases -----------------------------------------------------------------------------


def before_fork() -> None:
    """Before os.fork: wait (bounded) until no thread is inside a spool call."""
    for spool in list(_spools):
        spool._held_for_fork = spool._lock.acquire(timeout=_FORK_WAIT)


def after_fork_in_parent() -> None:
    """After os.fork, in the parent: the spools' locks held for the fork are let go."""
    for spool in list(_spools):
        if spool._held_for_fork:
            spool._held_for_fork = False
            spool._lock.release()


def after_fork_in_child() -> None:
    """After os.fork, in the child: every spool's lock and connection is the child's own."""
    for spool in list(_spools):
        spool._held_for_fork = False
        spool.reset_after_fork()


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_token: tuple[int, str] = (0, "")


def _owner_token() -> str:
    """Who holds a lease: host, pid namespace, pid, and a random part for this process.

    One per process (every spool object in it shares it), made anew after a fork.
    """
    global _token
    pid, token = _token
    if pid != os.getpid():
        pid = os.getpid()
        token = "|".join((socket.gethostname(), _pid_namespace(), str(pid), secrets.token_hex(6)))
        _token = (pid, token)
    return token


def _owner_is_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that no longer exists.

    Only a process in the same host and pid namespace can be looked up; any other
    owner's lease runs its full time.
    """
    parts = owner.split("|")
    if len(parts) != 4 or parts[0] != socket.gethostname() or parts[1] != _pid_namespace():
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return True  # this process, but an earlier owner token: one from before a fork
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False
