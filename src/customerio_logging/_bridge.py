"""Bridge: one per process, wiring capture to the queue, delivery and the spool."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from . import _routing
from ._capture import Snapshot
from ._config import Settings
from ._delivery import official_client
from ._direct import Direct, DirectCalls, Target
from ._dispatch import Dispatcher
from ._ledger import DeadLetter, Ledger, Stats
from ._lifecycle import cover_multiprocessing_exit
from ._overflow import Overflow
from ._ownlog import UnknownEventWarnings, quiet_http_logs_on_dispatch_thread
from ._receipt import Outcome, Receipt
from ._receipt import after_fork_in_child as receipt_after_fork
from ._schema import Taxonomy
from ._sending import Sender
from ._shutdown import Shutdown
from ._storage import Storage, open_storage
from ._wire import Operation, new_ulid, reseed_ulids
from ._writer import SpoolWriter

__all__ = ["Bridge"]

_DISABLED = Outcome("disabled", None, None, "customerio_logging is switched off (enabled=False)")


class Bridge(DirectCalls):
    """The one configured client: settings, HTTP client, queue, thread and counters.

    Build it with :func:`configure`; handlers and processors find it with
    :func:`get_bridge`. Nothing here does network I/O on the caller's thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._taxonomy = Taxonomy(
            settings.events,
            unknown_events=settings.unknown_events,
            user_attributes=settings.user_attributes,
        )
        self._durable = settings.durability == "disk"
        self._strict = settings.strict
        self._enabled = settings.enabled
        self._warn_unknown = bool(settings.events) and settings.unknown_events == "warn"
        self._unknown = UnknownEventWarnings(self._taxonomy)
        _routing.built_here(self, settings.track_url)  # a test fixture's, if one is active
        ledger = self._ledger = Ledger(on_error=settings.on_error)
        spool = open_storage(settings, on_problem=ledger.warn_problem, on_evicted=ledger.evicted)
        self._writer = SpoolWriter(
            spool,
            self._ledger,
            max_queue_size=settings.max_queue_size,
            max_spool_bytes=settings.max_spool_bytes,
            closed=lambda: self._dispatcher.closed,
        )
        self._sender = sender = Sender(
            settings,
            taxonomy=self._taxonomy,
            writer=self._writer,
            ledger=self._ledger,
            client=lambda: self.client,
            schedule_idle=lambda delay: self._dispatcher.schedule_idle(delay),
        )
        self._dispatcher: Dispatcher[Snapshot | Direct | Operation] = Dispatcher(
            process=sender.process,
            send=sender.send,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            max_queue_size=settings.max_queue_size,
            idle=None if spool is None else sender.replay_round,
            on_start=self._ledger.started_with(self.open_spool if self._durable else None),
        )
        self._writer.settled_later = sender.deferred_settled
        self._shutdown_lock = threading.RLock()  # reentrant for the SIGTERM handler
        # The process whose state this is; 0 once a fork hook reset it for a child
        # whose thread is still to start (see submit).
        self._pid = os.getpid()
        self._restart = self._shut_down = False
        self._overflow = Overflow(
            settings,
            dispatcher=self._dispatcher,
            sender=sender,
            writer=self._writer,
            ledger=self._ledger,
        )
        self._shutdown = Shutdown(
            dispatcher=self._dispatcher,
            sender=sender,
            writer=self._writer,
            ledger=self._ledger,
            overflow=self._overflow,
        )

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
        return self._writer.spool

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
        if not self._shut_down and self._enabled:
            quiet_http_logs_on_dispatch_thread()
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
        self._writer.open(wait)

    # -- the app's side ---------------------------------------------------------------

    def submit(self, capture: Snapshot | Direct | Operation) -> bool:
        """Queue a captured event; O(1), never blocks, never raises (but in a test
        fixture's strict mode, which raises ``InvalidEventError`` for an invalid one).

        Returns:
            False when the event was dropped (queue full or bridge shut down); the drop
            is counted.
        """
        if _routing.active or not self._enabled:
            return self._routed(capture)
        return self._queue(capture)

    def _queue(self, capture: Snapshot | Direct | Operation) -> bool:
        if self._pid != os.getpid():
            self._adopt_after_fork()
        if self._ledger.has_warnings:
            self._ledger.say_warnings()
        if self._warn_unknown:
            self._warn_if_unknown(capture)
        if self._durable:
            return self._overflow.write_ahead(capture)
        return self._dispatcher.submit(capture) or self._overflow.refused(capture)

    def submit_direct(self, snapshot: Snapshot, target: Target) -> Receipt:
        """Queue a direct call's snapshot and target (see ``DirectCalls``); its receipt.

        Raises:
            InvalidEventError: With ``strict=True`` only: it cannot be sent.
        """
        if self._pid != os.getpid():  # before the id: in a hook-less fork, ids are the parent's
            self._adopt_after_fork()
        direct = Direct(snapshot, Receipt(new_ulid(snapshot.created)), target)
        strict = self._strict and self._enabled and not _routing.active
        (self._checked if strict else self.submit)(direct)
        return direct.receipt

    def _routed(self, item: Snapshot | Direct | Operation) -> bool:
        """A call while a test fixture is active, or the bridge is switched off."""
        tap = _routing.tap
        if tap is not None:
            return tap.take(item, self._taxonomy, strict=self._strict)
        if _routing.diverted(self):  # built before the fixture: not the test's address
            return _routing.divert(item)
        if not self._enabled:
            if isinstance(item, Direct):
                item.receipt.resolve(_DISABLED)
            return True
        if _routing.checks_here() or (self._strict and isinstance(item, Direct)):
            return self._checked(item)
        return self._queue(item)

    def _checked(self, item: Snapshot | Direct | Operation) -> bool:
        """Build ``item`` now, raising ``InvalidEventError`` if it is invalid, and queue it."""
        if self._pid != os.getpid():  # first: adopting resets the receipts built so far
            self._adopt_after_fork()
        if self._warn_unknown:
            self._warn_if_unknown(item)
        if not isinstance(item, Operation):
            item = self._sender.build_or_raise(item)
        return self._queue(item)

    def _warn_if_unknown(self, item: Snapshot | Direct | Operation) -> None:
        if isinstance(item, Direct):
            self._unknown.check(item.snapshot, item.target.action)
        elif not isinstance(item, Operation):  # strict: checked before it was built
            self._unknown.check(item)

    def count_dropped(self, message: str) -> None:
        """Count one event that never reached the queue, with why."""
        self._ledger.dropped(1, message)

    # -- flush, shutdown, counters ------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything queued so far.

        Args:
            timeout: Seconds to wait at most; ``shutdown_timeout`` when None.

        Returns:
            True when every event queued before the call was delivered or spooled within
            ``timeout``, and none was refused or failed meanwhile (an invalid event is
            not: see ``stats().invalid``, or the fixtures' strict mode); ``stats()``
            tells the details.
        """
        if self._shut_down:
            # The exit hook, then logging.shutdown() calling every handler's flush: one
            # deadline for the whole exit, spent once. The spill writer may still hold
            # a group it could not write by then (a stalled disk).
            return self._dispatcher.depth == 0 and self._overflow.spilled == 0
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        lost_before, end = self._ledger.lost, time.monotonic() + wait
        # The spill buffer first: a local write, where the queue may wait on the network.
        spilled = self._overflow.flush(wait)
        done = self._dispatcher.flush(max(0.0, end - time.monotonic()))
        self._ledger.say_warnings()
        return spilled and done and self._ledger.lost == lost_before

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
        self._shutdown.run(self.settings.shutdown_timeout if timeout is None else timeout)

    def wait_for_shutdown(self) -> None:
        """Wait, at most until its deadline, for a shutdown under way to finish sending."""
        self._shutdown.wait()

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return self._ledger.stats(self._overflow.waiting)

    def carry_counters(self, before: Stats) -> None:
        """Go on counting from a bridge this one replaces (see flush_or_spool): what that
        one still held in memory is counted dropped here."""
        self._ledger.carry(before)

    def dead_letters(self) -> list[DeadLetter]:
        """The most recent events set aside as undeliverable (newest last, at most 1000)."""
        return self._ledger.dead_letters()

    # -- fork -------------------------------------------------------------------------

    def at_fork_reinit(self) -> None:
        """Make this bridge the forked child's own, as if just built; start no thread.

        The parent sends what it had queued, once: the child drops its copy of the
        queue and of the batch in flight. Counters start at zero. Every lock, event and
        condition is new (a parent thread may have held one at the fork), and so is the
        HTTP session; the parent's stays the parent's. The child's first submit starts
        the thread (never the fork hook).
        """
        old_transport = self._sender.delivery.transport
        was_running = self._dispatcher.thread is not None
        self._writer.after_fork_in_child()
        self._ledger.at_fork_reinit()
        self._dispatcher.at_fork_reinit()
        self._overflow.at_fork_reinit()
        self._unknown = UnknownEventWarnings(self._taxonomy)
        self._shutdown_lock = threading.RLock()
        # A new client and session for the default transport; the parent's is left
        # alone, not closed: closing takes urllib3's pool lock, which the parent's
        # sending thread may have held at the fork (a hang in the child).
        self._client = None
        self._sender.connect()
        self._shutdown.deadline = None
        if self._shut_down:
            # The parent may have forked while its shutdown was still flushing, before
            # its dispatcher closed: the child's must refuse events (spooled or counted
            # dropped) rather than queue them for a thread that will never start.
            self._dispatcher.stop(0.0)
        self._restart = was_running and not self._shut_down
        self._pid = 0  # the first submit finishes the move (see _adopt_after_fork)
        # An injected transport is the app's object, reused here: it is told to drop its
        # connections through close(). Not worth a crash in the child either way.
        if self.settings.transport is not None:
            with contextlib.suppress(Exception):
                old_transport.close()

    def _adopt_after_fork(self) -> None:
        """The first submit in a forked child: reset if no fork hook did, start the thread."""
        if self._pid != 0:
            # A fork that bypassed os.fork's hooks; theirs did not run either, so the
            # ids' random part must be reseeded too, lest the child repeat the parent's,
            # and the receipts' lock made new.
            reseed_ulids()
            receipt_after_fork()
            self.at_fork_reinit()
        self._pid = os.getpid()
        if self._restart:
            self._restart = False
            self.start()
