"""The dispatch thread's work for a bridge: build each queued event, send each batch,
settle what became of it, and replay the spool when idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _replay
from ._capture import Snapshot
from ._config import Settings
from ._delivery import Delivery, DeliveryReport, Failure, SwitchedOff, transport_for
from ._direct import Direct
from ._fleet_rate import fleet_rate
from ._ledger import DeadLetter, Ledger
from ._lifecycle import sigterm_hint
from ._limits import MAX_NAME_BYTES
from ._operation import build_operation
from ._pacing import Pacer
from ._reasons import INTERNAL_ERROR
from ._receipt import Outcome, Receipt
from ._replay import Replayer, dead_letter_rows
from ._retry import RetryPolicy
from ._schema import Taxonomy
from ._storage import CALLER_WAIT, DeadLetterRow
from ._wire import Operation, Transport, shorten
from ._writer import Kept, SpoolWriter
from .exceptions import InvalidEventError

__all__ = ["InFlight", "Sender"]

_UNWRITTEN_RETRY = 1.0  # seconds before the thread tries again to write deferred events
_MESSAGE_CHARS = 300  # an explanation never needs more; a longer one quotes data
_SENT = Outcome("sent")
_SPOOLED = Outcome("spooled")


class InFlight:
    """The batch the dispatch thread is sending or settling, shared with shutdown's rescue.

    Settling a batch and the rescue of a batch still in flight take turns on ``lock``.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ops: list[Operation] | None = None


