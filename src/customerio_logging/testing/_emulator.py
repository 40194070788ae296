"""TrackAPIEmulator: a local server that answers like Customer.io's Track API and records it all.

It can also misbehave on purpose: a ``FaultPlan`` scripts statuses, fails, drops, rate-limits,
slows and trickles requests, reproducibly from a seed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import random
import re
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal, Self, cast
from urllib.parse import unquote, urlsplit

from customerio_logging._limits import (
    DEVICE_PLATFORMS,
    IDENTIFIER_KEYS,
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_EVENT_DATA_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_IDENTIFY_ATTRIBUTES,
    MAX_NAME_BYTES,
    MAX_OPERATION_BYTES,
    MAX_REQUEST_BYTES,
    NAMED_ACTIONS,
    PERSON_ACTIONS,
)

__all__ = ["FaultPlan", "RecordedRequest", "TrackAPIEmulator"]

_THREAD_NAME: Final = "customerio-emulator"
# Crockford base32, 26 characters; a leading digit above 7 would overflow 128 bits.
_ULID_RE: Final = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
_V1_CUSTOMER_RE: Final = re.compile(r"/api/v1/customers/(?P<id>[^/]+)(?P<events>/events)?")
# A body declared larger than this is not drained: the connection is closed instead, so a
# client announcing gigabytes cannot keep a handler thread reading.
_MAX_DRAIN_BYTES: Final = 16 * MAX_REQUEST_BYTES
# Bounds every socket read, so a client that stops sending mid-request cannot hold a thread.
_SOCKET_TIMEOUT: Final = 30.0
_UNAUTHORIZED: Final = {"meta": {"error": "Unauthorized request"}}
_DROPS: Final = ("drop", "drop_after_accept")
# The statuses a client is told to come back later with; they carry Retry-After.
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_FAULT_REASONS: Final = {
    408: "request_timeout",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
# Rates are probabilities of one draw: their sum may exceed 1 by rounding only.
_RATE_SUM_TOLERANCE: Final = 1e-9


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request the emulator received, answered or dropped.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request target as sent, query string included.
        status: The status code the emulator answered with; 0 when it closed the connection
            without answering (a ``"drop"`` or ``"drop_after_accept"`` fault, or a delayed
            answer cut short by ``stop()``). A trickled answer is recorded with its status
            before its first byte leaves.
        op_count: How many operations the request carried (the batch length, 1 for the v1
            endpoints), accepted or not; 0 when the body could not be read as operations.
        body_bytes: The size of the request body in bytes.
        errors: The error objects of the answer (per operation for a 207, for the whole
            request otherwise); empty on success. For ``"drop_after_accept"`` they are those
            of the answer that was never sent.
        fault: The fault of the ``FaultPlan`` that shaped the answer, or None for a normal
            one: ``"script"`` (a scripted status), ``"failure_rate"``, ``"rate_limit"``,
            ``"drop"``, ``"drop_after_accept"`` (scripted or drawn), ``"max_request_bytes"``,
            ``"reject_ops"``, ``"trickle"`` (a normal answer, sent a byte at a time) or
            ``"delay"`` (a normal answer, sent late).
    """

    method: str
    path: str
    status: int
    op_count: int
    body_bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    fault: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """Faults for ``TrackAPIEmulator`` to inject, reproducibly: every field defaults to none.

    Faults apply to ``POST /api/v2/batch`` and the v1 ``track``/``identify`` endpoints, never
    to ``GET /api/v1/accounts/region``, and come before authentication, as at a load
    balancer. For each request, in arrival order, the emulator takes the first of:

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
    reject_ops: Callable[[dict[str, Any]], str | None] | None = None

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
class _Route:
    """Which endpoint a request is for."""

    kind: Literal["region", "batch", "v1_track", "v1_identify"]
    customer_id: str = ""

    @property
    def takes_faults(self) -> bool:
        return self.kind != "region"

    @property
    def v1(self) -> bool:
        return self.kind in ("v1_track", "v1_identify")


@dataclass(frozen=True, slots=True)
class _Request:
    """A request as the handler read it off the socket."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Reply:
    """What to answer, plus what to record about the request."""

    status: int
    payload: dict[str, Any]
    op_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    close: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # Close the connection without writing anything: the client sees it hang up.
    drop: bool = False
    fault: str | None = None
    # Seconds before each byte of the answer (FaultPlan.trickle).
    trickle: float = 0.0


