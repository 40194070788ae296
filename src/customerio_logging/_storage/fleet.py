"""The fleet's storage: the backlog in Redis, shared by every process and host, and the
local spool file while Redis cannot be reached, whose rows move to Redis once it answers.

Redis is never a single point of failure: a failed Redis call marks it down for a while
(one warning per outage), and until the next try every write goes to the local file at
once, without waiting on Redis again.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from .._limits import BATCH_BODY_BYTES
from .._redis_client import FIRST_RETRY, LONGEST_RETRY, Health
from .._wire import Operation
from .base import DeadLetterRow, SpoolBusyError, SpoolStatus, SpoolUnavailableError, Storage

__all__ = [
    "ACKS_KEPT",
    "FIRST_RETRY",
    "LOCAL_LOOK",
    "LONGEST_RETRY",
    "MOVE_BATCH",
    "FleetStorage",
]

MOVE_BATCH = 1000
"""Rows moved from the local file to Redis at most per claim, once Redis answers again."""
LOCAL_LOOK = 30.0
"""Seconds between looks at a local file thought empty (as replay's at an empty spool)."""
ACKS_KEPT = 100_000
"""Acks of Redis's rows kept in memory while Redis is down (beyond them, those rows are
sent again after their lease, and the API drops the duplicates by id)."""


class _OperatorViews:
    """The reads and writes an operator makes (the CLI's): the fleet's, so Redis's."""

    remote: Storage

    def requeue(self, seqs: Sequence[int] | None = None, *, reason: str | None = None) -> int:
        """Move Redis's dead letters back to wait."""
        return self.remote.requeue(seqs, reason=reason)

    def purge(self) -> int:
        """Delete every operation waiting in Redis (the local file is the CLI's to purge)."""
        return self.remote.purge()

    def purge_dead_letters(
        self, seqs: Sequence[int] | None = None, *, reason: str | None = None
    ) -> int:
        """Delete Redis's dead letters (all, or the given rows or reason)."""
        return self.remote.purge_dead_letters(seqs, reason=reason)

    def status(self) -> SpoolStatus:
        """Redis's status: the fleet's backlog."""
        return self.remote.status()

    def dead_letters(
        self, *, reason: str | None = None, limit: int | None = None
    ) -> Iterator[DeadLetterRow]:
        """Redis's dead letter, oldest first."""
        return self.remote.dead_letters(reason=reason, limit=limit)


class FleetStorage(_OperatorViews):
    """A :class:`~.base.Storage` over two: ``remote`` (Redis) while it answers, ``local``
    (the SQLite spool file) while it does not.

    - Writes go to ``remote``; when it fails they go to ``local``, and from then on
      straight to ``local`` until Redis answers again. Only the library's own threads
      try it again (a claim, or a write without ``wait``), each time ``FIRST_RETRY``
      (doubling to ``LONGEST_RETRY``) has passed since the last failure: a log call
      never waits on a Redis that is down.
    - ``claim`` first moves up to ``MOVE_BATCH`` rows from ``local`` to ``remote``
      (rows left there by an outage, this process's or an earlier one's on this host),
      then claims from ``remote``; while ``remote`` is down it claims from ``local``.
    - Rows this process holds in ``local`` (claimed, or reserved by
      ``durability="disk"``) are acked, released and dead-lettered there.
    - The reads an operator makes (``status``, ``dead_letters``, ``requeue``,
      ``purge``...) are the fleet's: ``remote``'s. ``pending`` counts both.

    Args:
        remote: The Redis storage.
        local: The local spool file; None when ``spool_path=False`` (then Redis's errors
            are the caller's).
        location: Where ``remote`` is, without secrets, for the warnings.
        on_problem: Told, in words, when Redis stops answering and when it answers again.
        on_evicted: Told how many operations Redis evicted to take rows moved from the
            local file (a write's own evictions are its return value; a move has none).
        clock: Monotonic seconds; tests inject one.
    """

    def __init__(
        self,
        remote: Storage,
        local: Storage | None,
        *,
        location: str,
        on_problem: Callable[[str], None] | None = None,
        on_evicted: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote = remote
        self.local = local
        self._location = location
        self._on_problem = on_problem
        self._on_evicted = on_evicted
        self._clock = clock
        self._reset_state()

    def _reset_state(self) -> None:
        self._health = Health(self._clock, fallback=self.local is not None)
        # Ids this process holds in the local file: claimed there, or reserved there.
        self._held_locally: set[str] = set()
        # Acks of rows in Redis made while it was down, made once it answers again.
        self._acks_waiting: deque[str] = deque()
        # Whether the local file may hold rows to move (this process wrote there, or
        # Redis failed), and otherwise when to look at it (another process's rows).
        self._local_may_hold = False
        self._next_look = 0.0

    def __repr__(self) -> str:
        return f"<FleetStorage remote={self.remote!r} local={self.local!r}>"

    # -- Redis up or down ---------------------------------------------------------------

    @property
    def remote_down(self) -> bool:
        """True while Redis is taken as down: from a failed call until one succeeds."""
        return self._health.down

    def _use_remote(self, *, probe: bool = True) -> bool:
        return self._health.use_remote(probe=probe)

    def _failed(self, exc: SpoolUnavailableError) -> None:
        """Redis failed: taken as down; warned about once per outage."""
        if self.local is None or not self._health.failed():
            return
        self._local_may_hold = True
        if self._on_problem is not None:
            self._on_problem(
                f"{exc}. Using the local spool on this host until Redis answers again "
                f"(tried again within {LONGEST_RETRY:g}s); what is spooled meanwhile moves "
                f"to Redis then"
            )

    def _answered(self) -> None:
        if not self._health.answered():
            return
        acks = []
        with contextlib.suppress(IndexError):  # taken one by one: others may append
            while True:
                acks.append(self._acks_waiting.popleft())
        if acks:
            with contextlib.suppress(SpoolUnavailableError, SpoolBusyError):
                self.remote.ack(acks)  # else replay sends them again: the API drops those
        if self.local is not None and self._on_problem is not None:
            self._on_problem(
                f"Redis at {self._location} answers again: the local spool's rows move to it"
            )

    # -- writing ------------------------------------------------------------------------

    def add(
        self,
        ops: Sequence[Operation],
        *,
        lease: bool = False,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Keep ``ops``: in Redis, or in the local file while Redis is down. Of a ``wait``,
        Redis gets half, the file what is left: time to take them if Redis hangs."""
        if not ops:
            return 0
        start = time.monotonic()
        if self._use_remote(probe=wait is None):
            share = wait if wait is None or self.local is None else wait / 2
            try:
                evicted = self.remote.add(ops, lease=lease, wait=share, open_file=open_file)
            except SpoolUnavailableError as exc:
                if self.local is None:
                    raise
                self._failed(exc)
            except SpoolBusyError:
                # Busy, not down (this thread's own call in a signal handler, another
                # thread holding it past the wait): the file takes them, Redis stays up.
                if self.local is None:
                    raise
            else:
                if wait is None:  # not a log call's: the acks waiting for Redis may wait
                    self._answered()
                if not lease and self._held_locally:
                    assert self.local is not None
                    _drop_local_copies(ops, self.local, self._held_locally)
                return evicted
        assert self.local is not None
        if wait is not None:
            wait = max(0.0, wait - (time.monotonic() - start))
        evicted = self.local.add(ops, lease=lease, wait=wait, open_file=open_file)
        self._local_may_hold = True
        if lease:
            self._held_locally.update(op.id for op in ops)
        return evicted

    def claim(self, limit: int, *, max_bytes: int = BATCH_BODY_BYTES) -> list[Operation]:
        """Move what waits locally to Redis, then claim from Redis; from the local file
        while Redis is down."""
        if self._use_remote():
            try:
                self._move_local_rows()
                ops = self.remote.claim(limit, max_bytes=max_bytes)
            except SpoolUnavailableError as exc:
                if self.local is None:
                    raise
                self._failed(exc)
            else:
                self._answered()
                return ops
        assert self.local is not None
        ops = self.local.claim(limit, max_bytes=max_bytes)
        self._held_locally.update(op.id for op in ops)
        return ops

    def _move_local_rows(self) -> None:
        """Up to ``MOVE_BATCH`` local rows to Redis (raises Redis's errors)."""
        local = self.local
        if local is None:
            return
        if not self._local_may_hold and self._clock() < self._next_look:
            return
        try:
            if not self._local_may_hold:
                # Another process on this host may have left rows there (an outage's).
                self._next_look = self._clock() + LOCAL_LOOK
                self._local_may_hold = local.pending() > 0
                if not self._local_may_hold:
                    _hand_over_letters(local, self.remote)
                    return
            ops = local.claim(MOVE_BATCH, max_bytes=1 << 62)
        except (SpoolUnavailableError, SpoolBusyError):
            return  # the local file's own problem: Redis serves meanwhile
        if not ops:
            self._local_may_hold = bool(self._held_locally)
            _hand_over_letters(local, self.remote)
            return
        evicted = _hand_over(ops, local, self.remote)
        if evicted and self._on_evicted is not None:
            self._on_evicted(evicted)  # lost events: counted, like a write's evictions

    def ack(self, ids: Sequence[str]) -> None:
        """Remove sent operations, wherever this process holds them."""
        self._settle(ids, _ack)

    def release(self, ids: Sequence[str]) -> None:
        """Give back claimed operations, wherever this process holds them."""
        self._settle(ids, _release)

    def _settle(self, ids: Sequence[str], step: Callable[[Storage, Sequence[str]], None]) -> None:
        if not ids:
            return
        held = self._held_locally
        here = [i for i in ids if i in held] if held else []
        there = [i for i in ids if i not in held] if here else list(ids)
        if here:
            assert self.local is not None
            step(self.local, here)
            held.difference_update(here)
        if not there:
            return
        if not self._use_remote():
            # Redis is down: an ack waits for it in memory (a release needs nothing:
            # the lease ends by itself). Never a wait on a Redis that does not answer.
            if step is _ack and len(self._acks_waiting) + len(there) <= ACKS_KEPT:
                self._acks_waiting.extend(there)
            return
        try:
            step(self.remote, there)
        except SpoolUnavailableError as exc:
            if self.local is not None:
                self._failed(exc)
            raise
        self._answered()

    def dead_letter(
        self,
        letters: Sequence[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> int:
        """Set operations aside: in Redis's dead letter, or the local file's while Redis
        is down. A row this process holds locally leaves the local file either way."""
        if not letters:
            return 0
        held = self._held_locally
        local_ids = [d.id for d in letters if d.id is not None and d.id in held]
        if self._use_remote(probe=wait is None):
            try:
                evicted = self.remote.dead_letter(letters, wait=wait, open_file=open_file)
            except SpoolUnavailableError as exc:
                if self.local is None:
                    raise
                self._failed(exc)
            else:
                if wait is None:  # as in add: never a log call's to make
                    self._answered()
                if local_ids:
                    assert self.local is not None
                    self.local.ack(local_ids)
                    held.difference_update(local_ids)
                return evicted
        assert self.local is not None
        evicted = self.local.dead_letter(letters, wait=wait, open_file=open_file)
        held.difference_update(local_ids)
        return evicted

    def pending(self) -> int:
        """Operations waiting in Redis and in the local file."""
        count = self.remote.pending() if self._use_remote() else 0
        if self.local is not None:
            count += self.local.pending()
        return count

    # -- connections --------------------------------------------------------------------

    def prepare(self, wait: float | None = None) -> None:
        """Connect to Redis now; if it cannot be reached, open the local file instead."""
        try:
            self.remote.prepare() if wait is None else self.remote.prepare(wait)
        except SpoolUnavailableError as exc:
            if self.local is None:
                raise
            self._failed(exc)
            self.local.prepare() if wait is None else self.local.prepare(wait)
        else:
            self._answered()

    @property
    def is_open(self) -> bool:
        """True once Redis, or while it is down the local file, is open."""
        if self.local is not None and self.remote_down:
            return self.local.is_open
        return self.remote.is_open

    def close(self) -> None:
        """Close both connections."""
        self.remote.close()
        if self.local is not None:
            self.local.close()

    def reset_after_fork(self) -> None:
        """In a forked child: drop both connections; the child holds no rows yet."""
        self.remote.reset_after_fork()
        if self.local is not None:
            self.local.reset_after_fork()
        self._reset_state()


def _hand_over(ops: list[Operation], local: Storage, remote: Storage) -> int:
    """Claimed local rows to Redis, then out of the local file; how many rows Redis
    evicted to take them. If Redis fails, the rows are given back to the local file."""
    ids = [op.id for op in ops]
    try:
        evicted = remote.add(ops)
    except SpoolUnavailableError:
        local.release(ids)
        raise
    local.ack(ids)
    return evicted


def _drop_local_copies(ops: Sequence[Operation], local: Storage, held: set[str]) -> None:
    """Local reservations now waiting in Redis (the queue gave up on them) leave the
    file, so that replay's ack reaches Redis's row (unless the file is busy)."""
    copies = [op.id for op in ops if op.id in held]
    if copies:
        with contextlib.suppress(SpoolUnavailableError, SpoolBusyError):
            local.ack(copies)
            held.difference_update(copies)


def _hand_over_letters(local: Storage, remote: Storage) -> None:
    """Dead letters the local file took while Redis was down, to Redis's dead letter
    (where the commands and a requeue look), up to ``MOVE_BATCH`` at a time."""
    try:
        letters = list(local.dead_letters(limit=MOVE_BATCH))
    except (SpoolUnavailableError, SpoolBusyError):
        return
    if letters:
        remote.dead_letter(letters)  # raises Redis's errors: the letters stay here
        local.purge_dead_letters([letter.seq for letter in letters])


def _ack(storage: Storage, ids: Sequence[str]) -> None:
    storage.ack(ids)


def _release(storage: Storage, ids: Sequence[str]) -> None:
    storage.release(ids)
