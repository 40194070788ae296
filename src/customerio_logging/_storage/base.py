"""The Storage protocol: what the bridge and replay ask of the spool, whatever keeps it.

Beside it, the types the protocol speaks in: its errors, its status and its dead letters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._limits import BATCH_BODY_BYTES
from .._wire import Operation
from ..exceptions import CustomerIOLoggingError

__all__ = [
    "CALLER_WAIT",
    "DEAD_LETTER_SHARE",
    "DEAD_LETTER_TEXT",
    "MAX_DEAD_LETTERS",
    "DeadLetterRow",
    "SpoolBusyError",
    "SpoolStatus",
    "SpoolUnavailableError",
    "Storage",
]

CALLER_WAIT = 0.05
"""Seconds a write from a log call may wait for the spool (its lock, then the backend's)."""

MAX_DEAD_LETTERS = 10_000
"""Dead-letter rows kept; the oldest go first beyond it."""
DEAD_LETTER_SHARE = 4
"""The dead letter keeps at most ``max_bytes // DEAD_LETTER_SHARE`` bytes (its bodies and
texts together); the oldest rows go first beyond it, counted by the storage.

A share of the spool's own bound rather than a setting of its own: whatever the API
refuses, the dead letter then takes at most about a quarter of the storage, which
stays within ``max_spool_bytes`` (the waiting operations have the rest), and a requeue of
every dead letter fits in the spool. A quarter, because the dead letter is there for a
person to read, fix the cause and requeue, not to keep everything: at the default 100 MiB
that is 25 MiB, at least 800 rows even at the Track API's 32,000-byte limit per
operation, and the full ``MAX_DEAD_LETTERS`` rows of events averaging 2.6 KB.
"""
DEAD_LETTER_TEXT = 1000
"""Characters kept of a dead letter's message (its reason and field: a fifth of it),
whoever writes it: the dead letter never keeps a payload's worth of words."""


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
        path: The spool file (or, for another backend, where it keeps the spool).
        pending: Operations waiting to be sent.
        leased: Of those, the ones a sender has claimed right now.
        bytes: The waiting operations' size (their bodies).
        max_bytes: The bound on the storage's size: beyond it the oldest waiting
            operations are evicted (see :class:`Storage`).
        oldest: When the oldest waiting operation was spooled (Unix seconds).
        newest: When the newest was.
        dead_letters: Rows in the dead letter.
        file_bytes: What the storage takes where it keeps the spool: for a file, its
            size on disk, write-ahead log and the log's index included.
        site_id: The workspace whose events these are, once one wrote here.
        dead_letter_bytes: The dead letter's size (bodies and texts).
        dead_letter_max_bytes: The bound beyond which its oldest rows are evicted.
        dead_letters_evicted: Dead letters evicted so far (beyond the most rows kept or
            ``dead_letter_max_bytes``), by every process using the spool.
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


class Storage(Protocol):
    """Where operations wait to be sent, shared by every process that points at it.

    Delivery is at least once: an operation stays stored until :meth:`ack` (sent) or
    :meth:`dead_letter` (refused for good) removes it, or until eviction makes room past
    the storage's byte bound (the oldest first, and counted). The bound is on all the
    storage takes where it keeps the spool, not only the waiting operations' bodies:
    their keys and indexes, the dead letter, and for a file its write-ahead log
    (:attr:`SpoolStatus.file_bytes`). Each write evicts enough to stay within it, give
    or take one eviction's step; a bound too small for the storage's own structure
    bounds the waiting operations' bytes alone. A sender that dies between
    sending and acking leaves its rows to be sent again when their lease ends; every
    operation keeps its id, so the API drops the duplicate.

    A lease is a claim on rows with an end time on the wall clock (leases are compared
    across processes and hosts): while it runs, no other claimer gets those rows; when it
    ends, or as soon as the storage can tell that the owning process is gone, they are
    claimable again. A claim's lease lasts ``leases.REPLAY_LEASE`` seconds, a reservation
    (``add(lease=True)``) ``leases.FRESH_LEASE``. Leases belong to the process, not to the
    object: every storage object of one process shares one owner (``leases.owner_token``),
    and a forked child is a new owner.

    Every method is thread-safe and bounded in time. Each raises
    :class:`SpoolUnavailableError` when the storage cannot be used (with ``first`` set
    for the first error of an episode, the one worth a warning) and
    :class:`SpoolBusyError` when it stayed busy for its wait; neither loses what the
    storage already holds, and a failed write wrote nothing. A call made from inside
    another on the same thread (a signal handler) raises :class:`SpoolBusyError`.

    ``wait``, where a method takes it, is the most seconds the whole call may wait for
    the storage (its lock in this process, then another process's); None means the
    backend's ordinary bounded waits. ``open_file=False`` makes a call raise
    :class:`SpoolBusyError` rather than open (or connect to) a storage not open yet in
    this process, which may take seconds; None opens only when no ``wait`` was given.
    """

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
            ops: The operations, with their ids and bodies as they will be sent. An id
                already stored stays one row, in its place.
            lease: Reserve them for this process's own queue (``durability="disk"``):
                no claim takes them while this process lives, for a long lease. An op
                already here is then left as it is (a reservation never takes a row
                back from replay).
            wait: See the class.
            open_file: See the class.

        Returns:
            How many operations (the oldest, maybe some of ``ops``) were evicted to stay
            within the byte bound (see the class).
        """
        ...

    def claim(self, limit: int, *, max_bytes: int = BATCH_BODY_BYTES) -> list[Operation]:
        """Take up to ``limit`` waiting operations, oldest first, for this process to send.

        The rows stay stored under a lease: :meth:`ack` removes them once sent,
        :meth:`release` gives them back, and if this process dies they come back by
        themselves when the lease ends. Two claimers never get the same row while its
        lease runs. Rows whose lease ended, or whose owner is known to be gone, are
        claimable.

        Args:
            limit: Most operations to take (0 or less: none).
            max_bytes: Most bytes in a batch body made of them; one operation larger
                than that is still taken, alone.
        """
        ...

    def ack(self, ids: Sequence[str]) -> None:
        """Remove operations that were sent; unknown ids are ignored."""
        ...

    def release(self, ids: Sequence[str]) -> None:
        """Give back operations this process claimed and could not send now.

        Only this process's own leases end; ids it does not hold are ignored.
        """
        ...

    def dead_letter(
        self,
        letters: Sequence[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Set operations aside for good (``seq`` is ignored); their waiting rows go.

        The dead letter is bounded too (its oldest rows go first, and are counted in
        :attr:`SpoolStatus.dead_letters_evicted`); long texts are cut. ``wait`` and
        ``open_file`` are as for :meth:`add`.

        Returns:
            How many dead letters (the oldest, maybe some of ``letters``) were evicted.
        """
        ...

    def requeue(self, seqs: Sequence[int] | None = None, *, reason: str | None = None) -> int:
        """Move dead letters back to wait, to be sent again by replay.

        Args:
            seqs: The rows to move; every row when None.
            reason: Only rows with this reason.

        Returns:
            Rows moved. Rows without an operation (invalid events) stay; an id already
            waiting stays one row.
        """
        ...

    def purge(self) -> int:
        """Delete every waiting operation, claimed or not; returns how many."""
        ...

    def purge_dead_letters(
        self, seqs: Sequence[int] | None = None, *, reason: str | None = None
    ) -> int:
        """Delete dead letters (all, or the given rows or reason); returns how many."""
        ...

    def status(self) -> SpoolStatus:
        """Counts, bytes and ages of what the storage holds."""
        ...

    def pending(self) -> int:
        """Operations waiting (claimed or not)."""
        ...

    def dead_letters(
        self, *, reason: str | None = None, limit: int | None = None
    ) -> Iterator[DeadLetterRow]:
        """The dead letter's rows, oldest first, at most ``limit``; read lazily, so an
        export can stream."""
        ...

    def prepare(self, wait: float = ...) -> None:
        """Open the storage now, if this process has not yet (else it opens on first use).

        Args:
            wait: Most seconds to wait; by default the backend's ordinary wait.

        Raises:
            SpoolUnavailableError: The storage cannot be used.
            SpoolBusyError: It stayed busy for ``wait`` seconds.
        """
        ...

    @property
    def is_open(self) -> bool:
        """True once this process has the storage open (a forked child has not)."""
        ...

    def close(self) -> None:
        """Close this process's connection; a later call opens it again. Never raises."""
        ...

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's connection without closing it (closing
        could disturb the parent's), so that the next call opens the child's own.
        Harmless in the process that opened it."""
        ...
