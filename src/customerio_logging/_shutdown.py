"""Ending a bridge within one deadline: stop sending in time, spool what is left, rescue
the batch still on the wire, and say what is pending and what could not be delivered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._delivery import SessionTransport
from ._ownlog import inform, warn
from ._receipt import Outcome
from ._wire import Operation

if TYPE_CHECKING:
    from ._capture import Snapshot
    from ._direct import Direct
    from ._dispatch import Dispatcher
    from ._ledger import Ledger, Stats
    from ._overflow import Overflow
    from ._sending import Sender
    from ._storage import DeadLetterRow
    from ._writer import SpoolWriter

__all__ = ["EXIT_MARGIN", "Shutdown"]

EXIT_MARGIN = 1.0
"""Seconds an exit may run past ``shutdown_timeout`` while the dispatch thread settles the
batch it holds at the deadline (to the spool): the margin the README documents."""
_EXIT_RESERVE = 0.2  # seconds kept back from sending at exit to write what is left to disk
_EXIT_COST = 25e-6  # seconds to build and write one event left queued at exit (generous)
_LEFTOVER_CHUNK = 2000  # events written to the spool per transaction at exit
_REPORT_GRACE = 0.5  # seconds on_error gets at least, within EXIT_MARGIN, for the last reports
_SPOOLED = Outcome("spooled")


def time_left(end: float) -> float:
    """Seconds until ``end`` (monotonic), never negative."""
    return max(0.0, end - time.monotonic())


class Shutdown:
    """Flushes, stops and closes a bridge's parts within one deadline.

    Args:
        dispatcher: The queue and its thread.
        sender: Sends the batches (its pacer and transport learn the deadline), builds
            what is left, and replays the spool.
        writer: Writes what is left to the spool.
        ledger: Counts what could not be kept.
        overflow: Holds the spill buffer, written to the spool at the end too.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher[Snapshot | Direct | Operation],
        sender: Sender,
        writer: SpoolWriter,
        ledger: Ledger,
        overflow: Overflow,
    ) -> None:
        self._dispatcher = dispatcher
        self._sender = sender
        self._writer = writer
        self._ledger = ledger
        self._overflow = overflow
        self.deadline: float | None = None
        """When shutdown must be done (monotonic); None until it began."""
        self._ended: float | None = None  # when run() was done but for on_error
        self._no_grace = False  # a shutdown with no time at all: no grace for on_error

    def run(self, wait: float) -> None:
        """Flush, stop the thread and close, within ``wait`` seconds.

        With a spool, sending stops a little before ``wait`` runs out, so that what is
        still queued can be written to disk in the time left; a batch the thread is
        settling at that moment may take ``EXIT_MARGIN`` seconds more.

        Says on the ``customerio_logging`` logger how many events are pending, if any,
        and how many could not be delivered in the end; then waits for ``on_error`` to
        be told of what was lost, until the deadline (see ``_reports_until``).
        """
        # Every wait in delivery (rate limit, retry backoff, a 429 pause, refused
        # credentials) now ends by this deadline.
        self.deadline = deadline = time.monotonic() + wait
        self._no_grace = wait == 0
        before = self._stats()
        if before.queue_depth and wait > 0:
            # At INFO: most exits deliver what is pending in milliseconds, and a warning
            # at every one would teach apps to silence the line that matters (below).
            inform(f"{_events(before.queue_depth)} pending, waiting up to {wait:g} s")
        # The dispatch thread's own writes (the batch it settles) end by the exit's end.
        self._writer.deadline = deadline + EXIT_MARGIN
        try:
            self._end(wait, deadline)
        finally:
            self._writer.deadline = None  # a log call after shutdown waits as before
        self._ledger.say_warnings()
        undelivered = _undelivered(before, self._stats(), self._overflow.spilled)
        if undelivered:
            warn(undelivered)
        self._ended = time.monotonic()
        reporter = self._ledger.reporter
        if reporter is not None:
            reporter.wait(self._reports_until())
            reporter.close()
            self._ledger.say_warnings()  # a callback that raised on the exit's own reports

    def _end(self, wait: float, deadline: float) -> None:
        """Stop sending by ``deadline``, spool what is left, and close."""
        delivery = self._sender.delivery
        pacer, transport = delivery.pacer, delivery.transport
        pacer.set_deadline(deadline)
        if isinstance(transport, SessionTransport):
            # And so does a request in flight: no batch outlives the deadline in a socket.
            transport.set_deadline(deadline)
        reserve = self._reserve(wait)
        left = self._dispatcher.stop(wait, reserve=reserve)
        if not left and reserve is not None:
            self._replay_at_exit(deadline - reserve(0))
        # Sending is over: a retry wait, a 429 pause or a held batch ends now, and the
        # thread settles its batch (to the spool) while this one writes the rest.
        pacer.set_deadline(time.monotonic())
        # Writing to disk ends by then too, however busy the spool is.
        end = deadline + EXIT_MARGIN
        # The spill buffer first: its events were logged before what is still queued.
        overflow = self._overflow
        overflow.close(time_left(end))
        writer = self._writer
        if writer.has_deferred:
            writer.write_deferred(time_left(end))
        if left:
            self._settle_leftovers(left, wait, end)
        thread = self._dispatcher.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(time_left(deadline))
        if thread is None or not thread.is_alive():
            transport.close()
        else:
            # A thread still at work would race the close; it is a daemon and ends
            # with the interpreter, so what it holds must be on disk first.
            self._rescue_in_flight(thread, end)
        # The group the spill writer holds is written within its own wait, by ``end``.
        if overflow.join(time_left(end)) and (thread is None or not thread.is_alive()):
            writer.close()
        writer.drop_deferred(wait)

    def _reserve(self, wait: float) -> Callable[[int], float] | None:
        """Seconds to keep back from sending to spool what is left; None without need."""
        writer, overflow = self._writer, self._overflow
        if writer.spool is None or not (
            self._dispatcher.depth or writer.deferred_events or overflow.spilled
        ):
            return None
        # Opened now, not first at the deadline, when something may need it.
        writer.open(min(wait, 1.0))

        def reserve(queued: int) -> float:
            held = queued + writer.deferred_events + overflow.spilled
            return min(wait / 2, _EXIT_RESERVE + held * _EXIT_COST)

        return reserve

    def wait(self) -> None:
        """Wait, at most until its deadline, for a shutdown under way to finish sending,
        and for ``on_error`` to be told of what it lost."""
        deadline, thread = self.deadline, self._dispatcher.thread
        if deadline is None:
            return
        if thread is not None and thread is not threading.current_thread():
            # join(), not an Event: safe even if this thread was interrupted (SIGTERM)
            # inside the very code that would set one.
            thread.join(time_left(deadline))
        reporter = self._ledger.reporter
        if reporter is not None:
            reporter.wait(self._reports_until())

    def _reports_until(self) -> float:
        """When to stop waiting for ``on_error``: the deadline, or ``_REPORT_GRACE``
        seconds after the shutdown's own work if that is later (so that what it lost at
        the deadline is told too), never more than ``EXIT_MARGIN`` past the deadline."""
        deadline = self.deadline
        assert deadline is not None
        if self._no_grace:
            return deadline  # flush_or_spool: its bound is the app's (a Lambda's timeout)
        ended = time.monotonic() if self._ended is None else self._ended
        return min(deadline + EXIT_MARGIN, max(deadline, ended + _REPORT_GRACE))

    def _stats(self) -> Stats:
        return self._ledger.stats(self._overflow.waiting)

    def _replay_at_exit(self, until: float) -> None:
        """Everything fresh was delivered with time to spare: replay the spool until
        ``until``, so that a process too short-lived for the background replay (a cron
        job) still sends what earlier ones left. Only once this process's own sends went
        through: an API that does not answer costs the exit nothing."""
        thread, sender = self._dispatcher.thread, self._sender
        if (
            sender.replayer is None
            or (thread is not None and thread.is_alive())
            or sender.fresh_failing
            or not self._ledger.any_sent
        ):
            return
        while time.monotonic() < until and sender.replay_round() == 0.0:
            pass

    def _settle_leftovers(
        self, left: list[Snapshot | Direct | Operation], wait: float, end: float
    ) -> None:
        """What was still queued when sending stopped: spooled by ``end``, else dropped.

        Built and written a chunk at a time, so that a kill soon after (a container's
        grace period ending) finds most of them on disk already.
        """
        writer = self._writer
        for start in range(0, len(left), _LEFTOVER_CHUNK):
            chunk = left[start : start + _LEFTOVER_CHUNK]
            if writer.spool is None or time_left(end) <= 0:
                # Nowhere (or no time) to keep them: no point building them first.
                self._lost_at_exit(left[start:], wait)
                return
            ops: list[Operation] = []
            letters: list[DeadLetterRow] = []
            for item in chunk:
                op = self._sender.build_here(item, letters)
                if op is not None:
                    ops.append(op)
            writer.dead_letters(letters, wait=time_left(end))
            if ops and writer.store(ops, wait=time_left(end), open_file=True, untaken=True):
                self._sender.resolve_all(ops, _SPOOLED)
            elif ops:
                self._lost_at_exit(ops, wait)

    def _lost_at_exit(self, items: Sequence[Snapshot | Direct | Operation], wait: float) -> None:
        why = f"{len(items)} events were still queued when shutdown's {wait:g}s ran out"
        self._ledger.dropped(len(items), why)
        self._sender.resolve_all(items, Outcome("dropped", "shutdown", None, why))

    def _rescue_in_flight(self, thread: threading.Thread, end: float) -> None:
        """The thread is still at work past the deadline: make sure its batch is on disk.

        A batch whose request is on the wire (it may hang) is written here; should the
        send still succeed before the process ends, the rows are removed again, and if
        the process ends first, replay sends them later and the API drops any duplicate
        by id. A batch being built or settled (no network involved: the deadline ended
        every wait) is waited for instead, until ``end`` at most: the thread may need a
        lock this thread holds (a signal handler), so never longer. So is one on the
        wire when there is no spool to keep it, if the deadline cut its request (the
        default transport's): the thread settles it a moment later, and what became of
        it is counted, said and told to ``on_error`` before the process ends.
        """
        in_flight = self._sender.in_flight
        cut = isinstance(self._sender.delivery.transport, SessionTransport)
        while thread.is_alive():
            if not in_flight.lock.acquire(timeout=time_left(end)):
                return
            try:
                ops = in_flight.ops
                if ops and self._sender.delivery.in_request:
                    if self._writer.spool is not None:
                        self._spool_in_flight(ops, time_left(end))
                        return
                    if not cut:
                        return  # an app's transport may hang on: nothing to keep it in
            finally:
                in_flight.lock.release()
            left = time_left(end)
            if left <= 0:
                return
            thread.join(min(left, 0.05))

    def _spool_in_flight(self, ops: list[Operation], wait: float) -> None:
        fresh = [op for op in ops if op.id not in self._ledger.rescued]
        if self._writer.store(fresh, wait=wait, open_file=True):
            self._ledger.rescued_batch(fresh)
            self._sender.resolve_all(fresh, _SPOOLED)


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def _undelivered(before: Stats, after: Stats, spilling: int) -> str | None:
    """What the shutdown between ``before`` and ``after`` could not deliver, in words; None
    when nothing. ``spilling``: events the spill buffer's writer still holds (a spool
    stalled past the deadline)."""
    parts = [
        (after.spooled - before.spooled, "spooled (sent later, by replay)"),
        (after.dropped - before.dropped, "dropped"),
        (after.failed - before.failed, "failed (the spool is off or unusable)"),
        (
            after.dead_lettered + after.invalid - before.dead_lettered - before.invalid,
            "refused (see dead_letters())",
        ),
        # Without a spool to rescue them, a batch whose request hangs past the deadline:
        # lost if the process ends.
        (after.queue_depth - spilling, "in a request left unanswered"),
        (spilling, "still being written to the spool"),
    ]
    said = [f"{count} {what}" for count, what in parts if count > 0]
    if not said:
        return None
    total = sum(count for count, _ in parts if count > 0)
    return f"{_events(total)} not delivered: {', '.join(said)}"
