"""Overflow: where an event goes when the queue does not take it as it is: written ahead
(``durability="disk"``), spilled to the spool, or dropped, counted, with why."""

from __future__ import annotations

from ._capture import Snapshot
from ._direct import Direct
from ._dispatch import Dispatcher
from ._ledger import Ledger
from ._receipt import Outcome
from ._sending import Sender
from ._wire import Operation
from ._writer import SpoolWriter

__all__ = ["Overflow"]


class Overflow:
    """A bridge's ways to keep an event beside its queue, on the app's thread.

    Args:
        dispatcher: The bridge's queue and thread.
        sender: Builds an event here and settles its receipt.
        writer: Writes to the spool within a log call's wait.
        ledger: Counts what is dropped.
        max_queue_size: The queue's bound, for the words of a drop.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher[Snapshot | Direct | Operation],
        sender: Sender,
        writer: SpoolWriter,
        ledger: Ledger,
        max_queue_size: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._sender = sender
        self._writer = writer
        self._ledger = ledger
        self._max_queue_size = max_queue_size

    def write_ahead(self, capture: Snapshot | Direct | Operation) -> bool:
        """``durability="disk"``: on disk before the log call returns, reserved for this
        process's queue; if the process dies, replay (here or elsewhere) sends it."""
        op = self._sender.build_here(capture)
        if op is None:
            return False
        if not self._dispatcher.full:
            # Reserved first, queued then. Should the queue fill in between (another
            # thread), the event goes to the spool released below; a reservation still
            # waiting in memory then never takes the row back (see Storage.add).
            self._writer.for_log_call(op, lease=True)
            if self._dispatcher.submit(op):
                return True
        return self._spill(op)

    def spill(self, capture: Snapshot | Direct | Operation) -> bool:
        """Spool an event the queue did not take (full, or shut down): it waits on disk
        for the next replay."""
        op = self._sender.build_here(capture)
        return op is not None and self._spill(op)

    def _spill(self, op: Operation) -> bool:
        kept = self._writer.for_log_call(op, lease=False)
        if kept:
            if kept == "written":  # a deferred one is settled when written, or lost
                self._sender.resolve(op.id, Outcome("spooled"))
            return True
        self.drop(op, "and the spool is unusable")
        return False

    def drop(self, item: Snapshot | Direct | Operation, more: str = "") -> None:
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
