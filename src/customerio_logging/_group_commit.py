"""Group commit: log calls that write to the spool at the same moment share one transaction
(and its commit), instead of queueing for the spool one transaction each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Slot(Generic[T]):
    """One caller's item, and what became of it once a group with it was written."""

    __slots__ = ("item", "kept")

    def __init__(self, item: T) -> None:
        self.item = item
        self.kept: bool | None = None  # None until written


class GroupCommit(Generic[T]):
    """Writes for concurrent callers, grouped: one transaction for every caller waiting.

    A caller adds its item to the waiting ones and takes the turn; whoever holds it (the
    leader) writes every item waiting, its own included, in one transaction, and marks
    each with the outcome before it lets go. Callers that came meanwhile take the turn
    in their own time and find their item written already, or lead the next group. A
    caller alone (no one waiting, the turn free) writes at once, for the cost of a lock.

    A caller waits at most ``wait`` seconds for the turn, as it would for the spool's own
    lock. After that, an item no leader took is written by its caller alone with no
    wait left (a spool still held by another: kept in memory, as for any busy spool),
    and an item a leader is writing is that leader's to settle: the caller waits until
    it has, as long as the leader's write takes (its wait for the spool is bounded by
    ``wait``; its commit, like a caller's own, by the disk).

    Args:
        write: Writes a group of items, settling each (counted, receipts resolved), within
            the given seconds; True when they were kept (on disk, or in memory for a busy
            spool), False when they were lost (counted so). Never raises.
        wait: Most seconds a caller waits for its turn, and a leader for the spool.
    """

    def __init__(self, write: Callable[[list[T], float], bool], *, wait: float) -> None:
        self._write = write
        self._wait = wait
        self.at_fork_reinit()

    def at_fork_reinit(self) -> None:
        """Nothing waiting, and a new lock (in a forked child, whose parent writes its own)."""
        # The items waiting, by key: taken one by one with dict.pop, which is atomic, so
        # that a leader and a caller whose wait ran out never both take the same item.
        self._waiting: dict[int, _Slot[T]] = {}
        # Held by the leader. Reentrant: a signal handler's log call, run on the leader's
        # thread between two bytecodes, leads a group of its own (the spool, held by
        # this very thread, then keeps it in memory) instead of waiting on itself.
        self._turn = threading.RLock()

    def write(self, item: T) -> bool:
        """Write ``item``, alone or with others; True when it was kept (see ``write``)."""
        if not self._waiting and self._turn.acquire(blocking=False):
            # Alone: no one to group with, no one to wait for. One who comes meanwhile
            # waits for the turn, and leads the next group.
            try:
                return self._write([item], self._wait)
            finally:
                self._turn.release()
        end = time.monotonic() + self._wait
        slot = _Slot(item)
        key = id(slot)
        self._waiting[key] = slot
        if self._turn.acquire(timeout=self._wait):
            try:
                if slot.kept is None:  # no earlier leader took it
                    self._lead(max(0.0, end - time.monotonic()))
            finally:
                self._turn.release()
            return slot.kept is not False
        if self._waiting.pop(key, None) is not None:
            # No turn in time, and no leader took it: alone, with no wait left.
            return self._write([item], 0.0)
        # A leader holds it, and settles it before it lets go of the turn: wait for that,
        # however long its commit takes (a stalled disk), as for a write of one's own.
        # Returning before would break both promises: a durable call would return with
        # its event not yet on disk, and a reservation written after its event was sent
        # (and acknowledged) would stay in the spool, to be sent again by replay.
        with self._turn:
            return slot.kept is not False

    def _lead(self, wait: float) -> None:
        """Write every item waiting, in one go, and mark each with the outcome."""
        waiting = self._waiting
        group: list[_Slot[T]] = []
        # Keys first, then each popped: a caller may take its own back meanwhile, and a
        # signal handler on this thread may lead (and take) some in the middle of this.
        for key in list(waiting):
            slot = waiting.pop(key, None)
            if slot is not None:
                group.append(slot)
        if not group:
            return
        kept = self._write([slot.item for slot in group], wait)
        for slot in group:
            slot.kept = kept
