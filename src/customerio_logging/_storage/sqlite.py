"""The SQLite spool: operations waiting to be sent, and the dead letter, in one file.

One file, shared by every process that points at it: rows are claimed in a transaction
with a lease, so two senders never take the same row, and a dead sender's rows come back.
This module holds the store's SQL; opening the file and its connection live beside it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._limits import BATCH_BODY_BYTES
from .._wire import BODY_OVERHEAD, Operation, shorten
from .base import (
    DEAD_LETTER_SHARE,
    DEAD_LETTER_TEXT,
    MAX_DEAD_LETTERS,
    DeadLetterRow,
    SpoolStatus,
)
from .leases import FRESH_LEASE, REPLAY_LEASE, owner_is_gone, owner_token
from .sqlite_connection import DEFAULT_WAIT, SpoolConnection
from .sqlite_schema import DEAD_LETTER_BYTES, meta_int
from .sqlite_size import FileBudget, file_pages, free_pages, on_disk

__all__ = ["DEAD_LETTER_SHARE", "DEAD_LETTER_TEXT", "MAX_DEAD_LETTERS", "SQLiteSpool"]

_INSERT = (
    "INSERT INTO spool (id, action, name, body, created, lease_owner, lease_until) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) "
)
_KEEP = _INSERT + "DO UPDATE SET lease_owner = NULL, lease_until = NULL"
"""Add, or release a row already there to replay."""
_RESERVE = _INSERT + "DO NOTHING"
"""Add leased; a row already there (spooled, or claimed by replay) is left as it is."""
_Row = tuple[str, str, str | None, bytes, float, str | None, float | None]
"""A ``spool`` row as ``add`` writes it: id, action, name, body, created, lease."""
_EVICTION_ROUNDS = 8  # rounds of eviction in one write, at most (one, almost always)
_EVICTION_PAGE = 512  # rows read at a time while looking for the last one to evict


class SQLiteSpool:
    """The spool file: operations waiting to be sent, and the dead letter.

    A :class:`~.base.Storage`. Thread-safe; opened on first use (on whichever thread
    uses it first) and reopened in a forked child. Every method raises
    :class:`~.base.SpoolUnavailableError` when the file cannot be used and
    :class:`~.base.SpoolBusyError` when it is busy; neither loses what the file already
    holds.

    Args:
        path: The spool file; its directory is created (mode 0700) if missing. An
            unsafe place is refused (:class:`~.base.SpoolUnavailableError`) and left as
            it is: a symbolic link, a file or folder of another user's, a folder other
            users can write to without the sticky bit (see ``sqlite_path``).
        max_bytes: Bound on the file's size on disk, with its write-ahead log and the
            log's index: writes evict the oldest waiting operations to stay within it
            (see ``sqlite_size``; below 1 MiB it bounds their bytes alone). The dead
            letter has a bound of its own within it (see ``DEAD_LETTER_SHARE``).
        site_id: The workspace whose events this process spools and replays. A file
            holding another workspace's events is refused. None (the CLI's read-only
            views) accepts any.
        track_url: The API host the events are for, checked like ``site_id``.
        on_problem: Told, in words, when a corrupt or foreign file was moved aside.
        clock: Wall-clock seconds (leases are compared across processes); tests inject one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        site_id: str | None = None,
        track_url: str | None = None,
        on_problem: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dead_letter_max_bytes = max_bytes // DEAD_LETTER_SHARE
        self._clock = clock
        self._file = SpoolConnection(
            self.path,
            site_id=site_id,
            track_url=track_url,
            on_problem=on_problem,
            max_bytes=max_bytes,
        )

    def __repr__(self) -> str:
        return f"<SQLiteSpool path={str(self.path)!r}>"

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
            wait: Most seconds for the whole call (a log call passes ``CALLER_WAIT``);
                see :class:`~.base.Storage`.
            open_file: Open the file if need be (see :class:`~.base.Storage`).

        Returns:
            How many operations (the oldest, maybe some of ``ops``) were evicted to
            keep the file within ``max_bytes``.
        """
        if not ops:
            return 0
        now = self._clock()
        owner, until = (owner_token(), now + FRESH_LEASE) if lease else (None, None)
        rows: list[_Row] = [(op.id, op.action, op.name, op.body, now, owner, until) for op in ops]
        opens = wait is None if open_file is None else open_file
        with self._file.transaction(wait=wait, open_file=opens) as conn:
            return _write(
                conn, _RESERVE if lease else _KEEP, rows, self.max_bytes, self._file.budget
            )

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
        with self._file.transaction() as conn:
            _release_dead_owners(conn, now)
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
                [(owner_token(), now + REPLAY_LEASE, op.id) for op in ops],
            )
        return ops

    def ack(self, ids: Sequence[str]) -> None:
        """Remove operations that were sent."""
        if ids:
            with self._file.transaction() as conn:
                conn.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])

    def release(self, ids: Sequence[str]) -> None:
        """Give back claimed operations that could not be sent now."""
        if ids:
            with self._file.transaction() as conn:
                conn.executemany(
                    "UPDATE spool SET lease_owner = NULL, lease_until = NULL "
                    "WHERE id = ? AND lease_owner = ?",
                    [(i, owner_token()) for i in ids],
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
        with self._file.transaction(wait=wait, open_file=opens) as conn:
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
            return _trim_dead_letters(conn, self.dead_letter_max_bytes)

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
        with self._file.transaction() as conn:
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
        with self._file.transaction() as conn:
            return conn.execute("DELETE FROM spool").rowcount

    def purge_dead_letters(
        self, seqs: Sequence[int] | None = None, *, reason: str | None = None
    ) -> int:
        """Delete dead letters (all, or the given rows or reason); returns how many."""
        where, params = _dead_letter_filter(seqs, reason)
        with self._file.transaction() as conn:
            return conn.execute(f"DELETE FROM dead_letter {where}", params).rowcount  # noqa: S608

    # -- reading ----------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        """Counts, bytes and ages of what the spool holds."""
        now = self._clock()
        with self._file.transaction(write=False) as conn:
            pending, oldest, newest = conn.execute(
                "SELECT COUNT(*), MIN(created), MAX(created) FROM spool"
            ).fetchone()
            (leased,) = conn.execute(
                "SELECT COUNT(*) FROM spool WHERE lease_until > ?", (now,)
            ).fetchone()
            (dead,) = conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()
            used = meta_int(conn, "spool_bytes")
            dead_bytes = meta_int(conn, "dead_letter_bytes")
            dead_evicted = meta_int(conn, "dead_letters_evicted")
            site = conn.execute("SELECT value FROM meta WHERE key = 'site_id'").fetchone()
        return SpoolStatus(
            path=str(self.path),
            pending=pending,
            leased=leased,
            bytes=used,
            max_bytes=self.max_bytes,
            oldest=oldest,
            newest=newest,
            dead_letters=dead,
            file_bytes=on_disk(self.path),
            site_id=None if site is None else str(site[0]),
            dead_letter_bytes=dead_bytes,
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            dead_letters_evicted=dead_evicted,
        )

    def pending(self) -> int:
        """Operations waiting (claimed or not)."""
        with self._file.transaction(write=False) as conn:
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
            with self._file.transaction(write=False) as conn:
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

    # -- the connection ---------------------------------------------------------------

    def prepare(self, wait: float = DEFAULT_WAIT) -> None:
        """Open the file now, if it is not open yet (see :meth:`~.base.Storage.prepare`)."""
        self._file.prepare(wait)

    @property
    def is_open(self) -> bool:
        """True once this process has the file open."""
        return self._file.is_open

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        self._file.close()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connection without closing it."""
        self._file.reset_after_fork()


