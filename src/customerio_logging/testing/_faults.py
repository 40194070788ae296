"""FaultPlan: how the emulator misbehaves on purpose, and which fault each request gets.

A plan scripts statuses, fails, drops, rate-limits, slows and trickles requests,
reproducibly from a seed; ``ActivePlan`` decides, request by request, what the server does.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from .._reasons import REQUEST_TOO_LARGE
from .._wire import status_phrase
from ._validation import Problem

__all__ = [
    "ActivePlan",
    "Decision",
    "FaultPlan",
    "RejectOps",
    "fault_error",
    "refusal",
    "retry_after_headers",
]

_DROPS: Final = ("drop", "drop_after_accept")
# The statuses a client is told to come back later with; they carry Retry-After.
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
# The reason in the body of an injected status: it names the HTTP status, not a rule an
# operation broke, so the library never reads it as a reason code (it records http_<status>);
# only 413 means what the shared code says.
_STATUS_REASONS: Final = {
    408: "request_timeout",
    413: REQUEST_TOO_LARGE,
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
# Rates are probabilities of one draw: their sum may exceed 1 by rounding only.
_RATE_SUM_TOLERANCE: Final = 1e-9

RejectOps = Callable[[dict[str, Any]], str | None]
"""``FaultPlan.reject_ops``: a refusal's reason for an operation, or None to accept it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """Faults for ``TrackAPIEmulator`` to inject, reproducibly: every field defaults to none.

    Faults apply to ``POST /api/v2/batch``, the v1 ``track``/``identify`` endpoints and the
    App API's ``/v1/send/email`` and ``/v1/send/push`` (``max_request_bytes`` and
    ``reject_ops`` excepted there), never to ``GET /api/v1/accounts/region``, and come
    before authentication, as at a load balancer. For each request, in arrival order, the
    emulator takes the first of:

    1. the next ``script`` entry, while any is left;
    2. a 429 when the request is over ``rate_limit``;
    3. one draw of the plan's ``random.Random(seed)``: a status from ``failure_statuses``
       with probability ``failure_rate``, else ``"drop"`` with probability ``drop_rate``,
       else ``"drop_after_accept"`` with probability ``drop_after_accept_rate``;
    4. normal processing, with ``max_request_bytes`` and ``reject_ops`` in force.

    Every request not scripted draws from the generator, even one rate-limited, so the same
    seed and the same request order give the same faults whatever the timing. Whatever the
    answer, it leaves ``delay`` seconds late, and ``trickle`` slows it down to one byte at a
    time. ``RecordedRequest.fault`` names what happened.

    Example::

        plan = FaultPlan(seed=1, failure_rate=0.3, drop_rate=0.05, rate_limit=20)
        with TrackAPIEmulator(faults=plan) as emu:
            ...  # run the app against emu.url
            ids = emu.accepted_ids()
            assert set(ids) == set(sent_ids)  # every event arrived

    Attributes:
        seed: Seeds the plan's random generator.
        script: Answers for the next requests, one per request, before anything else: an
            error status (400-599), ``"drop"`` (close the connection without answering;
            nothing is processed) or ``"drop_after_accept"`` (process the request, so its
            valid operations are accepted, then close without answering: the case that makes
            a client resend what the server already has).
        failure_rate: The fraction of requests answered with a status from
            ``failure_statuses``, drawn uniformly.
        failure_statuses: The error statuses (400-599) ``failure_rate`` draws from.
        drop_rate: The fraction of requests dropped unprocessed, as ``"drop"``.
        drop_after_accept_rate: The fraction dropped after processing, as
            ``"drop_after_accept"``.
        rate_limit: Requests per second allowed (a token bucket: a burst of up to
            ``max(1, rate_limit)``, then ``rate_limit`` per second); requests over it get
            429. Requests answered from the script take no token.
        retry_after: The ``Retry-After`` of every 429 and 503: seconds (int or float) or a
            string sent verbatim, e.g. an HTTP date from
            ``email.utils.format_datetime(when, usegmt=True)``.
        delay: Seconds every answer (or drop) is held back. The request is processed first,
            so a client that times out meanwhile has still delivered its operations, as with
            a slow real server. ``stop()`` cuts the wait short and closes the connection.
        trickle: Seconds before each byte of every answer: the status line, the headers and
            the body leave one byte at a time, as from a server (or a proxy) that stalls a
            client whose timeout bounds each read rather than the whole request. The request
            is processed first, as with ``delay``. ``stop()`` cuts it short.
        max_request_bytes: A 413 threshold on the body, below the API's 500,000 bytes.
        reject_ops: Called with each operation that passed validation; a returned string
            refuses that operation with the string as its reason (field ``"operation"``): in
            a 207 from the batch endpoint, a 400 from a v1 endpoint. It runs on a handler
            thread and must not block.

    Raises:
        ValueError: If a field is out of range; the message says which and what is allowed.
    """

    seed: int = 0
    script: tuple[int | Literal["drop", "drop_after_accept"], ...] = ()
    failure_rate: float = 0.0
    failure_statuses: tuple[int, ...] = (500, 503)
    drop_rate: float = 0.0
    drop_after_accept_rate: float = 0.0
    rate_limit: float | None = None
    retry_after: float | str = 1
    delay: float = 0.0
    trickle: float = 0.0
    max_request_bytes: int | None = None
    reject_ops: RejectOps | None = None

    def __post_init__(self) -> None:
        # A list is as good as a tuple to a caller; keep the plan immutable and hashable.
        object.__setattr__(self, "script", tuple(self.script))
        object.__setattr__(self, "failure_statuses", tuple(self.failure_statuses))
        for step in self.script:
            if step not in _DROPS and not _is_error_status(step):
                raise ValueError(
                    f"script entries must be an error status (400-599), 'drop' or "
                    f"'drop_after_accept', not {step!r}"
                )
        for status in self.failure_statuses:
            if not _is_error_status(status):
                raise ValueError(f"failure_statuses must be statuses 400-599, not {status!r}")
        rates = {
            "failure_rate": self.failure_rate,
            "drop_rate": self.drop_rate,
            "drop_after_accept_rate": self.drop_after_accept_rate,
        }
        for name, rate in rates.items():
            if not _is_number(rate) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if sum(rates.values()) > 1.0 + _RATE_SUM_TOLERANCE:
            raise ValueError(
                "failure_rate + drop_rate + drop_after_accept_rate must be at most 1 "
                f"(each request gets one fault at most), not {sum(rates.values())!r}"
            )
        if self.failure_rate > 0 and not self.failure_statuses:
            raise ValueError("failure_statuses must not be empty when failure_rate > 0")
        if self.rate_limit is not None and not (
            _is_number(self.rate_limit) and 0 < self.rate_limit < math.inf
        ):
            raise ValueError(
                f"rate_limit must be a positive number of requests per second or None, "
                f"not {self.rate_limit!r}"
            )
        if isinstance(self.retry_after, str):
            if not self.retry_after.strip() or any(c in self.retry_after for c in "\r\n"):
                raise ValueError(
                    f"retry_after must be seconds or a one-line HTTP date, not {self.retry_after!r}"
                )
        elif not (_is_number(self.retry_after) and 0 <= self.retry_after < math.inf):
            raise ValueError(
                f"retry_after must be seconds >= 0 or an HTTP-date string, not {self.retry_after!r}"
            )
        if not (_is_number(self.delay) and 0 <= self.delay < math.inf):
            raise ValueError(f"delay must be seconds >= 0, not {self.delay!r}")
        if not (_is_number(self.trickle) and 0 <= self.trickle < math.inf):
            raise ValueError(f"trickle must be seconds >= 0, not {self.trickle!r}")
        if self.max_request_bytes is not None and not (
            isinstance(self.max_request_bytes, int)
            and not isinstance(self.max_request_bytes, bool)
            and self.max_request_bytes > 0
        ):
            raise ValueError(
                f"max_request_bytes must be a positive int or None, not {self.max_request_bytes!r}"
            )
        if self.reject_ops is not None and not callable(self.reject_ops):
            raise ValueError(f"reject_ops must be a callable or None, not {self.reject_ops!r}")


def _is_number(value: object) -> bool:
    # bool is an int subclass, and True must not pass for 1 second or a 100% rate.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_error_status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599


@dataclass(frozen=True, slots=True)
class Decision:
    """What the plan in force decided for one request, on its arrival."""

    fault: str | None = None
    # Answer this status instead of processing.
    status: int | None = None
    drop: Literal["drop", "drop_after_accept"] | None = None


_NO_DECISION: Final = Decision()


class _TokenBucket:
    """Requests per second with a burst of ``max(1, rate)``; not thread-safe on its own."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ActivePlan:
    """One plan in force: its random generator, its place in the script, its token bucket."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan: Final = plan
        self._lock = threading.Lock()
        self._random = random.Random(plan.seed)
        self._next_step = 0
        self._bucket = _TokenBucket(plan.rate_limit) if plan.rate_limit is not None else None

    @property
    def slowed(self) -> str | None:
        """The fault that names a normal answer sent slowly: ``"trickle"``, ``"delay"`` or None."""
        return "trickle" if self.plan.trickle else "delay" if self.plan.delay else None

    def decide(self) -> Decision:
        """The fault of the request that just arrived: the script, the rate limit, one draw."""
        plan = self.plan
        with self._lock:
            if self._next_step < len(plan.script):
                step = plan.script[self._next_step]
                self._next_step += 1
                if step == "drop" or step == "drop_after_accept":
                    return Decision(fault=step, drop=step)
                return Decision(fault="script", status=step)
            # Drawn before the rate limit is checked, so timing cannot shift the sequence.
            draw = self._random.random()
            status = self._random.choice(plan.failure_statuses) if plan.failure_statuses else 0
            limited = self._bucket is not None and not self._bucket.take()
        if limited:
            return Decision(fault="rate_limit", status=429)
        if draw < plan.failure_rate:
            return Decision(fault="failure_rate", status=status)
        draw -= plan.failure_rate
        if draw < plan.drop_rate:
            return Decision(fault="drop", drop="drop")
        draw -= plan.drop_rate
        if draw < plan.drop_after_accept_rate:
            return Decision(fault="drop_after_accept", drop="drop_after_accept")
        return _NO_DECISION


def fault_error(status: int) -> dict[str, Any]:
    """The error object of an injected status: its reason, and a message that says so."""
    status_line = f"{status} {status_phrase(status)}".rstrip()
    return {
        "reason": _STATUS_REASONS.get(status, f"http_{status}"),
        "message": f"{status_line}: injected by the emulator's fault plan",
    }


def retry_after_headers(status: int, retry_after: float | str) -> dict[str, str]:
    """The ``Retry-After`` header an injected status carries, if any."""
    if status not in _RETRY_AFTER_STATUSES:
        return {}
    if isinstance(retry_after, str):
        return {"Retry-After": retry_after}
    # Whole seconds as the RFC writes them ("1", not "1.0"); a fraction as given, for
    # clients (and tests) that accept one.
    if float(retry_after).is_integer():
        return {"Retry-After": str(int(retry_after))}
    return {"Retry-After": repr(float(retry_after))}


def refusal(reject_ops: RejectOps, op: dict[str, Any]) -> Problem | None:
    """``reject_ops``'s verdict on a valid operation, as the problem to answer with."""
    reason = reject_ops(op)
    if reason is None:
        return None
    return Problem(reason, "operation", f"operation refused by the fault plan: {reason}")
