"""What became of every event: the counters, ``Stats``, the dead letters kept in memory,
the warnings waiting for an app thread to say them, and the reports for ``on_error``."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._ownlog import warn
from ._reasons import ErrorReport
from ._reporter import ErrorReporter

if TYPE_CHECKING:
    from ._delivery import DeliveryReport, Failure
    from ._replay import ReplayRound
    from ._wire import Operation

__all__ = ["DeadLetter", "Ledger", "Stats"]

DEAD_LETTERS_KEPT = 1000
"""Dead letters kept in memory (``dead_letters()``), newest last."""


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the bridge's counters.

    Every tagged event this process captured ends in exactly one of ``sent``,
    ``failed``, ``invalid``, ``dropped``, ``spooled`` or ``dead_lettered``, or is still
    waiting (``queue_depth``); so ``enqueued`` equals their sum. While events move the
    snapshot may be off by the events in hand (a batch being settled, a group of spilled
    events being written). What replay does with the spool (whose
    operations may come from other processes, or an earlier run) is counted apart:
    ``replayed``, ``replay_refused`` and ``evicted``.

    Attributes:
        enqueued: Tagged events captured, including those then dropped.
        sent: Operations the Track API accepted.
        retried: Batch sends repeated after a transient failure.
        failed: Operations that could not be delivered and could not be spooled either
            (the spool is off or unusable).
        dropped: Events thrown away: queue full (with ``on_full="drop"``), or still
            queued at shutdown's deadline without a spool.
        invalid: Events that could not become a valid operation (dead-lettered with the
            reason, see ``dead_letters()``).
        spooled: Operations written to the spool to be sent later by replay.
        replayed: Operations from the spool the API accepted.
        dead_lettered: Operations the API refused for good (dead-lettered).
        batches: Batch requests made, replay's included.
        queue_depth: Events waiting in memory, including the batch being sent and the
            spill buffer (events the full queue did not take, being written to the spool).
        last_error: The latest problem, in words; never a secret or a payload.
        replay_refused: Operations from the spool the API refused (dead-lettered).
        evicted: Operations removed unsent from a full spool (``max_spool_bytes``).
        deferred: Events that could not be written to the spool at once because it was
            busy (another process writing, or a log call's short wait: ``CALLER_WAIT``)
            and were kept in memory (at most ``max_queue_size``) to be written by the
            library's threads as soon as they could. Not a final state: each is also counted
            where it ended (``spooled`` once written).
    """

    enqueued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    invalid: int = 0
    spooled: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    queue_depth: int = 0
    last_error: str | None = None
    replay_refused: int = 0
    evicted: int = 0
    deferred: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that will not be delivered, and why.

    Attributes:
        id: The operation's ULID, when one was made.
        name: The event name, when known.
        reason: A short code (``schema_mismatch``, ``unauthorized``...).
        field: The field at fault, when known.
        message: The explanation, in words.
        at: When it was set aside, in Unix seconds.
    """

    id: str | None
    name: str | None
    reason: str
    field: str | None
    message: str
    at: float


_CARRIED = (
    "sent", "retried", "failed", "dropped", "invalid", "spooled", "replayed",
    "dead_lettered", "batches", "replay_refused", "evicted", "deferred",
)  # fmt: skip


class Ledger:
    """Counts what became of every event, keeps the latest dead letters, holds the
    warnings the dispatch thread met until an app thread says them, and tells
    ``on_error`` of every drop, dead letter and failure it counts.

    Written by the dispatch thread and, for what is settled on a log call (a drop, an
    invalid event, a write to the spool), by the app's threads. ``untaken`` events are
    those settled on the app's thread without going through the queue: ``enqueued`` is
    them plus what the queue took.

    Args:
        on_error: The app's callback (``configure(on_error=...)``), told through
            :attr:`reporter` on a thread of its own; None: no one to tell.
    """

    def __init__(self, on_error: Callable[[ErrorReport], object] | None = None) -> None:
        self.reporter = None if on_error is None else ErrorReporter(on_error, warn=self.warn_later)
        """Hands reports to ``on_error``; None without one."""
        self.at_fork_reinit()

    def at_fork_reinit(self) -> None:
        """Start from zero, with a new lock (a parent thread may have held the old one),
        and with a reporter of the child's own."""
        if self.reporter is not None:
            self.reporter.at_fork_reinit()
        # Reentrant: the SIGTERM handler runs on the main thread between two bytecodes,
        # maybe while that thread is in here holding this lock.
        self.lock = threading.RLock()
        self._sent = self._retried = self._failed = self._dropped = self._invalid = 0
        self._spooled = self._replayed = self._dead_lettered = self._replay_refused = 0
        self._evicted = self._deferred = self._batches = 0
        self._untaken = 0  # events settled on the app's thread, never queued
        self._unwritten = 0  # events kept in memory to be spooled (queue_depth counts them)
        self._last_error: str | None = None
        self.rescued: set[str] = set()  # ids spooled by shutdown while being sent
        self.rescued_pending = 0  # of those, not yet settled by the dispatch thread
        self._dead_letters: deque[DeadLetter] = deque(maxlen=DEAD_LETTERS_KEPT)
        self._warnings: list[str] = []

    def started_with(self, on_start: Callable[[], None] | None) -> Callable[[], None] | None:
        """The dispatch thread's ``on_start``: the reporter's thread starts first, then
        ``on_start`` runs. Started now, as no thread can start at interpreter exit (Python
        3.12+), when the reports of what the exit could not deliver come."""
        reporter = self.reporter
        if reporter is None:
            return on_start

        def start() -> None:
            reporter.start()
            if on_start is not None:
                on_start()

        return start

    # -- events settled on the way in ---------------------------------------------------

    def dropped(self, count: int, why: str) -> None:
        """``count`` events never reached the queue, or were still in it too late."""
        with self.lock:
            self._dropped += count
            self._untaken += count
            self._last_error = why
        if self.reporter is not None:
            self.reporter.report(ErrorReport("dropped", count, None, why))

    def rejected(self, letter: DeadLetter, *, untaken: bool) -> None:
        """One event could not become an operation (``untaken``: on the app's thread)."""
        with self.lock:
            self._invalid += 1
            if untaken:
                self._untaken += 1
            self._last_error = f"invalid event {letter.name!r}: {letter.message}"
            self._dead_letters.append(letter)
        self._tell(ErrorReport("dead_lettered", 1, letter.reason, letter.message, letter.name))

    def spooled(self, count: int, *, untaken: bool) -> None:
        """``count`` operations were written to the spool to wait for replay."""
        with self.lock:
            self._spooled += count
            if untaken:
                self._untaken += count

    def deferred(self, count: int, *, lease: bool, untaken: bool) -> None:
        """``count`` operations wait in memory for a busy spool (reservations of queued
        events, with ``lease``, are still in the queue's depth)."""
        with self.lock:
            self._deferred += count
            if not lease:
                self._unwritten += count
                if untaken:
                    self._untaken += count

    def written_late(self, count: int, *, lost: bool) -> None:
        """``count`` deferred operations reached the spool at last, or were ``lost``."""
        if count:
            with self.lock:
                self._unwritten -= count
                if lost:
                    self._dropped += count
                else:
                    self._spooled += count
            if lost:
                why = "events dropped: kept in memory for a busy spool, they could not be written"
                self._tell(ErrorReport("dropped", count, None, why))

    def evicted(self, count: int, max_spool_bytes: int) -> None:
        """A full spool removed ``count`` of its oldest operations unsent."""
        if count:
            why = (
                f"the spool is full (max_spool_bytes={max_spool_bytes}): "
                f"{count} of its oldest operations were evicted unsent"
            )
            with self.lock:
                self._evicted += count
                self._last_error = why
            self._tell(ErrorReport("dropped", count, None, why))

    # -- batches settled by the dispatch thread ------------------------------------------

    def settled(
        self,
        report: DeliveryReport,
        *,
        refused: list[tuple[Operation, Failure]],
        unsent: list[tuple[Operation, Failure]],
        stored: bool,
    ) -> None:
        """A fresh batch is settled: sent, refused for good, and the rest spooled when
        ``stored`` (else failed or dropped). An operation shutdown already spooled
        (rescued) is counted once, where it ended."""
        rescued = self.rescued
        # Not yet rescued: kept from changing meanwhile by the batch's lock (see InFlight).
        failed = [] if stored else [(op, f) for op, f in unsent if op.id not in rescued]
        dropped = 0 if stored else sum(op.id not in rescued for op in report.dropped)
        now = time.time()
        letters = [
            DeadLetter(op.id, op.name, f.reason, f.field, f.message, now)
            for op, f in (*refused, *failed)
        ]
        with self.lock:
            self._batches += report.requests
            self._retried += report.retried
            self._sent += len(report.sent)
            self._dead_lettered += len(refused)
            self._dropped += dropped
            self._failed += len(failed)
            if rescued:
                # Rescued ops that were settled here after all leave ``spooled``.
                settled = [op.id for op in report.sent] + [op.id for op, _ in refused]
                self._spooled -= sum(i in rescued for i in settled)
                everything = [*report.sent, *(op for op, _ in report.failed), *report.dropped]
                self.rescued_pending -= sum(op.id in rescued for op in everything)
            self._dead_letters.extend(letters)
            if report.error:
                self._last_error = report.error
        self._tell(*_by_reason("dead_lettered", refused), *_by_reason("failed", failed))
        if dropped:
            why = "events dropped: the shutdown deadline passed before they were sent"
            self._tell(ErrorReport("dropped", dropped, None, why))

    def rescued_batch(self, ops: list[Operation]) -> None:
        """Shutdown spooled ``ops`` while their request was on the wire: counted spooled
        now, no longer in the queue's depth, and settled only once."""
        with self.lock:
            self.rescued.update(op.id for op in ops)
            self.rescued_pending += len(ops)

    def replayed(self, result: ReplayRound) -> None:
        """One replay round is over (its operations are counted apart from fresh ones)."""
        now = time.time()
        letters = [
            DeadLetter(op.id, op.name, f.reason, f.field, f.message, now)
            for op, f in result.refused
        ]
        report = result.report
        with self.lock:
            self._replayed += len(result.sent)
            self._replay_refused += len(result.refused)
            self._dead_letters.extend(letters)
            if report is not None:
                self._batches += report.requests
                self._retried += report.retried
            if result.error and (result.returned or result.refused):
                self._last_error = f"replaying the spool: {result.error}"
        self._tell(*_by_reason("dead_lettered", result.refused))

    def _tell(self, *reports: ErrorReport) -> None:
        """Have ``on_error`` told of ``reports`` (never under the lock: the reporter has
        its own)."""
        if self.reporter is not None:
            for report in reports:
                self.reporter.report(report)

    # -- problems and warnings -------------------------------------------------------

    def problem(self, message: str, *, warning: str | None = None) -> None:
        """Remember ``message`` as the latest error; ``warning`` is said later, on an app
        thread (see :meth:`say_warnings`)."""
        with self.lock:
            self._last_error = message
            if warning is not None:
                self._warnings.append(warning)

    def warn_problem(self, message: str) -> None:
        """Remember ``message`` as the latest error, and say it on an app thread later."""
        self.problem(message, warning=message)

    def warn_later(self, message: str) -> None:
        """Have ``message`` said on the next app thread that logs or flushes."""
        with self.lock:
            self._warnings.append(message)

    def say_warnings(self) -> None:
        """Say the warnings met meanwhile (on an app thread: the dispatch thread never
        logs, so it never waits for logging's locks)."""
        if not self._warnings:
            return
        with self.lock:
            pending, self._warnings = self._warnings, []
        for message in pending:
            warn(message)

    @property
    def has_warnings(self) -> bool:
        """True when warnings wait to be said."""
        return bool(self._warnings)

    # -- reading -----------------------------------------------------------------------

    @property
    def lost(self) -> int:
        """Fresh operations that neither went nor wait on disk."""
        return self._failed + self._dead_lettered

    @property
    def any_sent(self) -> bool:
        """True once the API accepted one of this process's fresh operations."""
        return self._sent > 0

    @property
    def unwritten(self) -> int:
        """Events kept in memory for a busy spool (not reservations of queued ones)."""
        return self._unwritten

    def stats(self, waiting: Callable[[], tuple[int, int, int]]) -> Stats:
        """A snapshot; ``waiting`` gives the queue's (taken, queued, depth), read under
        the same lock as the counters."""
        with self.lock:
            taken, queued, depth = waiting()
            return Stats(
                enqueued=self._untaken + taken + queued,
                sent=self._sent,
                retried=self._retried,
                failed=self._failed,
                dropped=self._dropped,
                invalid=self._invalid,
                spooled=self._spooled,
                replayed=self._replayed,
                dead_lettered=self._dead_lettered,
                batches=self._batches,
                queue_depth=max(0, depth - self.rescued_pending) + self._unwritten,
                last_error=self._last_error,
                replay_refused=self._replay_refused,
                evicted=self._evicted,
                deferred=self._deferred,
            )

    def carry(self, before: Stats) -> None:
        """Go on counting from another bridge's snapshot: what that one still held in
        memory is counted dropped here."""
        with self.lock:
            for name in _CARRIED:
                setattr(self, f"_{name}", getattr(before, name))
            self._untaken = before.enqueued
            self._dropped += before.queue_depth
            self._last_error = before.last_error
        if before.queue_depth:
            why = "events dropped: still in memory when the bridge was replaced"
            self._tell(ErrorReport("dropped", before.queue_depth, None, why))

    def dead_letters(self) -> list[DeadLetter]:
        """The latest dead letters, newest last (at most ``DEAD_LETTERS_KEPT``)."""
        with self.lock:
            return list(self._dead_letters)

    def add_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        """Keep ``letters`` among the latest (their counting is done elsewhere)."""
        with self.lock:
            self._dead_letters.extend(letters)


def _by_reason(
    kind: Literal["dead_lettered", "failed"], failures: Iterable[tuple[Operation, Failure]]
) -> list[ErrorReport]:
    """``failures`` as reports for ``on_error``: one per reason and message."""
    names: dict[tuple[str, str], list[str | None]] = {}
    for op, failure in failures:
        names.setdefault((failure.reason, failure.message), []).append(op.name)
    return [
        ErrorReport(kind, len(of), reason, message, of[0] if len(of) == 1 else None)
        for (reason, message), of in names.items()
    ]