def _write(
    conn: sqlite3.Connection,
    sql: str,
    rows: list[_Row],
    max_bytes: int,
    budget: FileBudget | None,
) -> int:
    """Write ``rows`` with ``sql``, evicting as they go (see ``_parts``); how many went."""
    evicted = 0
    for part in [rows] if budget is None or len(rows) == 1 else _parts(rows, budget):
        conn.executemany(sql, part)
        evicted += _evict(conn, max_bytes, budget)
    return evicted


def _evict(conn: sqlite3.Connection, max_bytes: int, budget: FileBudget | None) -> int:
    """Delete the oldest waiting rows until the file's pages in use fit in ``budget``
    (the waiting rows' bytes in ``max_bytes`` when there is none); how many."""
    if budget is None:
        used = meta_int(conn, "spool_bytes")
        if used <= max_bytes:
            return 0
        # Free a little more than the excess, so that a full spool evicts once per
        # twentieth of its size rather than on every write.
        return _delete_oldest(conn, used - max_bytes + max_bytes // 20)
    evicted = 0
    for _ in range(_EVICTION_ROUNDS):
        pages = file_pages(conn)
        if pages > budget.pages:
            # Only then are its free pages counted: one statement less on every write
            # until the spool first fills.
            pages -= free_pages(conn)
        if pages <= budget.pages:
            break
        # The waiting rows' share of the pages in use says how many of their bytes free
        # that many pages; a round that frees too few (dead letters share the pages,
        # rows on pages left part full) is followed by another.
        share = meta_int(conn, "spool_bytes") / (pages * budget.page_size)
        want = (pages - budget.pages + budget.step) * budget.page_size
        deleted = _delete_oldest(conn, max(1, int(want * share)))
        if not deleted:
            break
        evicted += deleted
    return evicted


def _parts(rows: list[_Row], budget: FileBudget) -> Iterator[list[_Row]]:
    """``rows`` in parts of at most half an eviction's step of bodies (each at least one
    row): evicting after each part keeps a large write from growing the file past its
    budget before the first eviction."""
    most = budget.step * budget.page_size // 2
    start, size = 0, 0
    for end, row in enumerate(rows):
        size += len(row[3])
        if size > most and end > start:
            yield rows[start:end]
            start, size = end, len(row[3])
    yield rows[start:]


def _delete_oldest(conn: sqlite3.Connection, size: int) -> int:
    """Delete the oldest waiting rows whose bodies add up to ``size`` bytes (every row,
    if they all add up to less); how many.

    Reads the rows' lengths oldest first, and no further than needed: a window over the
    whole table would read every row of a full spool on each eviction."""
    total, last = 0, None
    rows = conn.execute("SELECT seq, length(body) FROM spool ORDER BY seq")
    try:
        while total < size and (page := rows.fetchmany(_EVICTION_PAGE)):
            for seq, length in page:
                total += length
                last = seq
                if total >= size:
                    break
    finally:
        rows.close()
    if last is None:
        return 0
    return int(conn.execute("DELETE FROM spool WHERE seq <= ?", (last,)).rowcount)


def _release_dead_owners(conn: sqlite3.Connection, now: float) -> None:
    """End the leases still running of owners known to be gone (see ``owner_is_gone``)."""
    owners = conn.execute(
        "SELECT DISTINCT lease_owner FROM spool WHERE lease_owner IS NOT NULL AND lease_until > ?",
        (now,),
    ).fetchall()
    for (owner,) in owners:
        if owner != owner_token() and owner_is_gone(owner):
            conn.execute(
                "UPDATE spool SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                (owner,),
            )


def _trim_dead_letters(conn: sqlite3.Connection, bound: int) -> int:
    """Keep the newest ``MAX_DEAD_LETTERS`` dead letters within ``bound`` bytes; how many
    went (counted in ``meta`` too)."""
    evicted: int = conn.execute(
        "DELETE FROM dead_letter WHERE seq NOT IN "
        "(SELECT seq FROM dead_letter ORDER BY seq DESC LIMIT ?)",
        (MAX_DEAD_LETTERS,),
    ).rowcount
    if meta_int(conn, "dead_letter_bytes") > bound:
        # Keep the newest rows that fit in a little less than the bound, so that a
        # full dead letter is trimmed once per twentieth of it, not on every write.
        row = conn.execute(
            f"SELECT seq FROM (SELECT seq, SUM({DEAD_LETTER_BYTES}) "  # noqa: S608
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


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else shorten(text, limit)


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
