"""The spill buffer: events the full queue did not take, held in memory for a moment and
written to the spool in groups, one transaction each, by a thread of their own."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._markers import Flush, Stop

__all__ = ["SPILL_CAPACITY", "SPILL_GROUP", "THREAD_NAME", "SpillBuffer"]

T = TypeVar("T")

THREAD_NAME = "customerio-spill"
SPILL_CAPACITY = 4096
"""Most events the spill buffer holds; beyond it a log call writes its event itself."""
SPILL_GROUP = 1000
"""Most events written in one transaction."""
_IDLE_EVERY = 1.0  # seconds between the writer's idle rounds (a busy spool's leftovers)


class SpillBuffer(Generic[T]):
    """Events a log call hands over to be spooled, and the thread that writes them.

    :meth:`put` is O(1) on the app's thread: a length check, a deque append, and, only
    when the writer sleeps, a wake-up through a ``queue.SimpleQueue`` (whose ``put`` is
    reentrant: a signal handler's log call may run in the middle of its thread's own).
    The writer thread, started by the first put (never at import, and never once the
    interpreter is exiting: the exit hook writes on its own thread), takes what waits in
    groups of up to ``SPILL_GROUP`` and has ``write`` spool each group in one
    transaction. While the buffer is full or stopped, or no writer can run, ``put``
    refuses: the caller writes its event itself, as if there were no buffer.

    An event here is in memory, like one in the queue: a killed process loses it.
    :meth:`flush` and :meth:`stop` (flush, shutdown, ``flush_or_spool``, SIGTERM) have
    what is here written within their deadline; a forked child drops its copy (the
    parent writes it).

    Args:
        write: Spools a group and settles each of its events (counted, receipts
            resolved), waiting at most the given seconds for the spool (None: its
            ordinary waits). Never raises.
        idle: Done when nothing was put for a while (a busy spool's deferred writes).
        wait: Most seconds the writer thread waits for a busy spool per group.
    """

    def __init__(
        self,
        write: Callable[[list[T], float | None], None],
        *,
        idle: Callable[[], None],
        wait: float,
    ) -> None:
        self._write = write
        self._idle = idle
        self._wait = wait
        self._stopped = False
        self.at_fork_reinit()

    def at_fork_reinit(self) -> None:
        """Empty, with no thread, and new locks: in a forked child (whose copy of the
        buffer the parent writes) and when built. A stopped buffer stays stopped."""
        self._items: deque[T | Flush | Stop] = deque()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._sleeping = False  # the writer waits on _wake (a put then wakes it)
        self._thread: threading.Thread | None = None
        # Reentrant: a log call from a signal handler may come while the interrupted
        # code on the same thread is starting the thread (it then finds it, see _start).
        self._start_lock = threading.RLock()
        # Taking from the buffer, by the writer or a flush or stop on another thread,
        # and counting what was taken: one taker at a time. Each count is raised before
        # its item leaves the deque, so `depth` may count an event twice for a moment,
        # never miss one. Reentrant: SIGTERM's shutdown may interrupt a flush's write.
        self._take_lock = threading.RLock()
        self._in_hand = 0  # taken, not yet settled
        self._markers = 0  # flush and stop markers in the deque

    @property
    def depth(self) -> int:
        """Events held: waiting, or taken and not yet settled."""
        return max(0, len(self._items) - self._markers) + self._in_hand

    def put(self, item: T) -> bool:
        """Hand ``item`` over to the writer; O(1). False when the caller must write it
        itself: the buffer is full or stopped, or no writer thread can run now."""
        items = self._items
        if self._stopped or len(items) >= SPILL_CAPACITY:
            return False
        if self._thread is None and not self._start():
            return False
        items.append(item)
        if self._sleeping:
            self._wake.put(None)
        if self._stopped:
            # Stopped meanwhile: the stop's own write may have missed this one.
            self.write_now(None)
        return True

    def _start(self) -> bool:
        """Start the writer thread; False when none may start now."""
        with self._start_lock:
            if self._thread is None:
                # The main thread is over: the interpreter is exiting (atexit hooks run,
                # or other threads are being joined). No new thread then: the exit hook
                # could not count on it, and from Python 3.12 none can start.
                if not threading.main_thread().is_alive():
                    return False
                thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                # Known before it starts: a signal handler's put in the middle of start()
                # hands its event to this thread instead of starting a second writer.
                self._thread = thread
                try:
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    # What such a put left here is written by the next flush or stop.
                    self._thread = None
                    return False
        return True

    def flush(self, timeout: float) -> bool:
        """Have everything put so far written; True when that finished within ``timeout``.

        Waits for the writer thread; writes on this thread when there is none, or when
        this is it (a receipt's callback).
        """
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return self.write_now(timeout)
        if self.depth == 0:
            return True
        marker = Flush()
        self._put_marker(marker)
        return marker.done.wait(max(0.0, timeout))

    def stop(self, wait: float) -> None:
        """Refuse every later put (it writes its own event), tell the writer thread to
        end, and write what waits on this thread, within ``wait`` seconds. The group
        the writer may hold is its own to finish: see :meth:`join`."""
        self._stopped = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._put_marker(Stop())
        self.write_now(wait)

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the writer thread to end (after
        :meth:`stop`): True when it has, or never ran; False while it still holds a
        group (a stalled disk), or when this is it."""
        thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False
        if thread.is_alive():  # not before it started (see _start): join() would raise
            thread.join(timeout)
        return not thread.is_alive()

    def write_now(self, wait: float | None) -> bool:
        """Write everything waiting here on this thread, within ``wait`` seconds (None:
        the spool's ordinary waits); True when no other thread holds an event."""
        end = None if wait is None else time.monotonic() + wait
        while self._items:
            self._write_next(None if end is None else max(0.0, end - time.monotonic()))
        return self._in_hand == 0

    def _put_marker(self, marker: Flush | Stop) -> None:
        with self._take_lock:
            self._items.append(marker)
            self._markers += 1
        if self._sleeping:
            self._wake.put(None)

    def _take(self) -> tuple[list[T], Flush | Stop | None]:
        """The next group, up to the first marker (taken too) or ``SPILL_GROUP`` events."""
        items = self._items
        group: list[T] = []
        with self._take_lock:
            while items and len(group) < SPILL_GROUP:
                head = items[0]
                if isinstance(head, Flush | Stop):
                    self._markers -= 1
                    items.popleft()
                    return group, head
                self._in_hand += 1
                items.popleft()
                group.append(head)
        return group, None

    def _write_next(self, wait: float | None) -> bool:
        """Write the next group; False when it ended at a stop marker."""
        group, marker = self._take()
        if group:
            try:
                self._write(group, wait)
            except Exception:  # noqa: BLE001, S110 - `write` accounts for its group; go on
                pass
            finally:
                with self._take_lock:
                    self._in_hand -= len(group)
        if isinstance(marker, Flush):
            marker.done.set()
        return not isinstance(marker, Stop)

    def _run(self) -> None:
        items = self._items
        while True:
            if self._stopped and not items:
                return  # its stop marker was taken by a write on another thread
            if not items and not self._sleep():
                with contextlib.suppress(Exception):  # `idle` accounts for its work
                    self._idle()
                continue
            if items and not self._write_next(self._wait):
                return

    def _sleep(self) -> bool:
        """Wait for a put; False when none came for ``_IDLE_EVERY`` seconds."""
        self._sleeping = True
        try:
            if self._items:  # put after the look above, without waking it: seen here
                return True
            try:
                self._wake.get(timeout=_IDLE_EVERY)
            except queue.Empty:
                return False
        finally:
            self._sleeping = False
        with contextlib.suppress(queue.Empty):  # wake-ups from every put meanwhile
            while True:
                self._wake.get_nowait()
        return True
