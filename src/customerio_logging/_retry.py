"""Which failed sends are tried again, and how long to wait first (tenacity)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import tenacity

from .exceptions import DeliveryError

if TYPE_CHECKING:
    from ._config import Settings
    from ._pacing import Pacer
    from ._wire import Response

__all__ = ["RetryPolicy", "is_retryable", "retry_after"]


def is_retryable(status: int) -> bool:
    """408, 429 and 5xx but 501 (not implemented) and 505 (HTTP version): worth a retry."""
    return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))


def retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class RetryPolicy:
    """Runs one send, and again after transient failures, within a budget.

    Retried: network errors (``DeliveryError`` without a status) and the statuses
    :func:`is_retryable` names. Waits grow exponentially from ``base_delay`` up to
    ``max_delay``, with jitter (half fixed, half random), unless the answer carried
    ``Retry-After`` (429, 503): then that, capped at ``max_retry_after``, and a 429
    pauses the whole pipeline through the pacer. Retrying stops after ``max_retries``
    retries, once ``budget`` seconds would be exceeded, or when the pacer's shutdown
    deadline has passed. Every wait goes through the pacer, so it ends at that deadline.

    ``retry_status`` and ``retry_error`` narrow what is retried: a call that is not
    idempotent (a transactional send) retries only what cannot have been acted on.
    """

    def __init__(
        self,
        *,
        pacer: Pacer,
        max_retries: int,
        base_delay: float,
        max_delay: float,
        budget: float,
        max_retry_after: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        retry_status: Callable[[int], bool] = is_retryable,
        retry_error: Callable[[DeliveryError], bool] = lambda error: True,
    ) -> None:
        self._pacer = pacer
        self._max_retries = max_retries
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._budget = budget
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._retry_status = retry_status
        self._retry_error = retry_error

    @classmethod
    def from_settings(cls, settings: Settings, *, pacer: Pacer) -> RetryPolicy:
        """The policy the settings' ``max_retries`` and ``retry_*`` options describe."""
        return cls(
            pacer=pacer,
            max_retries=settings.max_retries,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            budget=settings.retry_budget,
            max_retry_after=settings.max_retry_after,
        )

    def run(self, attempt: Callable[[], Response]) -> tuple[Response, int]:
        """Call ``attempt`` until it succeeds or retrying stops.

        Returns:
            The last response (whatever its status) and how many retries were made.

        Raises:
            DeliveryError: The last attempt got no response at all.
        """
        started = self._clock()
        # The first attempt outside tenacity: most succeed, and building its machinery
        # costs more than the rest of a batch's bookkeeping. One to retry is handed over
        # as tenacity's own first attempt, so every rule below sees it as before.
        first: Response | DeliveryError
        try:
            first = attempt()
        except DeliveryError as error:
            if not self._retry_error(error):
                raise
            first = error
        else:
            if not self._retry_status(first.status):
                return first, 0
        return self._retry(attempt, first, started)

    def _retry(
        self, attempt: Callable[[], Response], first: Response | DeliveryError, started: float
    ) -> tuple[Response, int]:
        """Tenacity's loop after a ``first`` outcome worth retrying, replayed as its own
        first attempt; see :meth:`run`."""
        outcomes = [first]

        def again() -> Response:
            if not outcomes:
                return attempt()
            outcome = outcomes.pop()
            if isinstance(outcome, DeliveryError):
                raise outcome
            return outcome

        retries = 0
        asked = False  # whether the upcoming wait is the server's (Retry-After)

        def count(state: tenacity.RetryCallState) -> None:
            nonlocal retries
            retries += 1

        def wait(state: tenacity.RetryCallState) -> float:
            nonlocal asked
            seconds, asked = self._wait(state)
            return seconds

        def stop(state: tenacity.RetryCallState) -> bool:
            spent = self._clock() - started
            if not asked:
                # Our own backoff must fit the budget; a wait the server asked for (capped
                # at max_retry_after) is honoured even past it, or a 429 near the end of
                # the budget would throw the batch away.
                spent += state.upcoming_sleep
            return (
                state.attempt_number > self._max_retries
                or spent > self._budget
                or self._pacer.expired()
            )

        retrying = tenacity.Retrying(
            retry=(
                tenacity.retry_if_exception(
                    lambda error: isinstance(error, DeliveryError) and self._retry_error(error)
                )
                | tenacity.retry_if_result(lambda response: self._retry_status(response.status))
            ),
            wait=wait,
            stop=stop,
            sleep=self._pacer.sleep,
            before_sleep=count,
            # When retrying stops, hand back the last outcome instead of tenacity's
            # RetryError: its response, or its DeliveryError raised again.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        response = retrying(again)
        return response, retries

    def _wait(self, state: tenacity.RetryCallState) -> tuple[float, bool]:
        """Seconds to wait before the next attempt, and whether the server asked for them."""
        ceiling = min(self._max_delay, self._base_delay * 2.0 ** (state.attempt_number - 1))
        backoff: float = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        outcome = state.outcome
        response = None if outcome is None or outcome.failed else outcome.result()
        if response is not None and response.status in (429, 503):
            asked = retry_after(response.headers)
            if asked is not None:
                # A minimum, never less than our own backoff: "Retry-After: 0" or a date
                # in the past must not turn retries into a tight loop.
                seconds = max(backoff, min(asked, self._max_retry_after))
                if response.status == 429:
                    self._pacer.pause(seconds)
                return seconds, True
        return backoff, False
