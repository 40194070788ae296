"""The bridge's writes to the spool; what a busy spool cannot take now waits in memory
for the next try."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, TypeVar

from ._ledger import DEAD_LETTERS_KEPT, Ledger
from ._storage import CALLER_WAIT, DeadLetterRow, SpoolBusyError, SpoolUnavailableError, Storage
from ._wire import Operation

__all__ = ["SpoolWriter"]

T = TypeVar("T")

_UNWRITTEN_WAIT = 1.0  # seconds the thread waits for a log call writing deferred events

Kept = Literal["written", "deferred"]
"""How ``store`` kept operations: on disk now, or in memory until the spool takes them."""


def take_all(items: deque[T]) -> list[T]:
    """Everything in ``items``, taken out one by one: other threads may append meanwhile
    (each item is then taken by exactly one caller)."""
    taken: list[T] = []
    with contextlib.suppress(IndexError):
        while True:
            taken.append(items.popleft())
    return taken


class SpoolWriter:
    """Writes events and dead letters to the spool for the bridge, and counts them.

    A log call waits at most ``CALLER_WAIT`` for the spool. What a busy spool cannot take
    in that time is kept in memory (counted ``deferred``; at most ``max_queue_size``
    events besides reservations) and written by the next try of the dispatch thread or
    the spill buffer's writer (:meth:`write_deferred`). Nothing here raises: a spool
    problem is counted and warned about.

    Args:
        spool: The spool; None when there is none (every write then returns False).
        ledger: Where outcomes are counted.
        max_queue_size: The most events kept in memory for a busy spool.
        max_spool_bytes: The spool's size limit, named when it evicts.
        closed: True once the bridge shuts down: no later try will come then.
    """

    def __init__(
        self,
        spool: Storage | None,
        ledger: Ledger,
        *,
        max_queue_size: int,
        max_spool_bytes: int,
        closed: Callable[[], bool],
    ) -> None:
        self.spool = spool
        self._ledger = ledger
        self._max_queue_size = max_queue_size
        self._max_spool_bytes = max_spool_bytes
        self._closed = closed
        self.settled_later: Callable[[list[Operation], bool], None] = _nothing
        """Told of deferred operations once written (True) or lost (False): receipts."""
        self.deadline: float | None = None
        """While a shutdown runs, when its writes must be done (monotonic): a write that
        would wait the spool's ordinary time waits until then at most."""
        self._at_fork_reinit()

    def _at_fork_reinit(self) -> None:
        # Spool writes a log call could not make in its short wait: (operation, reserved
        # for the queue); and dead letters likewise.
        self._unwritten: deque[tuple[Operation, bool]] = deque()
        self._letters_unwritten: deque[DeadLetterRow] = deque()
        # Held while those are written or dropped: a reservation taken from the deque
        # by one thread must not reach the disk after its event was sent by another.
        # Reentrant: a shutdown from a signal handler may interrupt this thread's own write.
        self._unwritten_lock = threading.RLock()

    def after_fork_in_child(self) -> None:
        """Forget the parent's deferred writes; the spool's connection is the child's own."""
        if self.spool is not None:
            self.spool.reset_after_fork()  # never close the parent's connection here
        self._at_fork_reinit()

    @property
    def has_deferred(self) -> bool:
        """True when events or dead letters wait in memory for the spool."""
        return bool(self._unwritten or self._letters_unwritten)

    @property
    def deferred_events(self) -> int:
        """Events (reservations included) waiting in memory for the spool."""
        return len(self._unwritten)

    def open(self, wait: float | None = None) -> None:
        """Open the spool now, if there is one and it is not open (never raises).

        Args:
            wait: Most seconds to wait for the file's locks; the spool's usual waits
                when None.
        """
        spool = self.spool
        if spool is not None and not spool.is_open:
            try:
                spool.prepare() if wait is None else spool.prepare(wait)
            except (SpoolUnavailableError, SpoolBusyError) as exc:
                self.problem(exc)

    def close(self) -> None:
        """Close the spool's connection (the file stays)."""
        if self.spool is not None:
            self.spool.close()

    def for_log_calls(
        self,
        ops: list[Operation],
        *,
        lease: bool,
        wait: float | None,
        open_file: bool | None = None,
    ) -> Kept | None:
        """Spool operations for log calls, in one transaction, waiting at most ``wait``
        seconds for the spool (a log call's own thread: ``CALLER_WAIT`` at most).

        A spool that stays busy longer (another process writing, or a signal handler
        run in the middle of this thread's own write) does not lose the events: they are
        kept in memory, counted ``deferred``, and written by the library's threads as
        soon as they can. After shutdown there is no thread left to do that: a log call
        then writes itself, with the spool's ordinary waits (``wait=None``).

        Args:
            ops: The operations (a group of log calls' events).
            lease: Reserve them for this process's queue (see :meth:`store`).
            wait: Most seconds to wait; None after shutdown.
            open_file: Open the spool if need be (see :meth:`store`); a log call never does.

        Returns:
            How they were kept (see :meth:`store`); None when the spool is off or unusable.
        """
        kept = self.store(
            ops, lease=lease, wait=wait, open_file=open_file, defer=True, untaken=True
        )
        if kept and self.has_deferred and not self._closed():
            # Deferred by a signal handler that interrupted this very write: now.
            self.write_deferred(CALLER_WAIT, blocking=False)
        return kept

    def store(
        self,
        ops: list[Operation],
        *,
        lease: bool = False,
        wait: float | None = None,
        open_file: bool | None = None,
        defer: bool = False,
        untaken: bool = False,
    ) -> Kept | None:
        """Write ``ops`` to the spool: ``"written"``, or ``"deferred"`` (kept in memory
        for a busy spool, see ``defer``); None when there is none or it cannot be used.

        Args:
            ops: The operations.
            lease: Reserve them for this process's queue (``durability="disk"``): they
                are still queued, so not counted here.
            wait: Most seconds to wait for a busy spool (see ``Storage.add``).
            open_file: Open the spool if need be (see ``Storage.add``).
            defer: When the spool stays busy, keep them in memory instead, to be
                written by a later try (counted ``deferred``, waiting in
                ``queue_depth``; ``settled_later`` hears when they are written or
                lost). Not once shutdown began: no later try would come.
            untaken: They never went through the queue: counted in ``enqueued`` here.
        """
        spool = self.spool
        if spool is None or not ops:
            return None
        deadline = self.deadline
        if wait is None and deadline is not None:
            # The dispatch thread settling its batch during a shutdown: done by the
            # shutdown's end, which waits for it no longer, however slow the spool (a
            # Redis that hangs) and whichever backend takes the batch in the end.
            wait, open_file = max(0.0, deadline - time.monotonic()), True
        try:
            evicted = spool.add(ops, lease=lease, wait=wait, open_file=open_file)
        except SpoolBusyError as exc:
            if defer and not self._closed() and self._defer(ops, lease, untaken):
                return "deferred"
            self.problem(exc)
            return None
        except SpoolUnavailableError as exc:
            self.problem(exc)
            return None
        self._ledger.evicted(evicted, self._max_spool_bytes)
        if not lease:
            self._ledger.spooled(len(ops), untaken=untaken)
        return "written"

    def _defer(self, ops: list[Operation], lease: bool, untaken: bool) -> bool:
        """Keep ``ops`` in memory until the spool can take them; False when that memory
        (``max_queue_size`` events not queued) is full.

        Reservations are not bounded here: each stands for an event in the queue, and
        goes when its batch is sent (see write_deferred).
        """
        if not lease and self._ledger.unwritten + len(ops) > self._max_queue_size:
            return False
        self._unwritten.extend((op, lease) for op in ops)
        self._ledger.deferred(len(ops), lease=lease, untaken=untaken)
        return True

    def write_deferred(
        self,
        wait: float | None = None,
        *,
        sending: list[Operation] | None = None,
        blocking: bool = True,
    ) -> None:
        """Spool what log calls could not; what still cannot be written stays for later.

        Args:
            wait: Most seconds to wait for the spool (see ``Storage.add``).
            sending: A batch about to be sent: its reservations still unwritten after
                this are dropped (the batch settles those events itself), so that none
                reaches the disk after its event was sent.
            blocking: False on a log call's thread: if another thread is at it, leave
                the work to that one.
        """
        if not self._unwritten_lock.acquire(blocking, -1 if not blocking else _UNWRITTEN_WAIT):
            return
        try:
            taken = take_all(self._unwritten)
            if taken:
                left = self._write_entries(taken, wait)
                if sending and left:
                    ids = {op.id for op in sending}
                    left = [(op, lease) for op, lease in left if not (lease and op.id in ids)]
                self._unwritten.extendleft(reversed(left))
            letters = take_all(self._letters_unwritten)
            if letters:
                self.dead_letters(letters, wait=wait)
        finally:
            self._unwritten_lock.release()

    def _write_entries(
        self, taken: list[tuple[Operation, bool]], wait: float | None
    ) -> list[tuple[Operation, bool]]:
        """Write deferred entries; the ones a busy spool still did not take."""
        spool = self.spool
        assert spool is not None
        # Reservations first: an event the queue then refused is released after them.
        # Opening the file is fine here: a log call only gets here once it wrote to it.
        reserved = [op for op, lease in taken if lease]
        unqueued = [op for op, lease in taken if not lease]
        ledger = self._ledger
        try:
            if reserved:
                evicted = spool.add(reserved, lease=True, wait=wait, open_file=True)
                ledger.evicted(evicted, self._max_spool_bytes)
                reserved = []
            if unqueued:
                evicted = spool.add(unqueued, wait=wait, open_file=True)
                ledger.evicted(evicted, self._max_spool_bytes)
        except SpoolBusyError:
            return [(op, True) for op in reserved] + [(op, False) for op in unqueued]
        except SpoolUnavailableError as exc:
            self.problem(exc)
            ledger.written_late(len(unqueued), lost=True)
            self.settled_later(unqueued, False)
            return []
        ledger.written_late(len(unqueued), lost=False)
        if unqueued:
            self.settled_later(unqueued, True)
        return []

    def drop_deferred(self, wait: float) -> None:
        """At shutdown: what a busy spool still could not take is lost, and counted."""
        lost = [op for op, lease in take_all(self._unwritten) if not lease]
        self._letters_unwritten.clear()  # still in dead_letters(), in memory
        if lost:
            self._ledger.written_late(len(lost), lost=True)
            self._ledger.problem(
                f"{len(lost)} events were dropped: the spool stayed busy through shutdown's "
                f"{wait:g}s"
            )
            self.settled_later(lost, False)

    def dead_letters(
        self,
        rows: list[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> None:
        """Dead letters to disk too; with ``wait``, a spool still busy after it leaves
        them for the dispatch thread's next try (up to ``DEAD_LETTERS_KEPT`` of them)."""
        if self.spool is None or not rows:
            return
        try:
            self.spool.dead_letter(rows, wait=wait, open_file=open_file)
        except SpoolBusyError as exc:
            if wait is None:
                self.problem(exc)  # they stay in dead_letters(), in memory
            elif len(self._letters_unwritten) < DEAD_LETTERS_KEPT:
                self._letters_unwritten.extend(rows)
        except SpoolUnavailableError as exc:
            self.problem(exc)

    def ack(self, ids: list[str]) -> None:
        """Remove sent operations from the spool (reservations, or rescued ones)."""
        if self.spool is None or not ids:
            return
        try:
            self.spool.ack(ids)
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            self.problem(exc)  # replay resends them; the API drops duplicates

    def problem(self, exc: Exception) -> None:
        """Count a spool problem; the first time the spool proves unusable, warn."""
        message = str(exc)
        warning = None
        if isinstance(exc, SpoolUnavailableError) and exc.first:
            warning = (
                f"{message}. Carrying on in memory: events that cannot be delivered now "
                f"are counted as failed or dropped until the spool works again (tried "
                f"again every minute)"
            )
        self._ledger.problem(message, warning=warning)


def _nothing(ops: list[Operation], written: bool) -> None:
    """No one to tell (no direct calls' receipts to settle)."""
