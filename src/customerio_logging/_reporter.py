"""Telling the app's ``on_error``: reports queued from any thread in O(1), merged past a
bound, and handed to the callback on a thread of the library's own."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ._reasons import ErrorReport

__all__ = ["REPORTS_KEPT", "THREAD_NAME", "ErrorReporter"]

THREAD_NAME = "customerio-on-error"
REPORTS_KEPT = 1000
"""Reports waiting for the callback; past it, new ones are merged into one per kind."""
_LINGER = 1.0  # seconds a closed reporter's thread waits for more reports before ending
_STUCK = 0.5  # seconds one callback call may run before a shutdown stops waiting for it


class ErrorReporter:
    """Hands every :class:`ErrorReport` to the app's ``on_error`` on a thread of its own.

    ``report`` runs wherever an event is lost: on the dispatch thread, and on the app's
    threads (a full queue drops the event inside the log call). It never calls the
    callback and never waits for it: reports wait in a queue of ``REPORTS_KEPT``; while
    the callback is behind and the queue full, further reports are merged into one per
    kind (totals added, the latest message kept), handed over once the queue is empty.
    So a storm of drops costs each log call a lock and an append or a merge.

    The thread starts with the dispatch thread (no thread can start during interpreter
    exit on Python 3.12+, when the reports of what the exit could not deliver come), or
    at the first report if it has not yet. Once the bridge is shut down (``close``) it
    ends when it has had nothing to hand over for a second; a later report (an event
    logged after the shutdown, dropped) starts it again.

    Args:
        callback: The app's ``on_error``. An exception it raises is ignored; the first
            one is warned about, through ``warn``.
        warn: Says a warning later, on an app thread (the ledger's ``warn_later``: this
            thread does not log, lest it wait for a logging lock an exit holds).
        capacity: Reports kept waiting before merging begins.
    """

    def __init__(
        self,
        callback: Callable[[ErrorReport], object],
        *,
        warn: Callable[[str], None],
        capacity: int = REPORTS_KEPT,
    ) -> None:
        self._callback = callback
        self._warn = warn
        self._capacity = capacity
        self._closed = False  # kept by a forked child: its bridge is shut down too
        self.at_fork_reinit()

    def at_fork_reinit(self) -> None:
        """No thread and nothing waiting, with new locks: when built, and in a forked
        child (the parent tells its callback what it counted; the child starts a thread
        of its own when its dispatch thread starts, or at its first report)."""
        # Reentrant: the SIGTERM handler may drop events (a report) on the main thread
        # while that thread is in here holding the lock.
        lock = threading.RLock()
        self._work = threading.Condition(lock)  # the thread waits here for reports
        self._idle = threading.Condition(lock)  # `wait` waits here for the thread
        self._queue: deque[ErrorReport] = deque()
        self._merged: dict[str, tuple[ErrorReport, int]] = {}  # by kind: sum, reports
        self._busy = False  # the thread holds reports it has not finished handing over
        self._call_began: float | None = None  # when the callback call under way began
        self._thread: threading.Thread | None = None
        self._cannot_start = False
        self._raised = False

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that calls back, while there is one."""
        return self._thread

    def start(self) -> None:
        """Start the thread unless it runs (idempotent). Where no thread can start
        (interpreter exit on Python 3.12+), reports wait and ``wait`` returns at once."""
        with self._work:
            if self._thread is not None or self._cannot_start:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            # Set first: a report made by a signal handler on this very thread, while
            # start() below runs, must not start a second one.
            self._thread = thread
            try:
                thread.start()
            except RuntimeError:
                self._thread = None
                self._cannot_start = True

    def report(self, report: ErrorReport) -> None:
        """Queue ``report`` for the callback; O(1), never waits for the callback.

        An event the callback itself loses (it logs a tagged event that is dropped) is
        counted but not told back to it: that would be told again, for ever.
        """
        thread = self._thread
        if thread is not None and thread is threading.current_thread():
            return
        with self._work:
            if self._thread is None or not self._thread.is_alive():
                self._thread = None
                self.start()  # once, or again after a shutdown let the thread end
            if self._merged or len(self._queue) >= self._capacity:
                # Merged while the callback is behind, and handed over after the queue:
                # reports reach it in the order they were made.
                kind = report.kind
                before = self._merged.get(kind)
                if before is None:
                    self._merged[kind] = (report, 1)
                else:
                    self._merged[kind] = (_merge(before[0], report), before[1] + 1)
            else:
                self._queue.append(report)
            self._work.notify()

    def wait(self, until: float) -> bool:
        """Wait until every report made so far has been handed over and the callback has
        returned, or until ``until`` (``time.monotonic()``) at the latest; and no longer
        than ``_STUCK`` seconds into one callback call (a hung webhook, or a lock the
        interrupted main thread holds at SIGTERM, must not hold every exit).

        Returns:
            True when nothing is left to hand over.
        """
        with self._idle:
            while self._queue or self._merged or self._busy:
                thread = self._thread
                now = time.monotonic()
                began = self._call_began
                left = until - now
                if began is not None:
                    left = min(left, began + _STUCK - now)
                if left <= 0 or thread is None or not thread.is_alive():
                    return False
                if thread is threading.current_thread():
                    return False  # a callback that shuts the bridge down: not for itself
                self._idle.wait(left)
            return True

    def close(self) -> None:
        """The bridge is shut down: let the thread end once it has been idle a while."""
        with self._work:
            self._closed = True
            self._work.notify()

    def _run(self) -> None:
        try:
            self._hand_over()
        finally:
            # However it ends (a callback's SystemExit included), the next report starts
            # a new thread and nobody waits for this one.
            with self._work:
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._thread is None:  # not a new thread's state, started meanwhile
                    self._busy = False
                    self._call_began = None
                self._idle.notify_all()

    def _hand_over(self) -> None:
        while True:
            with self._work:
                while not (self._queue or self._merged):
                    self._busy = False
                    self._idle.notify_all()
                    if not self._closed:
                        self._work.wait()
                    elif not self._work.wait(_LINGER) and not (self._queue or self._merged):
                        self._thread = None  # under the lock: the next report starts another
                        return
                self._busy = True
                taken = list(self._queue)
                self._queue.clear()
                merged, self._merged = self._merged, {}
            taken.extend(_summary(first, count) for first, count in merged.values())
            for report in taken:
                self._call(report)

    def _call(self, report: ErrorReport) -> None:
        self._call_began = time.monotonic()
        try:
            self._callback(report)
        # The app's callback, sys.exit() in it too: ignored, said once.
        except BaseException as exc:  # noqa: BLE001
            if not self._raised:
                self._raised = True
                self._warn(
                    f"on_error raised {type(exc).__name__}; its exceptions are ignored "
                    f"(this is said once)"
                )
        finally:
            self._call_began = None


def _merge(first: ErrorReport, later: ErrorReport) -> ErrorReport:
    """Two reports of one kind as one: totals added, the reason kept if both share it,
    the later message."""
    reason = first.reason if first.reason == later.reason else None
    return ErrorReport(first.kind, first.total + later.total, reason, later.message)


def _summary(merged: ErrorReport, count: int) -> ErrorReport:
    """What the callback is told of ``count`` reports merged into ``merged``."""
    if count == 1:
        return merged
    message = f"{count} reports merged while on_error was behind; the latest: {merged.message}"
    return merged._replace(message=message, name=None)
