"""Receipt and Outcome: what became of one direct call's operation, when it is known."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any, Literal, NamedTuple

__all__ = ["Outcome", "Receipt", "Status", "after_fork_in_child"]

Status = Literal["sent", "spooled", "dead_lettered", "invalid", "failed", "dropped", "disabled"]

# One lock for every receipt: taken only to resolve one and by those who wait or add a
# callback, each a few attribute reads; a receipt nobody looks at owns no lock or event.
# Reentrant: the SIGTERM handler runs on the main thread between two bytecodes, maybe
# while that thread holds it (waiting on a receipt, or settling one it spooled itself),
# and the shutdown it runs settles the receipts of what is still queued.
_lock = threading.RLock()


def after_fork_in_child() -> None:
    """In a forked child: a new lock (a parent thread resolving a receipt may have held
    it at the fork; held for ever here, every receipt's resolve and wait would hang)."""
    global _lock
    _lock = threading.RLock()


class Outcome(NamedTuple):
    """What became of a direct call's operation.

    Attributes:
        status: ``sent`` (the Track API accepted it), ``spooled`` (on disk, replay sends
            it later), ``dead_lettered`` (the API refused it for good), ``invalid`` (it
            could not become a valid operation), ``failed`` (undeliverable now and no
            spool to keep it) or ``dropped`` (the queue was full, or the bridge shut
            down, with no spool); ``disabled`` when the library is switched off
            (``enabled=False``): nothing was sent, by design.
        reason: A short code for the last four (see the README's table), else None.
        field: The field at fault, when known.
        message: The explanation, in words; never a payload.
    """

    status: Status
    reason: str | None = None
    field: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """True when the operation was sent or waits on disk to be sent, or the library
        is switched off (``disabled``: the app asked for nothing to be sent)."""
        return self.status in ("sent", "spooled", "disabled")


class Receipt:
    """The receipt of one direct call: its operation's id, and later its :class:`Outcome`.

    Cheap when nobody looks at it: no lock, thread or event of its own. ``result()``
    waits on a thread; ``await receipt`` waits in asyncio without blocking the loop;
    ``add_done_callback(fn)`` calls ``fn(receipt)`` once the outcome is known, on the
    thread that resolves it (one of the library's: the dispatch thread, usually, or the
    spill buffer's writer for a call the full queue did not take; keep it short, never
    block).

    Attributes:
        id: The operation's ULID, as sent to Customer.io (``id`` on named actions).
    """

    __slots__ = ("_callbacks", "_event", "_outcome", "id")

    def __init__(self, op_id: str) -> None:
        self.id = op_id
        self._outcome: Outcome | None = None
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[Receipt], object]] | None = None

    def __repr__(self) -> str:
        state = "pending" if self._outcome is None else self._outcome.status
        return f"<Receipt {self.id} {state}>"

    def done(self) -> bool:
        """True once the outcome is known."""
        return self._outcome is not None

    def result(self, timeout: float | None = None) -> Outcome:
        """The outcome, waiting at most ``timeout`` seconds for it (None: as long as it
        takes; a flush or shutdown settles every receipt by its deadline).

        Raises:
            TimeoutError: The outcome is not known after ``timeout`` seconds.
        """
        outcome = self._outcome
        if outcome is not None:
            return outcome
        with _lock:
            if self._outcome is None and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None:
            event.wait(timeout)
        outcome = self._outcome
        if outcome is None:
            raise TimeoutError(f"receipt {self.id}: no outcome after {timeout}s")
        return outcome

    def add_done_callback(self, fn: Callable[[Receipt], object]) -> None:
        """Call ``fn(receipt)`` once the outcome is known (at once if it is). An exception
        ``fn`` raises is ignored: it must not stop the pipeline."""
        with _lock:
            if self._outcome is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _call(fn, self)

    def __await__(self) -> Generator[Any, None, Outcome]:
        if self._outcome is not None:
            return self._outcome
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def wake(receipt: Receipt) -> None:
            outcome = receipt._outcome
            assert outcome is not None
            loop.call_soon_threadsafe(_settle_future, future, outcome)

        self.add_done_callback(wake)
        return (yield from future.__await__())

    def resolve(self, outcome: Outcome) -> None:
        """Set the outcome (the first one wins) and wake who waits. For the pipeline."""
        with _lock:
            if self._outcome is not None:
                return
            self._outcome = outcome
            event, callbacks = self._event, self._callbacks
            self._callbacks = None
        if event is not None:
            event.set()
        if callbacks:
            for fn in callbacks:
                _call(fn, self)


def _call(fn: Callable[[Receipt], object], receipt: Receipt) -> None:
    # The app's callback must not stop the pipeline (it runs on the dispatch thread): not
    # even by sys.exit(), which would end that thread.
    with contextlib.suppress(Exception, SystemExit):
        fn(receipt)


def _settle_future(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():  # cancelled meanwhile: nobody waits any more
        future.set_result(outcome)
