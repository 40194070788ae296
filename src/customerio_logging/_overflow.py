"""Overflow: where an event goes when the queue does not take it as it is: written ahead
(``durability="disk"``), spilled to the spool, or dropped, counted, with why."""

from __future__ import annotations

from ._capture import Snapshot
from ._config import Settings
from ._direct import Direct
from ._dispatch import Dispatcher
from ._group_commit import GroupCommit
from ._ledger import Ledger
from ._receipt import Outcome
from ._sending import Sender
from ._spill import SpillBuffer
from ._storage import CALLER_WAIT, DeadLetterRow
from ._wire import Operation
from ._writer import SpoolWriter

__all__ = ["SPILL_WAIT", "Overflow"]

Item = Snapshot | Direct | Operation

SPILL_WAIT = 0.5
"""Seconds the spill buffer's writer waits for a busy spool before it keeps a group in
memory (``deferred``): longer than a log call may wait, as no app thread waits on it."""
_SPOOLED = Outcome("spooled")


_GROUP_SHARE = 40
"""A group from the spill buffer is spooled in transactions of at most this share of
``max_spool_bytes`` each (the spool's own eviction step)."""


class Overflow:
    """A bridge's ways to keep an event beside its queue.

    An event the full queue does not take goes to the spill buffer, written to the spool
    off the app's thread, a group per transaction; a log call that finds the buffer full
    (or the bridge shut down, or the interpreter exiting) writes its own event, as does
    every call with ``durability="disk"``. Those writes are grouped too: calls from
    several threads at once share one transaction (:class:`GroupCommit`).

    Args:
        settings: The bridge's settings: ``on_full``, and ``max_queue_size`` for the
            words of a drop.
        dispatcher: The bridge's queue and thread.
        sender: Builds an event here and settles its receipt.
        writer: Writes to the spool within a log call's wait.
        ledger: Counts what is dropped.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        dispatcher: Dispatcher[Item],
        sender: Sender,
        writer: SpoolWriter,
        ledger: Ledger,
    ) -> None:
        self._dispatcher = dispatcher
        self._sender = sender
        self._writer = writer
        self._ledger = ledger
        self._max_queue_size = settings.max_queue_size
        self._spill_when_full = settings.on_full == "spill"
        self._group_bytes = max(1, settings.max_spool_bytes // _GROUP_SHARE)
        self._buffer: SpillBuffer[Item] = SpillBuffer(
            self._write_spilled, idle=self._write_deferred, wait=SPILL_WAIT
        )
        self._reserved: GroupCommit[Operation] = GroupCommit(self._reserve, wait=CALLER_WAIT)
        self._kept: GroupCommit[Operation] = GroupCommit(self._keep, wait=CALLER_WAIT)

    def at_fork_reinit(self) -> None:
        """In a forked child: the parent writes what it had in hand; the child starts
        empty, with a writer thread of its own on its first spill."""
        self._buffer.at_fork_reinit()
        self._reserved.at_fork_reinit()
        self._kept.at_fork_reinit()

    # -- the app's side ---------------------------------------------------------------

    def refused(self, capture: Item) -> bool:
        """The queue did not take ``capture`` (full, or shut down): spilled or dropped.

        Returns:
            False when it was dropped (counted).
        """
        if self._spill_when_full or (self._writer.spool is not None and self._dispatcher.closed):
            # Queue full, or logged after shutdown (an exit hook that ran after ours).
            return self.spill(capture)
        self.drop(capture)
        return False

    def write_ahead(self, capture: Item) -> bool:
        """``durability="disk"``: on disk before the log call returns, reserved for this
        process's queue; if the process dies, replay (here or elsewhere) sends it."""
        op = self._sender.build_here(capture)
        if op is None:
            return False
        if not self._dispatcher.full:
            # Reserved first, queued then. Should the queue fill in between (another
            # thread), the event goes to the spool released below; a reservation still
            # waiting in memory then never takes the row back (see Storage.add).
            self._reserved.write(op)
            if self._dispatcher.submit(op):
                return True
        return self._spill(op)

    def spill(self, capture: Item) -> bool:
        """Spool an event the queue did not take (full, or shut down): into the spill
        buffer, or, when that cannot take it, on this thread now. It waits on disk for
        the next replay."""
        if not self._dispatcher.closed and self._buffer.put(capture):
            return True
        op = self._sender.build_here(capture)
        return op is not None and self._spill(op)

    def _spill(self, op: Operation) -> bool:
        if self._dispatcher.closed:
            # No thread will write it later: with the spool's ordinary waits, alone.
            return self._keep([op], None)
        return self._kept.write(op)

    def drop(self, item: Item, more: str = "") -> None:
        """Count ``item`` dropped, with why, and settle its receipt."""
        closed = self._dispatcher.closed
        why = (
            "the bridge is shut down"
            if closed
            else (f"the queue is full (max_queue_size={self._max_queue_size})")
        )
        why = f"event dropped: {why}" + (f" {more}" if more else "")
        self._ledger.dropped(1, why)
        reason = "shutdown" if closed else "queue"
        self._sender.resolve_all([item], Outcome("dropped", reason, None, why))

    # -- writing ----------------------------------------------------------------------

    def _reserve(self, ops: list[Operation], wait: float) -> bool:
        """Reserve log calls' operations on disk for this process's queue."""
        return self._writer.for_log_calls(ops, lease=True, wait=wait) is not None

    def _keep(
        self, ops: list[Operation], wait: float | None, open_file: bool | None = None
    ) -> bool:
        """Spool log calls' operations (not queued) and settle them; False when the spool
        is unusable (they are dropped, counted, each with why)."""
        kept = self._writer.for_log_calls(ops, lease=False, wait=wait, open_file=open_file)
        if kept == "written":  # a deferred one is settled when written, or lost
            self._sender.resolve_all(ops, _SPOOLED)
        elif kept is None:
            for op in ops:
                self.drop(op, "and the spool is unusable")
        return kept is not None

    def _write_spilled(self, items: list[Item], wait: float | None) -> None:
        """A group from the spill buffer: built (an invalid one counted and dead-lettered
        as on the app's thread) and spooled in one transaction."""
        letters: list[DeadLetterRow] = []
        build = self._sender.build_here
        ops = [op for item in items if (op := build(item, letters)) is not None]
        if letters:
            self._writer.dead_letters(letters, wait=wait, open_file=True)
        # In transactions of at most a share of the bound each: a transaction's pages all
        # sit in the spool's write-ahead log until it is checkpointed, and a small spool's
        # log must not outgrow it (max_spool_bytes bounds the file and its log together).
        start, size = 0, 0
        for end, op in enumerate(ops):
            size += len(op.body)
            if size > self._group_bytes and end > start:
                self._keep(ops[start:end], wait, open_file=True)
                start, size = end, len(op.body)
        if start < len(ops):
            self._keep(ops[start:], wait, open_file=True)

    def _write_deferred(self) -> None:
        """The spill writer's idle round: what a busy spool left in memory."""
        if self._writer.has_deferred:
            self._writer.write_deferred(CALLER_WAIT, blocking=False)

    # -- flush, shutdown, counters ------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Have the spill buffer written; True when that finished within ``timeout``."""
        return self._buffer.flush(timeout)

    def close(self, wait: float) -> None:
        """At shutdown: write what waits in the spill buffer within ``wait`` seconds, and
        have its thread end (a later spill writes on its caller's thread)."""
        self._buffer.stop(wait)

    def join(self, timeout: float) -> bool:
        """After :meth:`close`: wait at most ``timeout`` seconds for the spill writer to
        finish the group it holds and end; True when it has (or never ran)."""
        return self._buffer.join(timeout)

    @property
    def spilled(self) -> int:
        """Events in the spill buffer, not yet written."""
        return self._buffer.depth

    def waiting(self) -> tuple[int, int, int]:
        """For the counters: the queue's (taken, queued, depth), with the events in the
        spill buffer counted as queued."""
        dispatcher, spilled = self._dispatcher, self._buffer.depth
        return dispatcher.taken, dispatcher.queued + spilled, dispatcher.depth + spilled