class Sender:
    """Builds, sends and settles a bridge's events (on the dispatch thread, but for
    :meth:`build_here`, which a log call uses when an event cannot be queued).

    Args:
        settings: The bridge's settings.
        taxonomy: Validates the events.
        writer: Spools what cannot be sent now.
        ledger: Counts what became of each event.
        client: The official client, for the default transport.
        schedule_idle: Asks the dispatch thread for idle work (replay) after a delay.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        taxonomy: Taxonomy,
        writer: SpoolWriter,
        ledger: Ledger,
        client: Callable[[], Any],
        schedule_idle: Callable[[float], None],
    ) -> None:
        self._settings = settings
        self._taxonomy = taxonomy
        self._writer = writer
        self._ledger = ledger
        self._client = client
        self._schedule_idle = schedule_idle
        self._durable = settings.durability == "disk"
        self.connect()

    def connect(self) -> None:
        """Build the way out: transport, rate limit, delivery and replay, and forget the
        batch in flight (when built, and in a forked child: the parent's stay its own)."""
        settings = self._settings
        if settings.transport is not None:
            transport: Transport = settings.transport
        elif settings.enabled:
            transport = transport_for(settings, client=self._client())
        else:
            transport = SwitchedOff()  # never used: a switched-off bridge queues nothing
        problem = self._ledger.warn_problem
        # With redis_url, the rate limit and the 429 pause are the whole fleet's.
        fleet = fleet_rate(settings, on_problem=problem, on_back=self._ledger.warn_later)
        pacer = Pacer(settings.max_requests_per_second, shared=fleet)
        policy = RetryPolicy.from_settings(settings, pacer=pacer)
        self.delivery = Delivery(transport, pacer=pacer, policy=policy, on_problem=problem)
        spool = self._writer.spool
        self.replayer: Replayer | None = None
        if spool is not None:
            # Replay makes one attempt per round and backs off between rounds: a retry
            # loop there would hold fresh events behind old ones.
            self.replayer = Replayer(
                spool,
                Delivery(transport, pacer=pacer, on_problem=problem),
                batch_size=settings.batch_size,
                on_problem=self._writer.problem,
            )
        self.in_flight = InFlight()
        # Direct calls' receipts, by operation id, from when their operation is built
        # until its batch is settled (empty unless the app makes direct calls).
        self._receipts: dict[str, Receipt] = {}
        self.fresh_failing = False
        """True while this process's own sends fail (replay waits meanwhile)."""
        # Whether to look, once per batch (off the log calls' path), for a server that
        # will end the process at SIGTERM without our flush (see sigterm_hint).
        self._watch_sigterm = settings.install_signal_handlers

    # -- building --------------------------------------------------------------------

    def process(self, item: Snapshot | Direct | Operation) -> Operation | None:
        """A queued item as an operation; None when invalid (counted, dead-lettered)."""
        if type(item) is not Snapshot:
            return self._build(item, here=False)
        try:  # a log call's event: once per event, so the short way
            return build_operation(item, self._taxonomy)
        except Exception as exc:  # noqa: BLE001 - counted and dead-lettered, never raised
            self._refused(item, None, exc, here=False)
            return None

    def build_here(
        self, item: Snapshot | Direct | Operation, letters: list[DeadLetterRow] | None = None
    ) -> Operation | None:
        """Build on the caller's thread; an invalid event is counted (never queued).

        Its dead letter goes into ``letters`` when given (the caller writes them at
        once), else to the spool within a log call's wait.
        """
        return self._build(item, here=True, letters=letters)

    def build_or_raise(self, item: Snapshot | Direct) -> Operation:
        """Build a call's operation now (``strict=True``, or a test fixture's strict mode).

        Raises:
            InvalidEventError: It cannot become a valid operation (nothing is counted:
                the call raised instead).
        """
        if not isinstance(item, Direct):
            return build_operation(item, self._taxonomy)
        op = build_operation(item.snapshot, self._taxonomy, item.receipt.id, item.target)
        self._receipts[op.id] = item.receipt
        return op

    def _build(
        self,
        item: Snapshot | Direct | Operation,
        *,
        here: bool,
        letters: list[DeadLetterRow] | None = None,
    ) -> Operation | None:
        if isinstance(item, Operation):
            return item  # built on the app's thread already (durability="disk")
        receipt = target = None
        if isinstance(item, Direct):
            snapshot, receipt, target = item
        else:
            snapshot = item
        try:
            op_id = None if receipt is None else receipt.id
            op = build_operation(snapshot, self._taxonomy, op_id, target)
        except Exception as exc:  # noqa: BLE001 - counted and dead-lettered, never raised
            self._refused(snapshot, receipt, exc, here=here, letters=letters)
            return None
        if receipt is not None:
            self._receipts[op.id] = receipt
        return op

    def _refused(
        self,
        snapshot: Snapshot,
        receipt: Receipt | None,
        exc: Exception,
        *,
        here: bool,
        letters: list[DeadLetterRow] | None = None,
    ) -> None:
        """Count and dead-letter an event that could not be built, and settle its receipt."""
        if isinstance(exc, InvalidEventError):
            reason, field = exc.reason, exc.field
            text = self._reject(snapshot, reason, field, str(exc), here=here, letters=letters)
        else:  # a user validator or a bug: counted, never raised
            reason, field = INTERNAL_ERROR, None
            text = f"{type(exc).__name__} while building"
            self._reject(snapshot, reason, None, text, here=here, letters=letters)
        if receipt is not None:
            receipt.resolve(Outcome("invalid", reason, field, text))

    def resolve(self, op_id: str, outcome: Outcome) -> None:
        """Settle a direct call's receipt, if ``op_id`` has one still unsettled."""
        receipt = self._receipts.pop(op_id, None)
        if receipt is not None:
            receipt.resolve(outcome)

    def resolve_all(self, items: Sequence[Snapshot | Direct | Operation], outcome: Outcome) -> None:
        """Settle the receipts of ``items`` (queued items, or operations built from them)."""
        if not self._receipts and not any(isinstance(item, Direct) for item in items):
            return
        for item in items:
            if isinstance(item, Direct):
                item.receipt.resolve(outcome)
            elif isinstance(item, Operation):
                self.resolve(item.id, outcome)

    def _reject(
        self,
        capture: Snapshot,
        reason: str,
        field: str | None,
        message: str,
        *,
        here: bool = False,
        letters: list[DeadLetterRow] | None = None,
    ) -> str:
        """Count and dead-letter an invalid event; the explanation, as kept."""
        name = capture.tag if isinstance(capture.tag, str) else capture.message
        # A "name" may be a whole log message: keep at most an event name's worth of it.
        short_name = shorten(name.strip(), MAX_NAME_BYTES) if isinstance(name, str) else None
        text, at = shorten(message, _MESSAGE_CHARS), time.time()
        self._ledger.rejected(DeadLetter(None, short_name, reason, field, text, at), untaken=here)
        row = DeadLetterRow(0, None, None, short_name, reason, field, text, at, None)
        if letters is not None:
            letters.append(row)
        else:
            # A short wait on either thread: a busy spool leaves the row for later, and
            # the event (already counted invalid) is not held in hand meanwhile. Only
            # the dispatch thread may open the file for it.
            self._writer.dead_letters([row], wait=CALLER_WAIT, open_file=not here)
        return text

    # -- sending ---------------------------------------------------------------------

    def send(self, ops: list[Operation]) -> None:
        """Deliver one batch and settle it."""
        writer = self._writer
        if writer.has_deferred:
            # Reservations deferred by log calls go to disk before their events are sent;
            # a short wait only, fresh events must not stall behind a busy spool.
            writer.write_deferred(CALLER_WAIT, sending=ops)
            if writer.has_deferred:
                self._schedule_idle(_UNWRITTEN_RETRY)
        if self._watch_sigterm:
            self._check_sigterm()
        in_flight = self.in_flight
        in_flight.ops = ops
        try:
            report = self.delivery.deliver(ops)
        except Exception as exc:  # noqa: BLE001 - a transport bug must not lose the count
            error = f"{type(exc).__name__} in the transport"
            failure = Failure(INTERNAL_ERROR, error)
            report = DeliveryReport(failed=[(op, failure) for op in ops], error=error)
        with in_flight.lock:
            try:
                settled = self._settle(report)
            finally:
                in_flight.ops = None
        if self._receipts:
            # Outside the lock: an app's receipt callback runs here (rule 8).
            self._resolve_batch(report, *settled)

    def _check_sigterm(self) -> None:
        """Queue the warning, once per process, if SIGTERM will skip our flush; the next
        log call or flush on an app thread says it (this thread never logs)."""
        hint = sigterm_hint()
        if hint is not None:
            self._watch_sigterm = False
            self._ledger.warn_later(hint)

    def _settle(
        self, report: DeliveryReport
    ) -> tuple[list[tuple[Operation, Failure]], list[tuple[Operation, Failure]], Kept | None]:
        """Settle a fresh batch: sent, dead-lettered (refused for good), or spooled; what
        its receipts need (refused, unsent, how the rest was kept)."""
        refused = [(op, f) for op, f in report.failed if f.permanent]
        unsent = [(op, f) for op, f in report.failed if not f.permanent]
        waiting = [op for op, _ in unsent] + report.dropped
        rescued = self._ledger.rescued
        if rescued:
            # Shutdown already spooled (and counted) these: settle each only once.
            waiting = [op for op in waiting if op.id not in rescued]
        stored = self._writer.store(waiting, defer=True)
        if self._durable or rescued:
            self._writer.ack([op.id for op in report.sent])
        self._writer.dead_letters(dead_letter_rows(refused))
        self._ledger.settled(report, refused=refused, unsent=unsent, stored=stored is not None)
        if waiting or unsent:
            self.fresh_failing = True
            self._schedule_idle(_replay.MIN_BACKOFF)
        elif report.sent and self.fresh_failing and self.replayer is not None:
            # The API answers again: replay what waited, now.
            self.fresh_failing = False
            self.replayer.retry_soon()
            self._schedule_idle(0.0)
        return refused, unsent, stored

    def _resolve_batch(
        self,
        report: DeliveryReport,
        refused: list[tuple[Operation, Failure]],
        unsent: list[tuple[Operation, Failure]],
        stored: Kept | None,
    ) -> None:
        """Settle the receipts of a batch's direct calls, as the ledger counted them. What
        a busy spool deferred is settled when it is written or lost (``deferred_settled``)."""
        resolve = self.resolve
        for op in report.sent:
            resolve(op.id, _SENT)
        for op, f in refused:
            resolve(op.id, Outcome("dead_lettered", f.reason, f.field, f.message))
        if stored == "deferred":
            return
        for op, f in unsent:
            resolve(op.id, _SPOOLED if stored else Outcome("failed", f.reason, f.field, f.message))
        why = report.error or "the shutdown deadline passed before it was sent"
        for op in report.dropped:
            resolve(op.id, _SPOOLED if stored else Outcome("dropped", "shutdown", None, why))

    def deferred_settled(self, ops: list[Operation], written: bool) -> None:
        """Operations a busy spool had deferred are on disk now, or lost: their receipts."""
        if not self._receipts:
            return
        lost = Outcome("dropped", "spool_busy", None, "the spool stayed busy until shutdown")
        for op in ops:
            self.resolve(op.id, _SPOOLED if written else lost)

    def replay_round(self) -> float:
        """The dispatch thread's idle work: one replay round; seconds until the next."""
        replayer = self.replayer
        assert replayer is not None
        writer = self._writer
        if writer.has_deferred:
            writer.write_deferred()
        result = replayer.round()
        self._ledger.replayed(result)
        delay = replayer.next_delay(result)
        return min(delay, _UNWRITTEN_RETRY) if writer.has_deferred else delay