@dataclass(frozen=True, slots=True)
class _Problem:
    reason: str
    field: str
    message: str

    def as_error(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class _Decision:
    """What a fault plan decided for one request, before it is processed."""

    fault: str | None = None
    # Answer this status instead of processing.
    status: int | None = None
    drop: Literal["drop", "drop_after_accept"] | None = None


_NO_DECISION: Final = _Decision()
_RejectOps = Callable[[dict[str, Any]], str | None]


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


class _Faults:
    """One plan in force: its random generator, its place in the script, its token bucket."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan: Final = plan
        self._lock = threading.Lock()
        self._random = random.Random(plan.seed)
        self._next_step = 0
        self._bucket = _TokenBucket(plan.rate_limit) if plan.rate_limit is not None else None

    def decide(self) -> _Decision:
        plan = self.plan
        with self._lock:
            if self._next_step < len(plan.script):
                step = plan.script[self._next_step]
                self._next_step += 1
                if step == "drop" or step == "drop_after_accept":
                    return _Decision(fault=step, drop=step)
                return _Decision(fault="script", status=step)
            # Drawn before the rate limit is checked, so timing cannot shift the sequence.
            draw = self._random.random()
            status = self._random.choice(plan.failure_statuses) if plan.failure_statuses else 0
            limited = self._bucket is not None and not self._bucket.take()
        if limited:
            return _Decision(fault="rate_limit", status=429)
        if draw < plan.failure_rate:
            return _Decision(fault="failure_rate", status=status)
        draw -= plan.failure_rate
        if draw < plan.drop_rate:
            return _Decision(fault="drop", drop="drop")
        draw -= plan.drop_rate
        if draw < plan.drop_after_accept_rate:
            return _Decision(fault="drop_after_accept", drop="drop_after_accept")
        return _NO_DECISION


class TrackAPIEmulator:
    """A local stand-in for Customer.io's Track API, for tests.

    It serves ``POST /api/v2/batch``, ``GET /api/v1/accounts/region`` and the v1
    ``track``/``identify`` endpoints on ``127.0.0.1``, checks Basic auth and the Track API's
    limits, answers 200/207/400/401/413 as the real API does, and records every request and
    every accepted operation.

    Example::

        with TrackAPIEmulator() as emu:
            cio.configure(site_id=emu.site_id, api_key=emu.api_key, track_url=emu.url)
            log.info("plan_changed", cio_event=True, user_id="u1")
            assert emu.wait_for_operations(1)
            assert emu.events("plan_changed")[0]["identifiers"] == {"id": "u1"}

    Fault injection: give it a ``FaultPlan`` (or change plans at any time with
    ``set_faults``) to see how an app fares against an unreliable API. The same seed and
    the same request order give the same faults::

        plan = FaultPlan(seed=1, failure_rate=0.3, drop_rate=0.05, rate_limit=20)
        with TrackAPIEmulator(faults=plan) as emu:
            ...  # run the app against emu.url, flush
            assert set(emu.accepted_ids()) == sent_ids  # none missing
            emu.set_faults(FaultPlan(script=(503, "drop_after_accept")))  # the next two
            emu.set_faults(None)  # well-behaved again

    Args:
        site_id: The site id the emulator accepts.
        api_key: The Track API key the emulator accepts.
        host: The address to bind; only loopback makes sense.
        port: The port to bind; 0 picks a free one.
        faults: The faults to inject from the start; None for none.
    """

    def __init__(
        self,
        *,
        site_id: str = "emulator-site",
        api_key: str = "emulator-key",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        self.site_id: Final = site_id
        self.api_key: Final = api_key
        self._host = host
        self._port = port
        credentials = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        self._authorization = f"Basic {credentials}"
        self._lifecycle_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._state = threading.Condition()
        self._operations: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._rejected: list[dict[str, Any]] = []
        self._faults_lock = threading.Lock()
        self._faults: _Faults | None = None
        self.set_faults(faults)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the port and serve from a daemon thread named ``customerio-emulator``.

        After a ``stop()``, ``start()`` binds the same port again, so ``url`` stays valid for
        a client configured with it.

        Returns:
            The emulator itself, to allow ``emu = TrackAPIEmulator().start()``.

        Raises:
            RuntimeError: If the emulator is already running.
        """
        with self._lifecycle_lock:
            if self._server is not None:
                raise RuntimeError("TrackAPIEmulator is already running")
            server = _Server((self._host, self._port), _Handler, emulator=self)
            self._port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever,
                # serve_forever checks for shutdown() once per interval: keep stop() quick.
                kwargs={"poll_interval": 0.01},
                name=_THREAD_NAME,
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection. Safe to call more than once."""
        with self._lifecycle_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        # Wakes handlers holding an answer back for a delay: they close instead.
        server.stopping.set()
        server.shutdown()
        # Keep-alive connections outlive serve_forever: close them, or a client's pooled
        # connection would still be answered by a stopped emulator.
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan in force, or None."""
        with self._faults_lock:
            return None if self._faults is None else self._faults.plan

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Put a fault plan in force for the requests that arrive from now on; None for none.

        Safe from any thread, running or not. The plan starts afresh each time it is set:
        its script from the first entry, its random generator from its seed, its rate limit
        with a full bucket. Requests already arrived keep the plan they arrived under.

        Args:
            plan: The faults to inject, or None to answer normally again.
        """
        faults = None if plan is None else _Faults(plan)
        with self._faults_lock:
            self._faults = faults

    # -- what it recorded --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the client, e.g. ``http://127.0.0.1:54321`` (no trailing slash).

        Raises:
            RuntimeError: If the emulator was never started.
        """
        if self._port == 0:
            raise RuntimeError("TrackAPIEmulator has no port yet: call start() first")
        return f"http://{self._host}:{self._port}"

    @property
    def operations(self) -> list[dict[str, Any]]:
        """Every accepted operation, in arrival order, in the v2 batch shape (a snapshot)."""
        with self._state:
            return list(self._operations)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in the order its answer (or drop) was settled (a snapshot).

        Faulted requests are here too, with ``RecordedRequest.fault`` saying which fault.
        """
        with self._state:
            return list(self._requests)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Every operation refused, with why (a snapshot).

        Each entry has ``operation``, ``reason``, ``field``, ``message`` and ``status``: 207
        for an operation refused inside a batch, 400 for a v1 request refused. A request
        refused as a whole (bad JSON, empty batch, 413) carries no operation: see
        ``requests`` for those.
        """
        with self._state:
            return list(self._rejected)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Accepted ``event``, ``page`` and ``screen`` operations, in arrival order.

        Args:
            name: Keep only the operations with this ``name``.

        Returns:
            The matching operations (a snapshot).
        """
        with self._state:
            return [
                op
                for op in self._operations
                if op.get("action") in NAMED_ACTIONS and (name is None or op.get("name") == name)
            ]

    def accepted_ids(self) -> Counter[str]:
        """How many times each operation ``id`` was accepted (operations without one are left out).

        A count above 1 is an operation the client sent again after the emulator had
        accepted it. With faults, duplicates should come only from requests recorded with
        ``fault="drop_after_accept"`` (or a ``delay`` longer than the client's timeout)::

            ids = emu.accepted_ids()
            duplicates = sum(ids.values()) - len(ids)
            assert duplicates <= sum(
                r.op_count for r in emu.requests if r.fault == "drop_after_accept"
            )

        Returns:
            A ``collections.Counter`` of ids (a snapshot).
        """
        with self._state:
            return Counter(op["id"] for op in self._operations if isinstance(op.get("id"), str))

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests have been recorded since the last reset.

        Args:
            n: How many recorded requests to wait for.
            timeout: The most seconds to wait.

        Returns:
            True if ``n`` requests were recorded in time, False on timeout.
        """
        with self._state:
            return self._state.wait_for(lambda: len(self._requests) >= n, timeout)

    def wait_for_operations(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` operations have been accepted since the last reset.

        Args:
            n: How many accepted operations to wait for.
            timeout: The most seconds to wait.

        Returns:
            True if ``n`` operations arrived in time, False on timeout.
        """
        with self._state:
            return self._state.wait_for(lambda: len(self._operations) >= n, timeout)

    def reset(self) -> None:
        """Forget every recorded request, operation and rejection; the fault plan stays."""
        with self._state:
            self._operations.clear()
            self._requests.clear()
            self._rejected.clear()

    # -- request handling --------------------------------------------------------------

    def _respond(self, request: _Request, stopping: threading.Event) -> _Reply:
        # The one entry point for a well-framed request: the fault plan decides here, on
        # arrival, whether it is processed normally.
        route = _route(request.method, urlsplit(request.path).path)
        with self._faults_lock:
            faults = self._faults
        if faults is None or route is None or not route.takes_faults:
            reply = self._process(request, route, None)
            self._record_request(request, reply)
            return reply
        plan = faults.plan
        decision = faults.decide()
        if decision.status is not None:
            reply = _fault_reply(route, decision.status, plan.retry_after)
            reply.op_count = _count_operations(route, request.body)
        elif decision.drop == "drop":
            reply = _Reply(0, {}, op_count=_count_operations(route, request.body), drop=True)
        else:
            reply = self._process(request, route, plan)
            reply.drop = decision.drop == "drop_after_accept"
        slowed = "trickle" if plan.trickle else "delay" if plan.delay else None
        reply.fault = decision.fault or reply.fault or slowed
        reply.trickle = plan.trickle
        if plan.delay and stopping.wait(plan.delay):
            # stop() closed the connection under us: there is no one left to answer.
            reply.drop = True
        self._record_request(request, reply)
        return reply

    def _record_request(self, request: _Request, reply: _Reply) -> None:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            status=0 if reply.drop else reply.status,
            op_count=reply.op_count,
            body_bytes=len(request.body),
            errors=reply.errors,
            fault=reply.fault,
        )
        with self._state:
            self._requests.append(recorded)
            self._state.notify_all()

    def _process(self, request: _Request, route: _Route | None, plan: FaultPlan | None) -> _Reply:
        """Answer as the real API would; ``plan`` only tightens its limits."""
        if not secrets.compare_digest(
            request.headers.get("authorization", "").encode(), self._authorization.encode()
        ):
            return _Reply(401, _UNAUTHORIZED)
        if route is None:
            path = urlsplit(request.path).path
            return _Reply(404, {"meta": {"error": f"Not found: {request.method} {path}"}})
        if route.kind == "region":
            return _Reply(200, {"url": self.url, "data_center": "us", "environment_id": 1})
        size = len(request.body)
        real_limit = MAX_REQUEST_BYTES if route.kind == "batch" else None
        plan_limit = None if plan is None else plan.max_request_bytes
        for limit, fault in ((real_limit, None), (plan_limit, "max_request_bytes")):
            if limit is not None and size > limit:
                reply = _too_large(size, limit, route)
                reply.op_count = _count_operations(route, request.body)
                reply.fault = fault
                return reply
        reject_ops = None if plan is None else plan.reject_ops
        if route.kind == "batch":
            return self._batch(request.body, reject_ops)
        if route.kind == "v1_track":
            return self._v1_track(route.customer_id, request.body, reject_ops)
        return self._v1_identify(route.customer_id, request.body, reject_ops)

    def _batch(self, body: bytes, reject_ops: _RejectOps | None) -> _Reply:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return _request_error(_Problem("invalid_json", "body", "body is not valid JSON"))
        if not isinstance(document, dict):
            return _request_error(_Problem("invalid_body", "body", "body must be a JSON object"))
        batch = document.get("batch")
        if not isinstance(batch, list):
            return _request_error(_Problem("invalid_batch", "batch", "batch must be a list"))
        if not batch:
            return _request_error(_Problem("empty_batch", "batch", "batch must not be empty"))

        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        refused_by_plan = False
        for index, op in enumerate(batch):
            problem = _check_batch_operation(op)
            if problem is None and reject_ops is not None:
                problem = _refusal(reject_ops, op)
                refused_by_plan = refused_by_plan or problem is not None
            if problem is None:
                accepted.append(op)
                continue
            errors.append({"batch_index": index, **problem.as_error()})
            rejected.append({"operation": op, **problem.as_error(), "status": 207})
        self._record_operations(accepted, rejected)
        if errors:
            # The real API answers per operation even when none was valid: 207, not 400.
            reply = _Reply(207, {"errors": errors}, op_count=len(batch), errors=errors)
            reply.fault = "reject_ops" if refused_by_plan else None
            return reply
        return _Reply(200, {}, op_count=len(batch))

    def _v1_track(self, customer_id: str, body: bytes, reject_ops: _RejectOps | None) -> _Reply:
        document = _v1_document(body)
        if document is None:
            return _v1_error(_Problem("invalid_body", "body", "body must be a JSON object"))
        op: dict[str, Any] = {
            "type": "person",
            "identifiers": {"id": customer_id},
            "action": "event",
            "name": document.get("name"),
            "attributes": document.get("data", {}),
        }
        for key in ("id", "timestamp"):
            if key in document:
                op[key] = document[key]
        problem = _check_identifiers(op["identifiers"], "identifiers") or _check_named(op)
        return self._v1_accept(op, problem, reject_ops)

    def _v1_identify(self, customer_id: str, body: bytes, reject_ops: _RejectOps | None) -> _Reply:
        document = _v1_document(body) if body else {}
        if document is None:
            return _v1_error(_Problem("invalid_body", "body", "body must be a JSON object"))
        op: dict[str, Any] = {
            "type": "person",
            "identifiers": {"id": customer_id},
            "action": "identify",
            "attributes": document,
        }
        problem = _check_identifiers(op["identifiers"], "identifiers") or _check_identify(op)
        return self._v1_accept(op, problem, reject_ops)

    def _v1_accept(
        self, op: dict[str, Any], problem: _Problem | None, reject_ops: _RejectOps | None
    ) -> _Reply:
        refused_by_plan = False
        if problem is None and reject_ops is not None:
            problem = _refusal(reject_ops, op)
            refused_by_plan = problem is not None
        if problem is not None:
            self._record_operations([], [{"operation": op, **problem.as_error(), "status": 400}])
            reply = _v1_error(problem)
            reply.op_count = 1
            reply.fault = "reject_ops" if refused_by_plan else None
            return reply
        self._record_operations([op], [])
        return _Reply(200, {}, op_count=1)

    def _record_operations(
        self, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]
    ) -> None:
        with self._state:
            self._operations.extend(accepted)
            self._rejected.extend(rejected)
            if accepted:
                self._state.notify_all()


def _request_error(problem: _Problem) -> _Reply:
    error = problem.as_error()
    return _Reply(400, {"errors": [error]}, errors=[error])


def _too_large(size: int, limit: int = MAX_REQUEST_BYTES, route: _Route | None = None) -> _Reply:
    return _api_error(
        route,
        413,
        {
            "reason": "request_too_large",
            "message": f"request body is {size} bytes; the limit is {limit}",
        },
    )


def _api_error(route: _Route | None, status: int, error: dict[str, Any]) -> _Reply:
    """An error for the whole request, in the shape of the endpoint's other errors."""
    if route is not None and route.v1:
        return _Reply(status, {"meta": {"error": error["message"]}}, errors=[error])
    return _Reply(status, {"errors": [error]}, errors=[error])


def _fault_reply(route: _Route, status: int, retry_after: float | str) -> _Reply:
    status_line = f"{status} {_status_phrase(status)}".rstrip()
    reason = _FAULT_REASONS.get(status, f"http_{status}")
    message = f"{status_line}: injected by the emulator's fault plan"
    reply = _api_error(route, status, {"reason": reason, "message": message})
    if status in _RETRY_AFTER_STATUSES:
        reply.headers["Retry-After"] = _retry_after_header(retry_after)
    return reply


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _retry_after_header(value: float | str) -> str:
    if isinstance(value, str):
        return value
    # Whole seconds as the RFC writes them ("1", not "1.0"); a fraction as given, for
    # clients (and tests) that accept one.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _refusal(reject_ops: _RejectOps, op: dict[str, Any]) -> _Problem | None:
    reason = reject_ops(op)
    if reason is None:
        return None
    return _Problem(reason, "operation", f"operation refused by the fault plan: {reason}")


def _count_operations(route: _Route, body: bytes) -> int:
    """The op_count of a request answered without processing, as processing would count."""
    if route.kind == "v1_identify" and not body:
        return 1
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return 0
    if not isinstance(document, dict):
        return 0
    if route.v1:
        return 1
    batch = document.get("batch")
    return len(batch) if isinstance(batch, list) else 0


def _route(method: str, path: str) -> _Route | None:
    if method == "GET" and path == "/api/v1/accounts/region":
        return _Route("region")
    if method == "POST" and path == "/api/v2/batch":
        return _Route("batch")
    match = _V1_CUSTOMER_RE.fullmatch(path)
    if match is not None:
        customer_id = unquote(match["id"])
        if method == "POST" and match["events"]:
            return _Route("v1_track", customer_id)
        if method == "PUT" and not match["events"]:
            return _Route("v1_identify", customer_id)
    return None


def _v1_error(problem: _Problem) -> _Reply:
    # The v1 endpoints answer errors in the same {"meta": ...} shape as a 401.
    return _Reply(400, {"meta": {"error": problem.message}}, errors=[problem.as_error()])


def _v1_document(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


# -- operation validation ----------------------------------------------------------------


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json_size(value: object) -> int:
    return len(_COMPACT.encode(value).encode())


def _utf8_size(text: str) -> int:
    return len(text.encode())


def _check_batch_operation(op: object) -> _Problem | None:
    if not isinstance(op, dict):
        return _Problem("invalid_operation", "operation", "operation must be a JSON object")
    size = _json_size(op)
    if size > MAX_OPERATION_BYTES:
        return _Problem(
            "operation_too_large",
            "operation",
            f"operation is {size} bytes; the limit is {MAX_OPERATION_BYTES}",
        )
    if op.get("type") != "person":
        return _Problem("invalid_type", "type", 'type must be "person"')
    action = op.get("action")
    if action not in PERSON_ACTIONS:
        return _Problem(
            "invalid_action", "action", f"action must be one of {sorted(PERSON_ACTIONS)}"
        )
    if action == "merge":
        return _check_identifiers(op.get("primary"), "primary") or _check_identifiers(
            op.get("secondary"), "secondary"
        )
    problem = _check_identifiers(
        op.get("identifiers"), "identifiers", allow_anonymous=action in NAMED_ACTIONS
    )
    if problem is not None:
        return problem
    if action in NAMED_ACTIONS:
        # The whole operation fit MAX_OPERATION_BYTES, so its attributes fit the larger
        # MAX_EVENT_DATA_BYTES: no need to measure them again.
        return _check_named(op, measure_attributes=MAX_OPERATION_BYTES > MAX_EVENT_DATA_BYTES)
    if action == "identify":
        return _check_identify(op)
    if action in ("add_device", "delete_device"):
        return _check_device(op, need_platform=action == "add_device")
    return None


def _check_identifiers(
    identifiers: object, name: str, *, allow_anonymous: bool = False
) -> _Problem | None:
    keys = " or ".join(IDENTIFIER_KEYS + (("anonymous_id",) if allow_anonymous else ()))
    shape = _Problem(
        "invalid_identifiers", name, f"{name} must be an object with exactly one of {keys}"
    )
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        return shape
    ((key, value),) = identifiers.items()
    if key not in IDENTIFIER_KEYS and not (allow_anonymous and key == "anonymous_id"):
        return shape
    if not isinstance(value, str) or not value:
        return _Problem(
            "invalid_identifiers", f"{name}.{key}", f"{name}.{key} must be a non-empty string"
        )
    if key != "anonymous_id" and _utf8_size(value) > MAX_IDENTIFIER_BYTES:
        return _Problem(
            "identifier_too_long",
            f"{name}.{key}",
            f"{name}.{key} is {_utf8_size(value)} bytes; the limit is {MAX_IDENTIFIER_BYTES}",
        )
    return None


def _check_named(op: dict[str, Any], *, measure_attributes: bool = True) -> _Problem | None:
    name = op.get("name")
    if not isinstance(name, str) or not name:
        return _Problem("invalid_name", "name", "name must be a non-empty string")
    if _utf8_size(name) > MAX_NAME_BYTES:
        return _Problem(
            "name_too_long",
            "name",
            f"name is {_utf8_size(name)} bytes; the limit is {MAX_NAME_BYTES}",
        )
    if "id" in op and not (isinstance(op["id"], str) and _ULID_RE.fullmatch(op["id"])):
        return _Problem("invalid_id", "id", "id must be a ULID (26 characters, Crockford base32)")
    problem = _check_timestamp(op)
    if problem is not None:
        return problem
    if "attributes" in op:
        attributes = op["attributes"]
        if not isinstance(attributes, dict):
            return _Problem("invalid_attributes", "attributes", "attributes must be an object")
        size = _json_size(attributes) if measure_attributes else 0
        if size > MAX_EVENT_DATA_BYTES:
            return _Problem(
                "attributes_too_large",
                "attributes",
                f"attributes are {size} bytes; the limit is {MAX_EVENT_DATA_BYTES}",
            )
    return None


def _check_identify(op: dict[str, Any]) -> _Problem | None:
    problem = _check_timestamp(op)
    if problem is not None or "attributes" not in op:
        return problem
    attributes = op["attributes"]
    if not isinstance(attributes, dict):
        return _Problem("invalid_attributes", "attributes", "attributes must be an object")
    if len(attributes) > MAX_IDENTIFY_ATTRIBUTES:
        return _Problem(
            "too_many_attributes",
            "attributes",
            f"{len(attributes)} attributes; the limit is {MAX_IDENTIFY_ATTRIBUTES}",
        )
    for key, value in attributes.items():
        if _utf8_size(key) > MAX_ATTRIBUTE_NAME_BYTES:
            return _Problem(
                "attribute_name_too_long",
                f"attributes.{key}",
                f"attribute name is {_utf8_size(key)} bytes; the limit is "
                f"{MAX_ATTRIBUTE_NAME_BYTES}",
            )
        # A string is measured as its text; any other value as its compact JSON.
        size = len(value.encode()) if isinstance(value, str) else _json_size(value)
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            return _Problem(
                "attribute_value_too_long",
                f"attributes.{key}",
                f"attributes.{key} is {size} bytes; the limit is {MAX_ATTRIBUTE_VALUE_BYTES}",
            )
    return None


def _check_timestamp(op: dict[str, Any]) -> _Problem | None:
    timestamp = op.get("timestamp")
    # bool is an int subclass, and JSON true must not pass for a time.
    if "timestamp" in op and (not isinstance(timestamp, int) or isinstance(timestamp, bool)):
        return _Problem(
            "invalid_timestamp", "timestamp", "timestamp must be an integer (Unix seconds)"
        )
    return None


def _check_device(op: dict[str, Any], *, need_platform: bool) -> _Problem | None:
    device = op.get("device")
    if not isinstance(device, dict):
        return _Problem("invalid_device", "device", "device must be an object")
    token = device.get("token")
    if not isinstance(token, str) or not token:
        return _Problem("invalid_device", "device.token", "device.token must be a non-empty string")
    if need_platform and device.get("platform") not in DEVICE_PLATFORMS:
        return _Problem(
            "invalid_device",
            "device.platform",
            f"device.platform must be one of {list(DEVICE_PLATFORMS)}",
        )
    return None


# -- HTTP plumbing -----------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        emulator: TrackAPIEmulator,
    ) -> None:
        self.emulator = emulator
        # Set by stop(): wakes the handlers that hold an answer back for a delay.
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # shutdown() wakes a handler thread blocked reading the next keep-alive request.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or stalls is routine in tests of failure paths; only the
        # emulator's own bugs deserve a traceback.
        if isinstance(sys.exception(), ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as the client's requests Session expects.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm on, the second waits
    # for the client's delayed ACK (about 40 ms) on every keep-alive response.
    disable_nagle_algorithm = True
    timeout = _SOCKET_TIMEOUT
    server_version = "customerio-emulator"

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: a test run's stderr is not the place for an access log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        request_or_reply = self._read_request()
        if isinstance(request_or_reply, _Request):
            reply = self._server.emulator._respond(request_or_reply, self._server.stopping)
        else:
            reply = request_or_reply
            request = _Request(self.command, self.path, {}, b"")
            self._server.emulator._record_request(request, reply)
        self._send(reply)

    def _read_request(self) -> _Request | _Reply:
        """Read the body by Content-Length, or say why the request cannot be framed."""
        if "transfer-encoding" in self.headers:
            return _framing_error(411, "Transfer-Encoding is not supported; send Content-Length")
        raw_length = self.headers.get("content-length")
        if raw_length is None:
            if self.command in ("POST", "PUT", "PATCH"):
                return _framing_error(411, "Content-Length is required")
            length = 0
        elif raw_length.isascii() and raw_length.isdigit():
            length = int(raw_length)
        else:
            # Stricter than int(): no sign, spaces or underscores.
            return _framing_error(400, f"invalid Content-Length: {raw_length!r}")
        if length > _MAX_DRAIN_BYTES:
            # Not drained, so the connection cannot carry another request.
            reply = _too_large(length)
            reply.close = True
            return reply
        body = self.rfile.read(length)
        if len(body) < length:
            return _framing_error(400, f"body ended after {len(body)} of {length} bytes")
        headers = {key.lower(): value for key, value in self.headers.items()}
        return _Request(self.command, self.path, headers, body)

    def _send(self, reply: _Reply) -> None:
        if reply.drop:
            # Hang up without a byte of answer: the client sees the connection closed.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.trickle:
            # Written to memory first, then to the client a byte at a time.
            wfile, buffer = self.wfile, io.BytesIO()
            self.wfile = buffer
            try:
                self._write(reply)
            finally:
                self.wfile = wfile
            self._trickle(buffer.getvalue(), reply.trickle)
            return
        self._write(reply)

    def _trickle(self, answer: bytes, interval: float) -> None:
        stopping = self._server.stopping
        for i in range(len(answer)):
            if stopping.wait(interval):
                # stop(): no one is left to answer.
                self.close_connection = True
                return
            self.wfile.write(answer[i : i + 1])

    def _write(self, reply: _Reply) -> None:
        body = json.dumps(reply.payload).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def _framing_error(status: int, message: str) -> _Reply:
    # The body's end is unknown, so the connection cannot carry another request.
    error = {"reason": "invalid_request", "field": "headers", "message": message}
    return _Reply(status, {"errors": [error]}, errors=[error], close=True)
