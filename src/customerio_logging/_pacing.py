"""When the next request may go: the request-rate limit (this process's, or the fleet's
shared bucket), the 429 pause, and the waits.

Every wait here is interruptible: it ends early once shutdown sets a deadline that comes
sooner, so no sleep outlives ``shutdown_timeout``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from ._redis_client import REDIS_TIMEOUT

__all__ = ["Pacer", "SharedBucket"]

_MIN_WAIT = 1e-4


class SharedBucket(Protocol):
    """A rate limit and a pause shared with other processes (``_fleet_rate.FleetRate``)."""

    def take(self) -> tuple[float, bool] | None:
        """Seconds to wait (0: a token was taken) and whether that is a pause; None
        while the shared bucket cannot be used."""
        ...

    def pause(self, seconds: float) -> None:
        """Pause every process sharing the bucket for ``seconds`` (never shortening)."""
        ...


class Pacer:
    """Paces requests to the Track API; shared by everything one bridge sends.

    Args:
        rate: Requests per second allowed on average (a token bucket).
        burst: Requests allowed back to back after a quiet spell; ``rate`` rounded up
            (at least 1) when None.
        clock: Monotonic seconds; tests inject one.
        sleep: Waits the given seconds, returning early when woken; tests inject one
            that records instead of waiting. The default waits on a condition that
            :meth:`set_deadline` notifies.
        shared: A bucket shared with the rest of the fleet: while it answers, it alone
            says when a request may go (``rate`` and ``burst`` are then its business);
            while it cannot be used, this process's own bucket paces it.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        shared: SharedBucket | None = None,
    ) -> None:
        self._rate = rate
        self._burst = burst if burst is not None else max(1.0, float(int(rate + 0.999)))
        self._clock = clock
        self._sleep = sleep or self._wait
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._tokens = self._burst
        self._refilled = clock()
        self._paused_until = 0.0
        self._deadline: float | None = None
        self._shared = shared

    # -- deadline ---------------------------------------------------------------------

    def set_deadline(self, deadline: float) -> None:
        """From now on no wait lasts past ``deadline`` (monotonic seconds); wakes waiters."""
        with self._wakeup:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._wakeup.notify_all()

    def expired(self) -> bool:
        """True once the deadline has passed: nothing more should be attempted."""
        deadline = self._deadline
        return deadline is not None and self._clock() >= deadline

    def remaining(self, seconds: float) -> float:
        """``seconds`` cut to what is left before the deadline (never negative)."""
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, deadline - self._clock())
        return max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the deadline comes first."""
        seconds = self.remaining(seconds)
        if seconds > 0:
            self._sleep(seconds)

    def _wait(self, seconds: float) -> None:
        end = self._clock() + seconds
        with self._wakeup:
            while True:
                left = end - self._clock()
                if self._deadline is not None:
                    left = min(left, self._deadline - self._clock())
                if left <= 0:
                    return
                self._wakeup.wait(left)

    # -- rate and pause ---------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's Retry-After): the whole pipeline,
        and the whole fleet's when the bucket is shared."""
        self._pause_here(seconds)
        shared = self._shared_in_time()
        if shared is not None:
            shared.pause(seconds)

    def _shared_in_time(self) -> SharedBucket | None:
        """The shared bucket, unless the deadline comes sooner than a call to it may take
        (``REDIS_TIMEOUT``): then this process's own bucket and pause do."""
        shared = self._shared
        if shared is None or self.remaining(REDIS_TIMEOUT) < REDIS_TIMEOUT:
            return None
        return shared

    def _pause_here(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def acquire(self) -> bool:
        """Wait until a request may go; False if the deadline passed first."""
        while True:
            with self._lock:
                now = self._clock()
                if self._deadline is not None and now >= self._deadline:
                    return False
                wait = self._paused_until - now
            if wait <= 0:
                shared = self._shared_in_time()
                turn = None if shared is None else shared.take()
                if turn is None:
                    wait = self._take_here()
                else:
                    wait, paused = turn
                    if paused:
                        # Kept here too: should the shared bucket fail meanwhile, this
                        # process still waits the fleet's pause out.
                        self._pause_here(wait)
                if wait <= 0:
                    return True
            # Never a vanishing wait: a spin of ever tinier sleeps helps no one.
            self.sleep(max(_MIN_WAIT, wait))

    def _take_here(self) -> float:
        """Take a token from this process's bucket: 0, or the seconds until one is there."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            # The epsilon: refills add up in floating point (10 x 0.1 is 0.999...).
            if self._tokens >= 1 - 1e-9:
                self._tokens = max(0.0, self._tokens - 1)
                return 0.0
            return (1 - self._tokens) / self._rate
