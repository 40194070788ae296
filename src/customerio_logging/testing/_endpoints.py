"""The emulator's routes and how each answers, as the real API does, with the fault plan in
force applied: the Track API's here, the App API's checks in ``_app_api``."""

from __future__ import annotations

import base64
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from .._limits import MAX_REQUEST_BYTES
from .._wire import BATCH_PATH
from ._app_api import APP_PATHS, answer_send, app_error
from ._control import APP_ROUTE_PREFIX
from ._faults import ActivePlan, FaultPlan, RejectOps, fault_error, refusal, retry_after_headers
from ._http import Reply, Request, too_large_error
from ._validation import Problem, check_operation, check_v1_operation, read_batch, v1_operation

__all__ = ["Credentials", "Process", "Route", "answer", "route_of", "with_faults"]

_V1_CUSTOMER_RE: Final = re.compile(r"/api/v1/customers/(?P<id>[^/]+)(?P<events>/events)?")
_UNAUTHORIZED: Final = {"meta": {"error": "Unauthorized request"}}


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the endpoints accept: the Track API's ``Authorization`` header, the App API's key
    (neither in the repr)."""

    authorization: str = field(repr=False)
    app_api_key: str = field(repr=False)

    @classmethod
    def of(cls, site_id: str, api_key: str, app_api_key: str) -> Credentials:
        """The credentials that accept these Track API and App API keys."""
        basic = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        return cls(f"Basic {basic}", app_api_key)


@dataclass(frozen=True, slots=True)
class Route:
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

    @property
    def name(self) -> str:
        """The route of an accepted record: ``batch``, ``v1_track``, ``v1_identify``,
        ``send_email`` or ``send_push``."""
        return APP_ROUTE_PREFIX + self.message if self.app else self.kind


Process = Callable[[Request, Route | None, FaultPlan | None], Reply]


def with_faults(
    active: ActivePlan,
    request: Request,
    route: Route,
    stopping: threading.Event,
    process: Process,
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


def answer(
    request: Request,
    route: Route | None,
    plan: FaultPlan | None,
    credentials: Credentials,
    url: str,
) -> Reply:
    """Answer as the real API would; ``plan`` only tightens its limits.

    Args:
        request: The request, read whole.
        route: Its endpoint; None for none of the API's (a 404 once authenticated).
        plan: The fault plan in force, for its ``max_request_bytes`` and ``reject_ops``.
        credentials: What the endpoints accept.
        url: The emulator's base URL: the region endpoint answers with it.
    """
    if route is not None and route.app:
        # Before the Track API's Basic auth: the App API has its own.
        key = credentials.app_api_key
        return answer_send(route.message, request.body, request.headers, key)
    return _track_answer(request, route, plan, authorization=credentials.authorization, url=url)


def _track_answer(
    request: Request, route: Route | None, plan: FaultPlan | None, *, authorization: str, url: str
) -> Reply:
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


def _v1(route: Route, body: bytes, reject_ops: RejectOps | None) -> Reply:
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


def _api_error(route: Route, status: int, error: dict[str, Any]) -> Reply:
    """An error for the whole request, in the shape of the endpoint's other errors."""
    if route.app:
        return app_error(status, error["message"])
    if route.v1:
        return Reply(status, {"meta": {"error": error["message"]}}, errors=[error])
    return Reply(status, {"errors": [error]}, errors=[error])


def _v1_error(problem: Problem) -> Reply:
    # The v1 endpoints answer errors in the same {"meta": ...} shape as a 401.
    return Reply(400, {"meta": {"error": problem.message}}, errors=[problem.as_error()])


def _count_operations(route: Route, body: bytes) -> int:
    """The op_count of a request answered without processing, as processing would count."""
    if route.app:
        return 1  # one message
    if route.v1:
        op = v1_operation(route.v1_action, route.customer_id, body)
        return 0 if isinstance(op, Problem) else 1
    batch = read_batch(body)
    return 0 if isinstance(batch, Problem) else len(batch)


def route_of(method: str, path: str) -> Route | None:
    if method == "GET" and path == "/api/v1/accounts/region":
        return Route("region")
    if method == "POST" and path == BATCH_PATH:
        return Route("batch")
    if method == "POST" and path in APP_PATHS:
        return Route("app_send", message=APP_PATHS[path])
    match = _V1_CUSTOMER_RE.fullmatch(path)
    if match is not None:
        customer_id = unquote(match["id"])
        if method == "POST" and match["events"]:
            return Route("v1_track", customer_id)
        if method == "PUT" and not match["events"]:
            return Route("v1_identify", customer_id)
    return None
