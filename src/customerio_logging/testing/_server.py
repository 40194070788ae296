"""TrackAPIEmulator: a local Track API (and the App API's transactional sends) for tests, from
what its endpoints answer to the record of every request.

The rules an operation must follow live in ``_validation``, the App API's in ``_app_api``,
the faults it can inject in ``_faults``, the socket handling in ``_http``.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import unquote, urlsplit

from .._limits import MAX_REQUEST_BYTES, NAMED_ACTIONS
from .._wire import BATCH_PATH
from ._app_api import APP_PATHS, answer_send, app_error
from ._faults import ActivePlan, FaultPlan, RejectOps, fault_error, refusal, retry_after_headers
from ._http import Reply, Request, Server, too_large_error
from ._validation import Problem, check_operation, check_v1_operation, read_batch, v1_operation

__all__ = ["RecordedRequest", "TrackAPIEmulator"]

_THREAD_NAME: Final = "customerio-emulator"
_V1_CUSTOMER_RE: Final = re.compile(r"/api/v1/customers/(?P<id>[^/]+)(?P<events>/events)?")
_UNAUTHORIZED: Final = {"meta": {"error": "Unauthorized request"}}


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


@dataclass(frozen=True, slots=True)
class _Route:
    """Which endpoint a request is for."""

    kind: Literal["region", "batch", "v1_track", "v1_identify", "app_send"]
    customer_id: str = ""
    # For "app_send": the kind of message, "email" or "push".
    message: str = ""

    @property
    def takes_faults(self) -> bool:
        return self.kind != "region"

    @property
    def v1(self) -> bool:
        return self.kind in ("v1_track", "v1_identify")

    @property
    def app(self) -> bool:
        return self.kind == "app_send"

    @property
    def v1_action(self) -> str:
        """The action of the v2 operation a v1 request stands for."""
        return "identify" if self.kind == "v1_identify" else "event"


class TrackAPIEmulator:
    """A local stand-in for Customer.io's Track API, for tests.

    It serves ``POST /api/v2/batch``, ``GET /api/v1/accounts/region`` and the v1
    ``track``/``identify`` endpoints on ``127.0.0.1``, checks Basic auth and the Track API's
    limits, answers 200/207/400/401/413 as the real API does, and records every request and
    every accepted operation. It also serves the App API's ``POST /v1/send/email`` and
    ``POST /v1/send/push`` (bearer auth with ``app_api_key``; the reference's checks; a
    ``delivery_id`` and ``queued_at`` in the answer) and records each message it queued in
    ``transactional``: give ``url`` as ``app_url`` too.

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
        app_api_key: The App API key the emulator accepts (``Authorization: Bearer``).
        host: The address to bind; only loopback makes sense.
        port: The port to bind; 0 picks a free one.
        faults: The faults to inject from the start; None for none.
    """

    def __init__(
        self,
        *,
        site_id: str = "emulator-site",
        api_key: str = "emulator-key",
        app_api_key: str = "emulator-app-key",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        self.site_id: Final = site_id
        self.api_key: Final = api_key
        self.app_api_key: Final = app_api_key
        self._host = host
        self._port = port
        credentials = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        self._authorization = f"Basic {credentials}"
        self._lifecycle_lock = threading.Lock()
        self._server: Server | None = None
        self._state = threading.Condition()
        self._operations: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._rejected: list[dict[str, Any]] = []
        self._transactional: list[dict[str, Any]] = []
        self._faults_lock = threading.Lock()
        self._active_plan: ActivePlan | None = None
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
            server = Server((self._host, self._port), respond=self._respond, record=self._record)
            self._port = server.server_address[1]
            server.start(_THREAD_NAME)
            self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection. Safe to call more than once."""
        with self._lifecycle_lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()

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
            return None if self._active_plan is None else self._active_plan.plan

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Put a fault plan in force for the requests that arrive from now on; None for none.

        Safe from any thread, running or not. The plan starts afresh each time it is set:
        its script from the first entry, its random generator from its seed, its rate limit
        with a full bucket. Requests already arrived keep the plan they arrived under.

        Args:
            plan: The faults to inject, or None to answer normally again.
        """
        active = None if plan is None else ActivePlan(plan)
        with self._faults_lock:
            self._active_plan = active

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

    @property
    def transactional(self) -> list[dict[str, Any]]:
        """Every transactional message the App API endpoints queued, in arrival order (a
        snapshot).

        Each entry has ``type`` (``"email"`` or ``"push"``), the ``delivery_id`` and
        ``queued_at`` of the answer, and the ``request`` as sent (its JSON body).
        """
        with self._state:
            return list(self._transactional)

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
        """Forget every recorded request, operation, rejection and transactional message; the
        fault plan stays."""
        with self._state:
            self._operations.clear()
            self._transactional.clear()
            self._requests.clear()
            self._rejected.clear()

    # -- request handling --------------------------------------------------------------

    def _respond(self, request: Request, stopping: threading.Event) -> Reply:
        # The one entry point for a well-framed request: the fault plan decides here, on
        # arrival, whether it is processed normally.
        route = _route(request.method, urlsplit(request.path).path)
        with self._faults_lock:
            active = self._active_plan
        if active is None or route is None or not route.takes_faults:
            reply = self._process(request, route, None)
        else:
            reply = _with_faults(active, request, route, stopping, self._process)
        self._record(request, reply)
        return reply

    def _process(self, request: Request, route: _Route | None, plan: FaultPlan | None) -> Reply:
        """Answer as the real API would, ``plan`` only tightening its limits; keep the ops."""
        if route is not None and route.app:
            # Before the Track API's Basic auth: the App API has its own.
            reply = answer_send(route.message, request.body, request.headers, self.app_api_key)
        else:
            reply = _answer(request, route, plan, authorization=self._authorization, url=self.url)
        with self._state:
            kept = self._transactional if route is not None and route.app else self._operations
            kept.extend(reply.accepted)
            self._rejected.extend(reply.rejected)
            if reply.accepted:
                self._state.notify_all()
        return reply

    def _record(self, request: Request, reply: Reply) -> None:
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


# -- the endpoints ------------------------------------------------------------------------

_Process = Callable[[Request, _Route | None, FaultPlan | None], Reply]


def _with_faults(
    active: ActivePlan,
    request: Request,
    route: _Route,
    stopping: threading.Event,
    process: _Process,
) -> Reply:
    """The answer under the plan in force: decided on arrival, held back by its delay."""
    plan = active.plan
    decision = active.decide()
    if decision.status is not None:
        reply = _api_error(route, decision.status, fault_error(decision.status))
        reply.headers.update(retry_after_headers(decision.status, plan.retry_after))
        reply.op_count = _count_operations(route, request.body)
    elif decision.drop == "drop":
        reply = Reply(0, {}, op_count=_count_operations(route, request.body), drop=True)
    else:
        reply = process(request, route, plan)
        reply.drop = decision.drop == "drop_after_accept"
    reply.fault = decision.fault or reply.fault or active.slowed
    reply.trickle = plan.trickle
    if plan.delay and stopping.wait(plan.delay):
        # stop() closed the connection under us: there is no one left to answer.
        reply.drop = True
    return reply


def _answer(
    request: Request, route: _Route | None, plan: FaultPlan | None, *, authorization: str, url: str
) -> Reply:
    """Answer as the real API would; ``plan`` only tightens its limits."""
    if not secrets.compare_digest(
        request.headers.get("authorization", "").encode(), authorization.encode()
    ):
        return Reply(401, _UNAUTHORIZED)
    if route is None:
        path = urlsplit(request.path).path
        return Reply(404, {"meta": {"error": f"Not found: {request.method} {path}"}})
    if route.kind == "region":
        return Reply(200, {"url": url, "data_center": "us", "environment_id": 1})
    size = len(request.body)
    real_limit = MAX_REQUEST_BYTES if route.kind == "batch" else None
    plan_limit = None if plan is None else plan.max_request_bytes
    for limit, fault in ((real_limit, None), (plan_limit, "max_request_bytes")):
        if limit is not None and size > limit:
            reply = _api_error(route, 413, too_large_error(size, limit))
            reply.op_count = _count_operations(route, request.body)
            reply.fault = fault
            return reply
    reject_ops = None if plan is None else plan.reject_ops
    if route.kind == "batch":
        return _batch(request.body, reject_ops)
    return _v1(route, request.body, reject_ops)


def _batch(body: bytes, reject_ops: RejectOps | None) -> Reply:
    batch = read_batch(body)
    if isinstance(batch, Problem):
        error = batch.as_error()
        return Reply(400, {"errors": [error]}, errors=[error])
    reply = Reply(200, {}, op_count=len(batch))
    refused_by_plan = False
    for index, op in enumerate(batch):
        problem = check_operation(op)
        if problem is None and reject_ops is not None:
            problem = refusal(reject_ops, op)
            refused_by_plan = refused_by_plan or problem is not None
        if problem is None:
            reply.accepted.append(op)
            continue
        reply.errors.append({"batch_index": index, **problem.as_error()})
        reply.rejected.append({"operation": op, **problem.as_error(), "status": 207})
    if reply.errors:
        # The real API answers per operation even when none was valid: 207, not 400.
        reply.status, reply.payload = 207, {"errors": reply.errors}
        reply.fault = "reject_ops" if refused_by_plan else None
    return reply


def _v1(route: _Route, body: bytes, reject_ops: RejectOps | None) -> Reply:
    op = v1_operation(route.v1_action, route.customer_id, body)
    if isinstance(op, Problem):
        return _v1_error(op)
    problem = check_v1_operation(op)
    refused_by_plan = False
    if problem is None and reject_ops is not None:
        problem = refusal(reject_ops, op)
        refused_by_plan = problem is not None
    if problem is None:
        return Reply(200, {}, op_count=1, accepted=[op])
    reply = _v1_error(problem)
    reply.op_count = 1
    reply.rejected.append({"operation": op, **problem.as_error(), "status": 400})
    reply.fault = "reject_ops" if refused_by_plan else None
    return reply


def _api_error(route: _Route, status: int, error: dict[str, Any]) -> Reply:
    """An error for the whole request, in the shape of the endpoint's other errors."""
    if route.app:
        return app_error(status, error["message"])
    if route.v1:
        return Reply(status, {"meta": {"error": error["message"]}}, errors=[error])
    return Reply(status, {"errors": [error]}, errors=[error])


def _v1_error(problem: Problem) -> Reply:
    # The v1 endpoints answer errors in the same {"meta": ...} shape as a 401.
    return Reply(400, {"meta": {"error": problem.message}}, errors=[problem.as_error()])


def _count_operations(route: _Route, body: bytes) -> int:
    """The op_count of a request answered without processing, as processing would count."""
    if route.app:
        return 1  # one message
    if route.v1:
        op = v1_operation(route.v1_action, route.customer_id, body)
        return 0 if isinstance(op, Problem) else 1
    batch = read_batch(body)
    return 0 if isinstance(batch, Problem) else len(batch)


def _route(method: str, path: str) -> _Route | None:
    if method == "GET" and path == "/api/v1/accounts/region":
        return _Route("region")
    if method == "POST" and path == BATCH_PATH:
        return _Route("batch")
    if method == "POST" and path in APP_PATHS:
        return _Route("app_send", message=APP_PATHS[path])
    match = _V1_CUSTOMER_RE.fullmatch(path)
    if match is not None:
        customer_id = unquote(match["id"])
        if method == "POST" and match["events"]:
            return _Route("v1_track", customer_id)
        if method == "PUT" and not match["events"]:
            return _Route("v1_identify", customer_id)
    return None
