"""Bridge: owns the client, the queue and thread, and the counters; configure/get_bridge."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _replay
from ._capture import ACTION, Capture, build_operation
from ._config import Settings
from ._delivery import (
    Delivery,
    DeliveryReport,
    Failure,
    SessionTransport,
    official_client,
)
from ._dispatch import THREAD_NAME, Dispatcher
from ._lifecycle import (
    cover_multiprocessing_exit,
    install_exit_hook,
    install_fork_hook,
    install_sigterm_handler,
    sigterm_hint,
)
from ._limits import MAX_NAME_BYTES
from ._pacing import Pacer
from ._replay import Replayer, ReplayRound, dead_letter_rows
from ._retry import RetryPolicy
from ._schema import Taxonomy
from ._storage import (
    CALLER_WAIT,
    DeadLetterRow,
    SpoolBusyError,
    SpoolUnavailableError,
    Storage,
    open_storage,
)
from ._wire import Operation, shorten
from ._wire import reseed_ulids as _reseed_ids
from .exceptions import ConfigurationError, InvalidEventError

__all__ = [
    "Bridge",
    "DeadLetter",
    "Stats",
    "configure",
    "flush",
    "get_bridge",
    "shutdown",
    "stats",
]

T = TypeVar("T")

_DEAD_LETTERS_KEPT = 1000
EXIT_MARGIN = 1.0
"""Seconds an exit may run past ``shutdown_timeout`` while the dispatch thread settles the
batch it holds at the deadline (to the spool): the margin the README documents."""
_EXIT_RESERVE = 0.2  # seconds kept back from sending at exit to write what is left to disk
_EXIT_COST = 25e-6  # seconds to build and write one event left queued at exit (generous)
_LEFTOVER_CHUNK = 2000  # events written to the spool per transaction at exit
_UNWRITTEN_RETRY = 1.0  # seconds before the thread tries again to write deferred events
_UNWRITTEN_WAIT = 1.0  # seconds the thread waits for a log call writing deferred events
_MESSAGE_CHARS = 300  # an explanation never needs more; a longer one quotes data
_UNKNOWN_NAMES_KEPT = 1000  # undeclared event names warned about, remembered


def _take_all(items: deque[T]) -> list[T]:
    """Everything in ``items``, taken out one by one: other threads may append meanwhile
    (each item is then taken by exactly one caller)."""
    taken: list[T] = []
    with contextlib.suppress(IndexError):
        while True:
            taken.append(items.popleft())
    return taken


def _time_left(end: float) -> float:
    """Seconds until ``end`` (monotonic), never negative."""
    return max(0.0, end - time.monotonic())


def _short(text: str, limit: int = MAX_NAME_BYTES) -> str:
    """``text`` as counters and dead letters keep it: at most an event name's length."""
    return shorten(text, limit)


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the bridge's counters.

    Every tagged event this process captured ends in exactly one of ``sent``,
    ``failed``, ``invalid``, ``dropped``, ``spooled`` or ``dead_lettered``, or is still
    waiting (``queue_depth``); so ``enqueued`` equals their sum. While events move the
    snapshot may be off by the one event in hand. What replay does with the spool (whose
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
        queue_depth: Events waiting in memory, including the batch being sent.
        last_error: The latest problem, in words; never a secret or a payload.
        replay_refused: Operations from the spool the API refused (dead-lettered).
        evicted: Operations removed unsent from a full spool (``max_spool_bytes``).
        deferred: Events that could not be written to the spool at once because it was
            busy (another process writing, or a log call's short wait: ``CALLER_WAIT``)
            and were kept in memory (at most ``max_queue_size``) to be written by the
            dispatch thread as soon as it could. Not a final state: each is also counted
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


class _Counters:
    """Counters written by the dispatch thread (and, for drops, by the app's threads)."""

    def __init__(self) -> None:
        # Reentrant: the SIGTERM handler runs on the main thread between two bytecodes,
        # maybe while that thread is in count_dropped() or stats() holding this lock.
        self.lock = threading.RLock()
        self.sent = 0
        self.retried = 0
        self.failed = 0
        self.dropped = 0
        self.untaken = 0  # events settled on the app's thread, never queued
        self.invalid = 0
        self.spooled = 0
        self.replayed = 0
        self.dead_lettered = 0
        self.replay_refused = 0
        self.evicted = 0
        self.deferred = 0
        self.unwritten = 0  # events kept in memory to be spooled (queue_depth counts them)
        self.batches = 0
        self.last_error: str | None = None


class Bridge:
    """The one configured client: settings, HTTP client, queue, thread and counters.

    Build it with :func:`configure`; handlers and processors find it with
    :func:`get_bridge`. Nothing here does network I/O on the caller's thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._taxonomy = Taxonomy(
            settings.events,
            unknown_events=settings.unknown_events,
            user_attributes=settings.user_attributes,
        )
        self._client: Any = None
        transport = settings.transport or SessionTransport(
            self.client, settings.track_url, timeout=settings.request_timeout
        )
        pacer = Pacer(settings.max_requests_per_second)
        self._spool: Storage | None = open_storage(settings, on_problem=self._delivery_problem)
        self._replayer: Replayer | None = None
        if self._spool is not None:
            # Replay makes one attempt per round and backs off between rounds: a retry
            # loop there would hold fresh events behind old ones.
            self._replayer = Replayer(
                self._spool,
                Delivery(transport, pacer=pacer, notify=self._delivery_problem),
                batch_size=settings.batch_size,
                on_problem=self._spool_problem,
            )
        self._disk = settings.durability == "disk"
        # Spool writes a log call could not make in its short wait: (operation, reserved
        # for the queue). The dispatch thread writes them (see _write_unwritten).
        self._unwritten: deque[tuple[Operation, bool]] = deque()
        self._letters_unwritten: deque[DeadLetterRow] = deque()  # likewise, dead letters
        # Held while those are written or dropped: a reservation taken from the deque
        # by one thread must not reach the disk after its event was sent by another.
        # Reentrant: a shutdown from a signal handler may interrupt this thread's own write.
        self._unwritten_lock = threading.RLock()
        self._spill = settings.on_full == "spill"
        self._delivery = Delivery(
            transport,
            pacer=pacer,
            policy=RetryPolicy.from_settings(settings, pacer=pacer),
            notify=self._delivery_problem,
        )
        # Problems met on the dispatch thread, to be logged on an app thread: the
        # dispatch thread never logs (see CustomerIOHandler.flush).
        self._pending_warnings: list[str] = []
        # Whether to look, once per batch (off the log calls' path), for a server that
        # will end the process at SIGTERM without our flush (see sigterm_hint).
        self._watch_sigterm = settings.install_signal_handlers
        self._deadline: float | None = None  # when shutdown must be done (monotonic)
        self._counters = _Counters()
        self._dead_letters: deque[DeadLetter] = deque(maxlen=_DEAD_LETTERS_KEPT)
        self._warned_unknown: set[str] = set()
        self._warn_unknown = bool(settings.events) and settings.unknown_events == "warn"
        self._dispatcher: Dispatcher[Capture | Operation] = Dispatcher(
            process=self._process,
            send=self._send,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            max_queue_size=settings.max_queue_size,
            idle=None if self._replayer is None else self._replay_round,
            on_start=self.open_spool if self._disk else None,
        )
        # Settling a batch and shutdown's rescue of a batch still in flight take turns.
        self._settle_lock = threading.RLock()
        self._in_flight: list[Operation] | None = None
        self._rescued: set[str] = set()  # ids spooled by shutdown while being sent
        self._rescued_pending = 0  # of those, not yet settled by the thread
        self._fresh_failing = False
        self._shutdown_lock = threading.RLock()  # reentrant for the SIGTERM handler
        # The process whose state this is; 0 once a fork hook reset it for a child
        # whose thread is still to start (see submit).
        self._pid = os.getpid()
        self._restart = False
        self._shut_down = False

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "running"
        return f"<Bridge {state} site_id={self.settings.site_id!r} url={self.settings.track_url!r}>"

    @property
    def client(self) -> Any:
        """The official ``customerio.CustomerIO`` client, its own retries off."""
        if self._client is None:
            self._client = official_client(self.settings)
        return self._client

    @property
    def spool(self) -> Storage | None:
        """The disk spool, None when ``spool_path=False``."""
        return self._spool

    @property
    def thread(self) -> threading.Thread | None:
        """The dispatch thread, once started."""
        return self._dispatcher.thread

    def start(self) -> Bridge:
        """Start the dispatch thread (idempotent).

        With ``durability="disk"`` the thread opens the spool first thing: a log call
        never opens it (that can take seconds), it only writes, waiting ``CALLER_WAIT``
        at most; until then, events wait in memory to be written (``deferred``).
        ``configure()`` opens it before it returns.
        """
        if not self._shut_down:
            _quiet_http_logs_on_dispatch_thread()
            cover_multiprocessing_exit()
            self._dispatcher.start()
        return self

    def open_spool(self, wait: float | None = None) -> None:
        """Open the spool now, if there is one and it is not open (never raises: a
        problem is counted and warned about like any other spool problem).

        Args:
            wait: Most seconds to wait for the file's locks; the spool's usual waits
                when None.
        """
        spool = self._spool
        if spool is not None and not spool.is_open:
            try:
                spool.prepare() if wait is None else spool.prepare(wait)
            except (SpoolUnavailableError, SpoolBusyError) as exc:
                self._spool_problem(exc)

    # -- the app's side ---------------------------------------------------------------

    def submit(self, capture: Capture) -> bool:
        """Queue a captured event; O(1), never blocks, never raises.

        Returns:
            False when the event was dropped (queue full or bridge shut down); the drop
            is counted.
        """
        if self._pid != os.getpid():
            self._adopt_after_fork()
        if self._pending_warnings:
            self._emit_pending_warnings()
        if self._warn_unknown:
            self._warn_if_unknown(capture)
        if self._disk:
            return self._submit_durably(capture)
        if self._dispatcher.submit(capture):
            return True
        if self._spill or (self._spool is not None and self._dispatcher.closed):
            # Queue full, or logged after shutdown (an exit hook that ran after ours):
            # the event waits on disk for the next replay.
            op = self._build_here(capture)
            return op is not None and self._keep_unqueued(op)
        self.count_dropped(f"event dropped: {self._why_not_queued()}")
        return False

    def _submit_durably(self, capture: Capture) -> bool:
        # durability="disk": on disk before the log call returns, reserved for this
        # process's queue; if the process dies, replay (here or elsewhere) sends it.
        op = self._build_here(capture)
        if op is None:
            return False
        if not self._dispatcher.full:
            # Reserved first, queued then. Should the queue fill in between (another
            # thread), the event goes to the spool released below; a reservation still
            # waiting in memory then never takes the row back (see Spool.add).
            self._write_from_log_call(op, lease=True)
            if self._dispatcher.submit(op):
                return True
        return self._keep_unqueued(op)

    def _keep_unqueued(self, op: Operation) -> bool:
        """Spool an event the queue did not take (counted spooled, or dropped)."""
        if self._write_from_log_call(op, lease=False):
            return True
        self.count_dropped(f"event dropped: {self._why_not_queued()} and the spool is unusable")
        return False

    def _write_from_log_call(self, op: Operation, *, lease: bool) -> bool:
        """Spool ``op`` for a log call, which waits at most ``CALLER_WAIT`` for the spool.

        A spool that stays busy longer (another process writing, or a signal handler
        run in the middle of this thread's own write) does not lose the event: it is
        kept in memory, counted ``deferred``, and written by the dispatch thread as soon
        as it can. After shutdown there is no thread left to do that: the call then
        writes itself, with the spool's ordinary waits.

        Returns:
            False when the spool is off or unusable: nothing was kept.
        """
        closed = self._dispatcher.closed
        wait = None if closed else CALLER_WAIT
        kept = self._store([op], lease=lease, wait=wait, defer=True, untaken=True)
        if kept and (self._unwritten or self._letters_unwritten) and not closed:
            # Deferred by a signal handler that interrupted this very write: now.
            self._write_unwritten(CALLER_WAIT, blocking=False)
        return kept

    def _write_unwritten(
        self,
        wait: float | None = None,
        *,
        sending: list[Operation] | None = None,
        blocking: bool = True,
    ) -> None:
        """Spool what log calls could not; what still cannot be written stays for later.

        Args:
            wait: Most seconds to wait for the spool (see ``Spool.add``).
            sending: A batch about to be sent: its reservations still unwritten after
                this are dropped (the batch settles those events itself), so that none
                reaches the disk after its event was sent.
            blocking: False on a log call's thread: if another thread is at it, leave
                the work to that one.
        """
        if not self._unwritten_lock.acquire(blocking, -1 if not blocking else _UNWRITTEN_WAIT):
            return
        try:
            taken = _take_all(self._unwritten)
            if taken:
                left = self._write_entries(taken, wait)
                if sending and left:
                    ids = {op.id for op in sending}
                    left = [(op, lease) for op, lease in left if not (lease and op.id in ids)]
                self._unwritten.extendleft(reversed(left))
            letters = _take_all(self._letters_unwritten)
            if letters:
                self._keep_dead_letters(letters, wait=wait)
        finally:
            self._unwritten_lock.release()

    def _write_entries(
        self, taken: list[tuple[Operation, bool]], wait: float | None
    ) -> list[tuple[Operation, bool]]:
        """Write deferred entries; the ones a busy spool still did not take."""
        spool = self._spool
        assert spool is not None
        # Reservations first: an event the queue then refused is released after them.
        # Opening the file is fine here: a log call only gets here once it wrote to it.
        reserved = [op for op, lease in taken if lease]
        unqueued = [op for op, lease in taken if not lease]
        try:
            if reserved:
                self._count_evicted(spool.add(reserved, lease=True, wait=wait, open_file=True))
                reserved = []
            if unqueued:
                self._count_evicted(spool.add(unqueued, wait=wait, open_file=True))
        except SpoolBusyError:
            return [(op, True) for op in reserved] + [(op, False) for op in unqueued]
        except SpoolUnavailableError as exc:
            self._spool_problem(exc)
            self._count_unwritten(len(unqueued), lost=True)
            return []
        self._count_unwritten(len(unqueued), lost=False)
        return []

    def _count_unwritten(self, count: int, *, lost: bool) -> None:
        if count:
            with self._counters.lock:
                self._counters.unwritten -= count
                if lost:
                    self._counters.dropped += count
                else:
                    self._counters.spooled += count

    def _drop_unwritten(self, wait: float) -> None:
        """At shutdown: what a busy spool still could not take is lost, and counted."""
        lost = sum(not lease for _, lease in _take_all(self._unwritten))
        self._letters_unwritten.clear()  # still in dead_letters(), in memory
        if lost:
            self._count_unwritten(lost, lost=True)
            with self._counters.lock:
                self._counters.last_error = (
                    f"{lost} events were dropped: the spool stayed busy through shutdown's "
                    f"{wait:g}s"
                )

    def _why_not_queued(self) -> str:
        if self._dispatcher.closed:
            return "the bridge is shut down"
        return f"the queue is full (max_queue_size={self.settings.max_queue_size})"

    def _build_here(
        self, capture: Capture, letters: list[DeadLetterRow] | None = None
    ) -> Operation | None:
        """Build on the caller's thread; an invalid event is counted (never queued).

        Its dead letter goes into ``letters`` when given (the caller writes them at
        once), else to the spool within a log call's wait.
        """
        try:
            return build_operation(capture, self._taxonomy)
        except InvalidEventError as exc:
            self._reject(capture, exc.reason, exc.field, str(exc), here=True, letters=letters)
        except Exception as exc:  # noqa: BLE001 - a user validator or a bug: count, don't raise
            why = f"{type(exc).__name__} while building"
            self._reject(capture, "internal_error", None, why, here=True, letters=letters)
        return None

    def _store(
        self,
        ops: list[Operation],
        *,
        lease: bool = False,
        wait: float | None = None,
        open_file: bool | None = None,
        defer: bool = False,
        untaken: bool = False,
    ) -> bool:
        """Write ``ops`` to the spool; False when there is none or it cannot be used.

        Args:
            ops: The operations.
            lease: Reserve them for this process's queue (``durability="disk"``): they
                are still queued, so not counted here.
            wait: Most seconds to wait for a busy spool (see ``Spool.add``).
            open_file: Open the spool if need be (see ``Spool.add``).
            defer: When the spool stays busy, keep them in memory instead, to be
                written by a later try (counted ``deferred``, waiting in
                ``queue_depth``); True then too. Not once shutdown began: no later
                try would come.
            untaken: They never went through the queue: counted in ``enqueued`` here.
        """
        spool = self._spool
        if spool is None or not ops:
            return False
        try:
            self._count_evicted(spool.add(ops, lease=lease, wait=wait, open_file=open_file))
        except SpoolBusyError as exc:
            if defer and not self._dispatcher.closed and self._defer(ops, lease, untaken):
                return True
            self._spool_problem(exc)
            return False
        except SpoolUnavailableError as exc:
            self._spool_problem(exc)
            return False
        if not lease:
            with self._counters.lock:
                self._counters.spooled += len(ops)
                if untaken:
                    self._counters.untaken += len(ops)
        return True

    def _defer(self, ops: list[Operation], lease: bool, untaken: bool) -> bool:
        """Keep ``ops`` in memory until the spool can take them; False when that memory
        (``max_queue_size`` events not queued) is full.

        Reservations are not bounded here: each stands for an event in the queue, and
        goes when its batch is sent (see _write_unwritten).
        """
        if not lease and self._counters.unwritten + len(ops) > self.settings.max_queue_size:
            return False
        self._unwritten.extend((op, lease) for op in ops)
        with self._counters.lock:
            self._counters.deferred += len(ops)
            if not lease:
                self._counters.unwritten += len(ops)
                if untaken:
                    self._counters.untaken += len(ops)
        return True

    def _count_evicted(self, evicted: int) -> None:
        if evicted:
            with self._counters.lock:
                self._counters.evicted += evicted
                self._counters.last_error = (
                    f"the spool is full (max_spool_bytes={self.settings.max_spool_bytes}): "
                    f"{evicted} of its oldest operations were evicted unsent"
                )

    def _spool_problem(self, exc: Exception) -> None:
        message = str(exc)
        with self._counters.lock:
            self._counters.last_error = message
            if isinstance(exc, SpoolUnavailableError) and exc.first:
                self._pending_warnings.append(
                    f"{message}. Carrying on in memory: events that cannot be delivered now "
                    f"are counted as failed or dropped until the spool works again (tried "
                    f"again every minute)"
                )

    def _warn_if_unknown(self, capture: Capture) -> None:
        # Here on the app's thread rather than on the dispatch thread: that thread never
        # logs, so it never waits for logging's locks (see CustomerIOHandler.flush).
        # The names remembered are bounded: a longer one is invalid anyway (name_too_long),
        # and past _UNKNOWN_NAMES_KEPT of them the last warning says no more will come.
        name = capture.tag if isinstance(capture.tag, str) else capture.message
        if not isinstance(name, str) or len(self._warned_unknown) >= _UNKNOWN_NAMES_KEPT:
            return
        name = name.strip()
        action = capture.fields.get(ACTION, "event")
        if (
            len(name) <= MAX_NAME_BYTES
            and isinstance(action, str)
            and action == "event"
            and name not in self._warned_unknown
            and not self._taxonomy.is_known(name)
        ):
            self._warned_unknown.add(name)
            last = len(self._warned_unknown) >= _UNKNOWN_NAMES_KEPT
            _warn(
                f"event {name!r} is not declared in configure(events=...); sent anyway"
                + (f" ({_UNKNOWN_NAMES_KEPT} such names reported: no more will be)" if last else "")
            )

    def count_dropped(self, message: str) -> None:
        """Count one event that never reached the queue, with why."""
        with self._counters.lock:
            self._counters.dropped += 1
            self._counters.untaken += 1
            self._counters.last_error = message

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything queued so far.

        Args:
            timeout: Seconds to wait at most; ``shutdown_timeout`` when None.

        Returns:
            True when every event queued before the call was delivered or spooled within
            ``timeout``, and none was refused or failed meanwhile; ``stats()`` tells the
            details.
        """
        if self._shut_down:
            # The exit hook, then logging.shutdown() calling every handler's flush: one
            # deadline for the whole exit, spent once.
            return self._dispatcher.depth == 0
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        lost_before = self._lost()
        done = self._dispatcher.flush(wait)
        self._emit_pending_warnings()
        return done and self._lost() == lost_before

    def _lost(self) -> int:
        # Fresh operations that neither went nor wait on disk.
        return self._counters.failed + self._counters.dead_lettered

    def request_flush(self) -> None:
        """Ask the dispatch thread to send what is queued now, without waiting for it."""
        self._dispatcher.request_flush()

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush, stop the thread and close the client, within ``timeout``; idempotent.

        With a spool, sending stops a little before ``timeout`` runs out, so that what
        is still queued can be written to disk in the time left; a batch the thread is
        settling at that moment may take ``EXIT_MARGIN`` seconds more.
        """
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        # Every wait in delivery (rate limit, retry backoff, a 429 pause, refused
        # credentials) now ends by this deadline.
        self._deadline = deadline = time.monotonic() + wait
        pacer = self._delivery.pacer
        pacer.set_deadline(deadline)
        transport = self._delivery.transport
        if isinstance(transport, SessionTransport):
            # And so does a request in flight: no batch outlives the deadline in a socket.
            transport.set_deadline(deadline)
        spool = self._spool
        reserve = None
        if spool is not None and (self._dispatcher.depth or self._unwritten):
            # Opened now, not first at the deadline, when something may need it.
            self.open_spool(min(wait, 1.0))

            def reserve(queued: int) -> float:
                return min(wait / 2, _EXIT_RESERVE + (queued + len(self._unwritten)) * _EXIT_COST)

        left = self._dispatcher.stop(wait, reserve=reserve)
        if not left and reserve is not None:
            self._replay_at_exit(deadline - reserve(0))
        # Sending is over: a retry wait, a 429 pause or a held batch ends now, and the
        # thread settles its batch (to the spool) while this one writes the rest.
        pacer.set_deadline(time.monotonic())
        # Writing to disk ends by then too, however busy the spool is.
        end = deadline + EXIT_MARGIN
        if self._unwritten or self._letters_unwritten:
            self._write_unwritten(_time_left(end))
        if left:
            self._settle_leftovers(left, wait, end)
        thread = self._dispatcher.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread is None or not thread.is_alive():
            self._delivery.transport.close()
            if spool is not None:
                spool.close()
        else:
            # A thread still at work would race the close; it is a daemon and ends
            # with the interpreter, so what it holds must be on disk first.
            self._rescue_in_flight(thread, end)
        self._drop_unwritten(wait)
        self._emit_pending_warnings()

    def _replay_at_exit(self, until: float) -> None:
        """Everything fresh was delivered with time to spare: replay the spool until
        ``until``, so that a process too short-lived for the background replay (a cron
        job) still sends what earlier ones left. Only once this process's own sends went
        through: an API that does not answer costs the exit nothing."""
        thread = self._dispatcher.thread
        if (
            self._replayer is None
            or (thread is not None and thread.is_alive())
            or self._fresh_failing
            or self._counters.sent == 0
        ):
            return
        while time.monotonic() < until and self._replay_round() == 0.0:
            pass

    def _settle_leftovers(self, left: list[Capture | Operation], wait: float, end: float) -> None:
        """What was still queued when sending stopped: spooled by ``end``, else dropped.

        Built and written a chunk at a time, so that a kill soon after (a container's
        grace period ending) finds most of them on disk already.
        """
        for start in range(0, len(left), _LEFTOVER_CHUNK):
            chunk = left[start : start + _LEFTOVER_CHUNK]
            if self._spool is None or _time_left(end) <= 0:
                # Nowhere (or no time) to keep them: no point building them first.
                self._count_lost_at_exit(len(left) - start, wait)
                return
            ops: list[Operation] = []
            letters: list[DeadLetterRow] = []
            for item in chunk:
                op = item if isinstance(item, Operation) else self._build_here(item, letters)
                if op is not None:
                    ops.append(op)
            self._keep_dead_letters(letters, wait=_time_left(end))
            if ops and not self._store(ops, wait=_time_left(end), open_file=True, untaken=True):
                self._count_lost_at_exit(len(ops), wait)

    def _count_lost_at_exit(self, count: int, wait: float) -> None:
        with self._counters.lock:
            self._counters.untaken += count
            self._counters.dropped += count
            self._counters.last_error = (
                f"{count} events were still queued when shutdown's {wait:g}s ran out"
            )

    def _rescue_in_flight(self, thread: threading.Thread, end: float) -> None:
        """The thread is still at work past the deadline: make sure its batch is on disk.

        A batch whose request is on the wire (it may hang) is written here; should the
        send still succeed before the process ends, the rows are removed again, and if
        the process ends first, replay sends them later and the API drops any duplicate
        by id. A batch being built or settled (no network involved: the deadline ended
        every wait) is waited for instead, until ``end`` at most: the thread may need a
        lock this thread holds (a signal handler), so never longer.
        """
        while thread.is_alive():
            if not self._settle_lock.acquire(timeout=max(0.0, end - time.monotonic())):
                return
            try:
                ops = self._in_flight
                if ops and self._delivery.in_request:
                    if self._spool is not None:
                        self._spool_in_flight(ops, _time_left(end))
                    return
            finally:
                self._settle_lock.release()
            left = end - time.monotonic()
            if left <= 0:
                return
            thread.join(min(left, 0.05))

    def _spool_in_flight(self, ops: list[Operation], wait: float) -> None:
        fresh = [op for op in ops if op.id not in self._rescued]
        if self._store(fresh, wait=wait, open_file=True):
            self._rescued.update(op.id for op in fresh)
            with self._counters.lock:
                # Counted spooled now, no longer in the queue's depth.
                self._rescued_pending += len(fresh)

    def wait_for_shutdown(self) -> None:
        """Wait, at most until its deadline, for a shutdown under way to finish sending."""
        deadline, thread = self._deadline, self._dispatcher.thread
        if deadline is not None and thread is not None and thread is not threading.current_thread():
            # join(), not an Event: safe even if this thread was interrupted (SIGTERM)
            # inside the very code that would set one.
            thread.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        c = self._counters
        dispatcher = self._dispatcher
        with c.lock:
            queued, depth = dispatcher.queued, dispatcher.depth
            return Stats(
                enqueued=c.untaken + dispatcher.taken + queued,
                sent=c.sent,
                retried=c.retried,
                failed=c.failed,
                dropped=c.dropped,
                invalid=c.invalid,
                spooled=c.spooled,
                replayed=c.replayed,
                dead_lettered=c.dead_lettered,
                batches=c.batches,
                queue_depth=max(0, depth - self._rescued_pending) + c.unwritten,
                last_error=c.last_error,
                replay_refused=c.replay_refused,
                evicted=c.evicted,
                deferred=c.deferred,
            )

    def _carry_counters(self, before: Stats) -> None:
        """Go on counting from a bridge this one replaces (see flush_or_spool): what that
        one still held in memory is counted dropped here."""
        c = self._counters
        with c.lock:
            for name in (
                "sent", "retried", "failed", "dropped", "invalid", "spooled", "replayed",
                "dead_lettered", "batches", "replay_refused", "evicted", "deferred",
            ):  # fmt: skip
                setattr(c, name, getattr(before, name))
            c.untaken = before.enqueued
            c.dropped += before.queue_depth
            c.last_error = before.last_error

    def dead_letters(self) -> list[DeadLetter]:
        """The most recent events set aside as undeliverable (newest last, at most 1000)."""
        with self._counters.lock:
            return list(self._dead_letters)

    def _emit_pending_warnings(self) -> None:
        if not self._pending_warnings:
            return
        with self._counters.lock:
            pending, self._pending_warnings = self._pending_warnings, []
        for message in pending:
            _warn(message)

    # -- fork -------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        """Make this bridge the forked child's own, as if just built; start no thread.

        The parent sends what it had queued, once: the child drops its copy of the
        queue and of the batch in flight. Counters start at zero. Every lock, event and
        condition is new (a parent thread may have held one at the fork), and so is the
        HTTP session; the parent's stays the parent's. The child's first submit starts
        the thread (never the fork hook).
        """
        old_transport = self._delivery.transport
        if self._spool is not None:
            self._spool.reset_after_fork()  # never close the parent's connection here
        was_running = self._dispatcher.thread is not None
        shut_down = self._shut_down
        # Everything this bridge owns is what __init__ builds: build it again.
        Bridge.__init__(self, self.settings)
        if shut_down:
            self._shut_down = True
            self._dispatcher.stop(0.0)
        self._restart = was_running and not shut_down
        self._pid = 0  # the first submit finishes the move (see _adopt_after_fork)
        # The default transport was rebuilt by __init__, with a new client and session;
        # the parent's is left alone, not closed: closing takes urllib3's pool lock, which
        # the parent's sending thread may have held at the fork (a hang in the child).
        # An injected transport is the app's object, reused here: it is told to drop its
        # connections through close(). Not worth a crash in the child either way.
        if self.settings.transport is not None:
            with contextlib.suppress(Exception):
                old_transport.close()

    def _adopt_after_fork(self) -> None:
        """The first submit in a forked child: reset if no fork hook did, start the thread."""
        if self._pid != 0:
            # A fork that bypassed os.fork's hooks; theirs did not run either, so the
            # ids' random part must be reseeded too, lest the child repeat the parent's.
            _reseed_ids()
            self._reset_after_fork()
        self._pid = os.getpid()
        if self._restart:
            self._restart = False
            self.start()

    # -- the dispatch thread's side ---------------------------------------------------

    def _delivery_problem(self, message: str) -> None:
        with self._counters.lock:
            self._counters.last_error = message
            self._pending_warnings.append(message)

    def _process(self, capture: Capture | Operation) -> Operation | None:
        if isinstance(capture, Operation):
            return capture  # built on the app's thread (durability="disk")
        try:
            op = build_operation(capture, self._taxonomy)
        except InvalidEventError as exc:
            self._reject(capture, exc.reason, exc.field, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a user validator or a bug: count, don't die
            self._reject(capture, "internal_error", None, f"{type(exc).__name__} while building")
            return None
        return op

    def _reject(
        self,
        capture: Capture,
        reason: str,
        field: str | None,
        message: str,
        *,
        here: bool = False,
        letters: list[DeadLetterRow] | None = None,
    ) -> None:
        name = capture.tag if isinstance(capture.tag, str) else capture.message
        # A "name" may be a whole log message: keep at most an event name's worth of it.
        short_name = _short(name.strip()) if isinstance(name, str) else None
        letter = DeadLetter(
            id=None,
            name=short_name,
            reason=reason,
            field=field,
            message=_short(message, _MESSAGE_CHARS),
            at=time.time(),
        )
        with self._counters.lock:
            self._counters.invalid += 1
            if here:
                self._counters.untaken += 1
            self._counters.last_error = f"invalid event {short_name!r}: {letter.message}"
            self._dead_letters.append(letter)
        at, text = letter.at, letter.message
        row = DeadLetterRow(0, None, None, short_name, reason, field, text, at, None)
        if letters is not None:
            letters.append(row)
        else:
            # A short wait on either thread: a busy spool leaves the row for later, and
            # the event (already counted invalid) is not held in hand meanwhile. Only
            # the dispatch thread may open the file for it.
            self._keep_dead_letters([row], wait=CALLER_WAIT, open_file=not here)

    def _keep_dead_letters(
        self,
        rows: list[DeadLetterRow],
        *,
        wait: float | None = None,
        open_file: bool | None = None,
    ) -> None:
        """Dead letters to disk too; with ``wait``, a spool still busy after it leaves
        them for the dispatch thread's next try (up to ``_DEAD_LETTERS_KEPT`` of them)."""
        if self._spool is None or not rows:
            return
        try:
            self._spool.dead_letter(rows, wait=wait, open_file=open_file)
        except SpoolBusyError as exc:
            if wait is None:
                self._spool_problem(exc)  # they stay in dead_letters(), in memory
            elif len(self._letters_unwritten) < _DEAD_LETTERS_KEPT:
                self._letters_unwritten.extend(rows)
        except SpoolUnavailableError as exc:
            self._spool_problem(exc)

    def _send(self, ops: list[Operation]) -> None:
        if self._unwritten or self._letters_unwritten:
            # Reservations deferred by log calls go to disk before their events are sent;
            # a short wait only, fresh events must not stall behind a busy spool.
            self._write_unwritten(CALLER_WAIT, sending=ops)
            if self._unwritten or self._letters_unwritten:
                self._dispatcher.schedule_idle(_UNWRITTEN_RETRY)
        if self._watch_sigterm:
            self._check_sigterm()
        self._in_flight = ops
        try:
            report = self._delivery.deliver(ops)
        except Exception as exc:  # noqa: BLE001 - a transport bug must not lose the count
            error = f"{type(exc).__name__} in the transport"
            failure = Failure("internal_error", error)
            report = DeliveryReport(failed=[(op, failure) for op in ops], error=error)
        with self._settle_lock:
            try:
                self._account(report)
            finally:
                self._in_flight = None

    def _check_sigterm(self) -> None:
        """Queue the warning, once per process, if SIGTERM will skip our flush; the next
        log call or flush on an app thread says it (this thread never logs)."""
        hint = sigterm_hint()
        if hint is not None:
            self._watch_sigterm = False
            with self._counters.lock:
                self._pending_warnings.append(hint)

    def _account(self, report: DeliveryReport) -> None:
        """Settle a fresh batch: sent, dead-lettered (refused for good), or spooled."""
        refused = [(op, f) for op, f in report.failed if f.permanent]
        unsent = [(op, f) for op, f in report.failed if not f.permanent]
        waiting = [op for op, _ in unsent] + report.dropped
        rescued = self._rescued
        if rescued:
            # Shutdown already spooled (and counted) these: settle each only once.
            waiting = [op for op in waiting if op.id not in rescued]
        stored = self._store(waiting, defer=True)
        done = [op.id for op in report.sent]
        if done and (self._disk or rescued) and self._spool is not None:
            try:
                self._spool.ack(done)
            except (SpoolUnavailableError, SpoolBusyError) as exc:
                self._spool_problem(exc)  # replay resends them; the API drops duplicates
        self._keep_dead_letters(dead_letter_rows(refused))
        now = time.time()
        kept = (
            refused
            if stored
            else [*refused, *((op, f) for op, f in unsent if op.id not in rescued)]
        )
        letters = [DeadLetter(op.id, op.name, f.reason, f.field, f.message, now) for op, f in kept]
        with self._counters.lock:
            c = self._counters
            c.batches += report.requests
            c.retried += report.retried
            c.sent += len(report.sent)
            c.dead_lettered += len(refused)
            if not stored:
                c.dropped += sum(op.id not in rescued for op in report.dropped)
                c.failed += sum(op.id not in rescued for op, _ in unsent)
            if rescued:
                # Rescued ops that were settled here after all leave ``spooled``.
                settled = [op.id for op in report.sent] + [op.id for op, _ in refused]
                c.spooled -= sum(i in rescued for i in settled)
                everything = [*report.sent, *(op for op, _ in report.failed), *report.dropped]
                self._rescued_pending -= sum(op.id in rescued for op in everything)
            self._dead_letters.extend(letters)
            if report.error:
                c.last_error = report.error
        if waiting or unsent:
            self._fresh_failing = True
            self._dispatcher.schedule_idle(_replay.MIN_BACKOFF)
        elif report.sent and self._fresh_failing and self._replayer is not None:
            # The API answers again: replay what waited, now.
            self._fresh_failing = False
            self._replayer.retry_soon()
            self._dispatcher.schedule_idle(0.0)

    def _replay_round(self) -> float:
        """The dispatch thread's idle work: one replay round; seconds until the next."""
        replayer = self._replayer
        assert replayer is not None
        if self._unwritten or self._letters_unwritten:
            self._write_unwritten()
        result: ReplayRound = replayer.round()
        report = result.report
        now = time.time()
        letters = [
            DeadLetter(op.id, op.name, f.reason, f.field, f.message, now)
            for op, f in result.refused
        ]
        with self._counters.lock:
            c = self._counters
            c.replayed += len(result.sent)
            c.replay_refused += len(result.refused)
            self._dead_letters.extend(letters)
            if report is not None:
                c.batches += report.requests
                c.retried += report.retried
            if result.error and (result.returned or result.refused):
                c.last_error = f"replaying the spool: {result.error}"
        delay = replayer.next_delay(result)
        waiting = self._unwritten or self._letters_unwritten
        return min(delay, _UNWRITTEN_RETRY) if waiting else delay


# The library's own logger, fetched once here so that the dispatch thread never needs
# logging's module lock to find it. Its records are untagged: they never re-enter our
# handler, even when the app attaches it to the root logger.
_log = logging.getLogger("customerio_logging")


class _NotOnDispatchThread(logging.Filter):
    """Drops records made on the dispatch thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


_HTTP_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
    "urllib3.poolmanager",
)
_quiet_filter = _NotOnDispatchThread()


def _quiet_http_logs_on_dispatch_thread() -> None:
    """Keep urllib3's records about our own requests out of the app's handlers.

    Without this, each batch's debug lines reach the app's handlers from the dispatch
    thread, and a handler that waits for a flush would wait for itself.
    """
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet_filter not in logger.filters:
            logger.addFilter(_quiet_filter)


def _warn(message: str) -> None:
    if _log.disabled:
        # dictConfig's default disable_existing_loggers=True silences loggers created
        # before it ran, ours included; a warning about lost events must still be seen.
        sys.stderr.write(f"customerio_logging WARNING: {message}\n")
        return
    _log.warning(message)


_bridge: Bridge | None = None
# Held only to read and swap module state, never while building, starting or stopping a
# bridge; reentrant all the same: a tagged call from a signal handler or a __del__ may
# run on a thread interrupted right inside it. Nothing on a log call's path waits on a
# lock its own thread may already hold.
_bridge_lock = threading.RLock()
_configure_lock = threading.Lock()  # configure() only: never on a log call's path


def configure(**settings: Any) -> Bridge:
    """Build the process's bridge and start its thread.

    Explicit keyword arguments win over environment variables, which win over defaults.
    A bridge configured earlier is shut down (flushed) first. Called on the main thread
    with ``install_signal_handlers`` (the default), it also installs, once per process,
    a SIGTERM handler that delivers what is queued, then chains to the previous handler.

    Raises:
        ConfigurationError: A setting is missing or malformed.
    """
    global _bridge
    new = Bridge(Settings.from_env(**settings))
    # One configure at a time, so that none returns a bridge another has already
    # replaced and shut down.
    with _configure_lock:
        with _bridge_lock:
            old, _bridge = _bridge, new
        if old is not None:
            old.shutdown()
        if new.settings.durability == "disk":
            new.open_spool()  # the first log call's event is on disk when it returns
        new.start()
    if new.settings.install_signal_handlers:
        install_sigterm_handler(_on_sigterm)
    return new


def get_bridge() -> Bridge:
    """The process's bridge; built from the environment on first use if never configured.

    Raises:
        ConfigurationError: No bridge was configured and the environment lacks settings.
    """
    bridge = _bridge
    if bridge is not None:
        return bridge
    return _bridge_from_env()


def submit_capture(capture: Capture) -> None:
    """Queue a tagged call on the process's bridge, built from the environment if need be.

    The path of every handler and processor without a bridge of its own. A tagged call
    made while this very thread is building the bridge (from a signal handler, or a
    ``__del__`` the garbage collector runs) is handed to that build, never waited for.

    Raises:
        ConfigurationError: No bridge was configured and the environment lacks settings.
    """
    bridge = _bridge
    if bridge is None:
        early: list[Capture] | None = getattr(_building, "early", None)
        if early is not None:
            if len(early) < _EARLY_KEPT:
                early.append(capture)
            else:
                note_lost(RuntimeError("too many tagged calls while building the bridge"))
            return
        bridge = _bridge_from_env()
    bridge.submit(capture)


_building = threading.local()  # .early: tagged calls made while this thread builds
_EARLY_KEPT = 1000


def _bridge_from_env() -> Bridge:
    global _bridge
    # Built outside the lock: building imports the HTTP client (tens of milliseconds).
    # Another thread's first tagged call meanwhile builds its own: the first to finish
    # is kept, the others, never started, are dropped. This thread's own re-entrant
    # calls wait in `early` (see submit_capture).
    early: list[Capture] = []
    _building.early = early
    try:
        built = Bridge(Settings.from_env())
    except Exception as exc:
        for _ in early:
            note_lost(exc)
        raise
    finally:
        _building.early = None
    with _bridge_lock:
        if _bridge is None:
            _bridge = built
        bridge = _bridge
    bridge.start()
    for capture in early:
        bridge.submit(capture)
    return bridge


def current_bridge() -> Bridge | None:
    """The bridge if one exists, without building one."""
    return _bridge


def flush_or_spool(timeout: float) -> bool:
    """Deliver what is queued within ``timeout``; what is not delivered by then is on disk
    when this returns, and a fresh bridge (same settings) takes the process's next events.

    For a process that may be frozen or killed without warning as soon as this returns:
    a serverless handler's end. It takes ``timeout`` plus the few milliseconds the spool
    writes take (at most ``EXIT_MARGIN`` more when the spool is busy).

    Returns:
        True when everything was delivered (or nothing is set up).
    """
    global _bridge
    bridge = _bridge
    if bridge is None or bridge.flush(timeout):
        return True
    # Sending stops now: what is queued, and a batch still on the wire, go to the spool.
    bridge.shutdown(0.0)
    fresh = Bridge(bridge.settings)
    fresh._carry_counters(bridge.stats())
    with _bridge_lock:
        if _bridge is bridge:
            _bridge = fresh
    if _bridge is fresh:
        fresh.start()
    return False


def flush(timeout: float | None = None) -> bool:
    """Deliver everything queued so far; see :meth:`Bridge.flush`. True if nothing is set up.

    Args:
        timeout: Seconds to wait at most; the bridge's ``shutdown_timeout`` (5 by
            default) when None.
    """
    bridge = _bridge
    return True if bridge is None else bridge.flush(timeout)


def shutdown(timeout: float | None = None) -> None:
    """Flush and stop the bridge, within ``timeout`` seconds (``shutdown_timeout`` when
    None); idempotent."""
    bridge = _bridge
    if bridge is not None:
        bridge.shutdown(timeout)


def stats() -> Stats:
    """The bridge's counters; all zero if no bridge exists yet.

    Events logged while no bridge could be built (settings missing from the
    environment) are counted as ``dropped``, with the reason in ``last_error``.
    """
    bridge = _bridge
    if bridge is not None:
        return bridge.stats()
    with _bridge_lock:
        dropped, error = _unconfigured
    return Stats(enqueued=dropped, dropped=dropped, last_error=error)


_unconfigured: tuple[int, str | None] = (0, None)


def note_lost(error: Exception) -> None:
    """Count an event lost before it reached a queue: no bridge could be built, or a bug.

    Warns once when the cause is missing configuration; never raises.
    """
    global _unconfigured
    if isinstance(error, ConfigurationError):
        message = f"customerio_logging is not configured, event dropped: {error}"
    else:
        message = f"event dropped: {type(error).__name__} while capturing it"
    bridge = _bridge
    if bridge is not None:
        bridge.count_dropped(message)
        return
    with _bridge_lock:
        count, _ = _unconfigured
        _unconfigured = (count + 1, message)
    if count == 0:
        _warn(message)


def _flush_at_exit() -> None:
    bridge = _bridge
    if bridge is not None:
        bridge.shutdown(bridge.settings.shutdown_timeout)


# Registered at import, not when the first bridge starts: atexit runs hooks last-in,
# first-out, so this one runs after the hooks an app registers later (their events are
# still delivered) and before logging.shutdown(), registered when logging was imported.
install_exit_hook(_flush_at_exit)


def _on_sigterm(final: bool) -> None:
    """SIGTERM: deliver what is queued within ``shutdown_timeout``; then the handler chains.

    When the process is about to die (``final``) the bridge is shut down: one deadline.
    Otherwise (the previous handler ignores SIGTERM, or is the app's own, which may
    drain requests before exiting) it is flushed and keeps running; the exit hook
    delivers what is logged afterwards.
    """
    bridge = _bridge
    if bridge is None:
        return
    if final:
        bridge.shutdown(bridge.settings.shutdown_timeout)
        # A shutdown already under way (the app's own, or configure() replacing this
        # bridge) returned at once above: let it finish within its deadline first.
        bridge.wait_for_shutdown()
    else:
        bridge.flush(bridge.settings.shutdown_timeout)


def _after_fork_in_child() -> None:
    global _bridge_lock, _configure_lock
    _reseed_ids()  # first: nothing may make an id with the parent's randomness
    # A parent thread may have held them at the fork: that thread does not exist here.
    _bridge_lock = threading.RLock()
    _configure_lock = threading.Lock()
    bridge = _bridge
    if bridge is not None:
        # Should it fail, the bridge's first submit in the child tries again.
        with contextlib.suppress(Exception):
            bridge._reset_after_fork()


install_fork_hook(_after_fork_in_child)


def _forget_bridge() -> Bridge | None:
    """Forget the process's bridge without stopping it and return it (for tests)."""
    global _bridge, _unconfigured
    with _bridge_lock:
        old, _bridge = _bridge, None
        _unconfigured = (0, None)
    return old
