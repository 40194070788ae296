"""The background thread: a bounded queue, batching by count, bytes and time, flush and stop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._limits import BATCH_BODY_BYTES
from ._markers import Flush, Stop
from ._wire import BODY_OVERHEAD, Operation

__all__ = ["THREAD_NAME", "Dispatcher"]

THREAD_NAME = "customerio-dispatch"
IDLE_START_DELAY = 1.0
"""Seconds after the thread starts before the first idle round (replay)."""
_RESERVE_CHECK = 0.05  # seconds between looks at the queue while stopping with a reserve

T = TypeVar("T")


class _Wake:
    """What the thread sleeps on: ``threading.Event``'s interface on a reentrant lock.

    The SIGTERM handler flushes on the main thread between two bytecodes, possibly in
    the middle of that thread's own ``set()`` (a ``submit`` filling a batch). An
    Event's plain lock would then be taken twice by one thread: a deadlock.
    """

    __slots__ = ("_cond", "_flag")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def wait(self, timeout: float) -> bool:
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag


_STOP = Stop()


class Dispatcher(Generic[T]):
    """Owns the queue and the one thread that turns queued items into sent batches.

    ``submit`` runs on the app's threads and is O(1): a length check and a deque append,
    and a wake-up only once a full batch is waiting. The check and the append are each
    atomic under the GIL but not together, so the queue may pass ``max_queue_size`` by
    at most the number of threads submitting at that instant. All other work happens on
    the thread.

    Args:
        process: Turns a queued item into an operation, or None when it was rejected
            (the callee accounts for it). Runs on the thread.
        send: Delivers one batch and accounts for its outcome. Runs on the thread.
        batch_size: Most operations per batch.
        flush_interval: Seconds between sends of a partial batch.
        max_queue_size: Most items waiting; ``submit`` refuses beyond it.
        body_limit: Most bytes in one batch body.
        idle: Background work done only while the queue is empty (the spool's replay):
            one round per call, returning the seconds until it wants the next. Fresh
            events always go first.
        on_start: Done first thing on the thread (the spool opened, off the app's
            threads).
        clock: Monotonic seconds; tests inject one.
    """

    def __init__(
        self,
        *,
        process: Callable[[T], Operation | None],
        send: Callable[[list[Operation]], None],
        batch_size: int,
        flush_interval: float,
        max_queue_size: int,
        body_limit: int = BATCH_BODY_BYTES,
        idle: Callable[[], float] | None = None,
        on_start: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._process = process
        self._send = send
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue_size = max_queue_size
        self._body_limit = body_limit
        self._clock = clock
        self._idle = idle
        self._on_start = on_start
        self._closed = False
        self.at_fork_reinit()

    def at_fork_reinit(self) -> None:
        """Empty, with no thread, and new locks: in a forked child (whose copy of the queue
        the parent sends) and when built. A stopped dispatcher stays stopped."""
        self._next_idle = 0.0  # when idle work is next due (set when the thread starts)
        self._queue: deque[T | Flush | Stop] = deque()
        self._wake = _Wake()
        self._ended = False  # the thread has left its loop for good
        self._thread: threading.Thread | None = None
        # Reentrant: a tagged call from a signal handler may start the thread while the
        # interrupted code on the same thread is starting it.
        self._start_lock = threading.RLock()
        self._batch: list[Operation] = []
        self._batch_bytes = BODY_OVERHEAD
        self._busy = 0
        # Flush and stop markers in the queue, counted so that `queued` is O(1). Changed
        # under a lock: flushes come from any thread, and they are rare. Reentrant: the
        # SIGTERM handler may flush while the main thread is in here.
        self._markers = 0
        self._markers_lock = threading.RLock()
        self.taken = 0
        """Items the thread has taken off the queue (read by the bridge's counters)."""

    @property
    def queued(self) -> int:
        """Items in the queue, not yet taken by the thread."""
        return max(0, len(self._queue) - self._markers)

    @property
    def depth(self) -> int:
        """Items waiting: queued, or taken and in a batch not yet settled."""
        return self.queued + len(self._batch) + self._busy

    @property
    def full(self) -> bool:
        """True when ``submit`` would refuse an item now (queue full, or stopped)."""
        return self._closed or len(self._queue) >= self._max_queue_size

    @property
    def thread(self) -> threading.Thread | None:
        """The dispatch thread, once started."""
        return self._thread

    @property
    def closed(self) -> bool:
        """True once ``stop`` has been called: ``submit`` refuses everything."""
        return self._closed

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._start_lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                thread.start()
                self._thread = thread

    def submit(self, item: T) -> bool:
        """Queue ``item``; False when the queue is full or stopped (the item is not kept)."""
        queue = self._queue
        if self._closed or len(queue) >= self._max_queue_size:
            return False
        queue.append(item)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def flush(self, timeout: float) -> bool:
        """Send everything queued before this call; True if that finished within ``timeout``.

        Returns at once after ``stop``: the deadline for the exit was spent there.
        """
        thread = self._thread
        if self._closed or thread is None or not thread.is_alive():
            return self.depth == 0
        if thread is threading.current_thread():
            return False  # the thread cannot wait for itself
        marker = Flush()
        self._put_marker(marker)
        self._wake.set()
        if self._ended:  # after the check above: see _end
            marker.done.set()
        done = marker.done.wait(max(0.0, timeout))
        return done and (not self._ended or self.depth == 0)

    def request_flush(self) -> None:
        """Have the thread send its partial batch now; returns without waiting."""
        if not self._closed:
            self._put_marker(Flush())
            self._wake.set()

    def schedule_idle(self, delay: float) -> None:
        """Have the idle work run again after ``delay`` seconds (from any thread)."""
        self._next_idle = self._clock() + delay
        if delay <= 0:
            self._wake.set()

    def stop(self, timeout: float, *, reserve: Callable[[int], float] | None = None) -> list[T]:
        """Flush, then stop the thread, all within ``timeout`` seconds.

        Args:
            timeout: Seconds to spend sending at most.
            reserve: Given the number of items still queued, the seconds the caller
                needs afterwards to keep them (the bridge writes them to its spool):
                sending stops that much before ``timeout`` runs out.

        Returns:
            The items still queued when sending stopped (not sent). The thread, told to
            stop, may still be finishing its current batch: the caller sees to that.
        """
        deadline = self._clock() + max(0.0, timeout)
        thread = self._thread
        alive = thread is not None and thread.is_alive()
        if alive and thread is not threading.current_thread():
            marker = Flush()
            self._put_marker(marker)
            self._wake.set()
            _wait_until(marker.done.wait, marker.done.is_set, deadline, reserve, self)
        self._closed = True
        if thread is not None and thread.is_alive():
            # What was logged during the flush is sent too, while time remains.
            self._put_marker(_STOP)
            self._wake.set()
            if thread is not threading.current_thread():
                _wait_until(thread.join, lambda: not thread.is_alive(), deadline, reserve, self)
        left = self._drain()
        if thread is not None and thread.is_alive():
            # Still at work past the deadline: the drain above took its stop marker too.
            # Give it one back, so it ends after its current batch instead of living on.
            self._put_marker(_STOP)
            self._wake.set()
        return left

    def _drain(self) -> list[T]:
        """Take everything still queued; markers are dropped (flushes told they are done)."""
        left: list[T] = []
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                return left
            if isinstance(item, Flush | Stop):
                self._took_marker()
                if isinstance(item, Flush):
                    item.done.set()
            else:
                left.append(item)

    def _put_marker(self, marker: Flush | Stop) -> None:
        with self._markers_lock:
            self._markers += 1
            self._queue.append(marker)

    def _took_marker(self) -> None:
        with self._markers_lock:
            self._markers -= 1

    def _run(self) -> None:
        if self._on_start is not None:
            with contextlib.suppress(Exception):  # on_start accounts for itself
                self._on_start()
        queue = self._queue
        next_tick = self._clock() + self._flush_interval
        # Idle work starts a moment after the thread: not while the app is still booting
        # (and maybe about to fork: a thread busy in C code at a fork from C is unsafe).
        self._next_idle = max(self._next_idle, self._clock() + IDLE_START_DELAY)
        while True:
            if not queue:
                idle = self._idle is not None and not self._closed
                if idle and self._clock() >= self._next_idle:
                    # One round only: fresh events that come meanwhile go first.
                    self._run_idle()
                else:
                    wake_at = min(next_tick, self._next_idle) if idle else next_tick
                    self._wake.wait(max(0.0, wake_at - self._clock()))
            # Clear before draining: a submit after this point sets it again.
            self._wake.clear()
            while queue:
                try:
                    item = queue.popleft()
                except IndexError:  # stop() drained it meanwhile
                    break
                kind = type(item)
                if kind is Flush:
                    self._took_marker()
                    self._send_batch()
                    item.done.set()  # type: ignore[union-attr]
                elif kind is Stop:
                    self._took_marker()
                    self._send_batch()
                    self._end()
                    return
                else:
                    self._add(item)  # type: ignore[arg-type]
            now = self._clock()
            if now >= next_tick:
                self._send_batch()
                next_tick = now + self._flush_interval

    def _end(self) -> None:
        """The thread ends: a flush that raced stop() must not wait for it in vain."""
        self._ended = True
        for item in list(self._queue):
            if isinstance(item, Flush):
                item.done.set()

    def _run_idle(self) -> None:
        assert self._idle is not None
        try:
            delay = self._idle()
        except Exception:  # noqa: BLE001 - `idle` accounts for its work; the thread lives on
            delay = 60.0
        self._next_idle = self._clock() + delay

    def _add(self, item: T) -> None:
        # Once per event: kept lean, it runs while the app's threads wait for the GIL.
        self.taken += 1
        self._busy = 1
        try:
            op = self._process(item)
        except Exception:  # noqa: BLE001 - `process` accounts for its items; the thread lives on
            op = None
        self._busy = 0
        if op is None:
            return
        batch = self._batch
        size = len(op.body)
        if batch:
            size += 1  # the comma
            if self._batch_bytes + size > self._body_limit:
                self._send_batch()
                batch = self._batch
                size -= 1
        batch.append(op)
        self._batch_bytes += size
        if len(batch) >= self._batch_size:
            self._send_batch()

    def _send_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        try:
            self._send(batch)
        except Exception:  # noqa: BLE001, S110 - `send` accounts for its batch; the thread lives on
            pass
        finally:
            self._batch = []
            self._batch_bytes = BODY_OVERHEAD


def _wait_until(
    wait: Callable[[float], object],
    done: Callable[[], bool],
    deadline: float,
    reserve: Callable[[int], float] | None,
    dispatcher: Dispatcher[Any],
) -> None:
    """``wait`` until ``done``, or until ``reserve(queued)`` seconds before ``deadline``."""
    clock = dispatcher._clock
    if reserve is None:
        wait(max(0.0, deadline - clock()))
        return
    while not done():
        left = deadline - clock() - reserve(dispatcher.queued)
        if left <= 0:
            return
        # The reserve shrinks as the thread empties the queue: look again shortly.
        wait(min(left, _RESERVE_CHECK))
