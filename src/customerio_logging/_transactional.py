"""Transactional messages through the App API (send_email, send_push), retried only when the
message cannot have been sent already."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _app_api, _routing
from ._delivery import http_errors, post_once
from ._global import app_client, switched_off
from ._pacing import Pacer
from ._retry import RetryPolicy
from ._wire import Response, shorten, status_phrase
from .exceptions import DeliveryError

if TYPE_CHECKING:
    pass

__all__ = ["send_email", "send_push"]

EMAIL_PATH = "/v1/send/email"
PUSH_PATH = "/v1/send/push"
# 429 asks to come back later and 503 says the request was not handled: neither queued
# a message. Any other failure may have (a 500 after the queueing, a 502 from a proxy).
_SAFE_STATUSES = frozenset({429, 503})
_MAX_ANSWER_BYTES = 1 << 20
_MAX_DETAIL = 200


class _NotSentError(DeliveryError):
    """No connection could be made: not a byte of the request left, so trying again is safe."""


def send_email(request: Any = None, /, **fields: Any) -> dict[str, Any]:
    """Send a transactional email through the App API, and return its answer.

    A synchronous call on the caller's thread: it returns once Customer.io has queued the
    message (or refused it), after ``request_timeout`` seconds per attempt at most, plus
    the retries' waits. It does not go through the bridge's queue: a transactional send
    wants its answer, and sending it twice is worse than failing, so it is retried only
    when it cannot have been acted on: the connection was refused (nothing was sent), a
    429 (after its ``Retry-After``, capped at ``max_retry_after``) or a 503. A timeout,
    a connection reset after sending, or any other error status raises at once. Retries
    stop after ``max_retries``, or once ``retry_budget`` seconds would be exceeded.

    Args:
        request: A ``customerio.SendEmailRequest``; or leave it out and pass its keyword
            arguments (``transactional_message_id=``, ``to=``, ``identifiers=``,
            ``message_data=``, ``_from=``, ...).
        **fields: The keyword arguments of ``customerio.SendEmailRequest``.

    Returns:
        The API's JSON answer, e.g. ``{"delivery_id": "...", "queued_at": 1700000000}``;
        ``{"delivery_id": None, "queued_at": None, "disabled": True}`` when the library
        is switched off (``enabled=False``): the request is checked, nothing is sent.

    Raises:
        ConfigurationError: No App API key is set; see :func:`app_api`.
        DeliveryError: The message was not accepted; ``status_code`` is the API's
            answer, None when none came. The message never holds the key or the payload.
        TypeError: Both a request and keyword arguments, or a request of another type.
    """
    from customerio import SendEmailRequest

    return _send("email", EMAIL_PATH, _request(SendEmailRequest, request, fields))


def send_push(request: Any = None, /, **fields: Any) -> dict[str, Any]:
    """Send a transactional push notification through the App API, and return its answer.

    The same call as :func:`send_email` (synchronous, retried only where safe), for
    ``POST /v1/send/push``.

    Args:
        request: A ``customerio.SendPushRequest``; or leave it out and pass its keyword
            arguments (``transactional_message_id=``, ``identifiers=``, ``title=``,
            ``message=``, ...).
        **fields: The keyword arguments of ``customerio.SendPushRequest``.

    Returns:
        The API's JSON answer, e.g. ``{"delivery_id": "...", "queued_at": 1700000000}``.

    Raises:
        ConfigurationError: No App API key is set; see :func:`app_api`.
        DeliveryError: The message was not accepted (see :func:`send_email`).
        TypeError: Both a request and keyword arguments, or a request of another type.
    """
    from customerio import SendPushRequest

    return _send("push", PUSH_PATH, _request(SendPushRequest, request, fields))


def _request(request_type: type[Any], request: Any, fields: dict[str, Any]) -> Any:
    if request is None:
        return request_type(**fields)
    if fields:
        raise TypeError(f"pass a {request_type.__name__} or its keyword arguments, not both")
    if not isinstance(request, request_type):
        raise TypeError(f"expected a {request_type.__name__}, got {type(request).__name__}")
    return request


def _send(kind: str, path: str, request: Any) -> dict[str, Any]:
    tap = _routing.tap
    if tap is not None:
        return tap.take_message(kind, request._to_dict())  # a test's cio_events
    if switched_off():
        # Checked (the request was built above, so a bad argument still raises), not sent.
        return {"delivery_id": None, "queued_at": None, "disabled": True}
    app = app_client()
    settings = app.settings
    # The official client's own conversion (datetimes to Unix seconds, NaN to null), so
    # the wire shape is exactly what its send_email/send_push would post.
    body = json.dumps(app.client._sanitize(request._to_dict()), allow_nan=False).encode()
    url = settings.app_url + path
    attempts = 0

    def attempt() -> Response:
        nonlocal attempts
        attempts += 1
        return _post(app, url, body)

    policy = RetryPolicy(
        # Only its interruptible waits are used: this call is not rate-limited.
        pacer=Pacer(settings.max_requests_per_second),
        max_retries=settings.max_retries,
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        budget=settings.retry_budget,
        max_retry_after=settings.max_retry_after,
        retry_status=lambda status: status in _SAFE_STATUSES,
        retry_error=lambda error: isinstance(error, _NotSentError),
    )
    failure: DeliveryError | None = None
    try:
        response, _ = policy.run(attempt)
    except DeliveryError as exc:
        failure = DeliveryError(f"{exc}{_after(attempts)}", status_code=exc.status_code)
    if failure is not None:
        raise failure
    if not 200 <= response.status < 300:
        secret = settings.app_api_key or ""
        raise DeliveryError(
            f"the App API refused the transactional {kind}: {response.status} "
            f"{status_phrase(response.status)}{_detail(response.body, secret)}{_after(attempts)}",
            status_code=response.status,
        )
    return _answer(response.body)


def _post(app: _app_api.AppClient, url: str, body: bytes) -> Response:
    """POST ``body`` once, under the request's deadline; see ``SessionTransport.send``."""
    session = _app_api.session(app.client)
    host = urlsplit(url).netloc
    # The HTTP library's exception is not chained to ours: its request holds the key (in
    # the Authorization header) and the payload, which error trackers would serialise.
    error: DeliveryError | None = None
    with app.deadlines.request() as watch:
        try:
            timeout = max(0.001, watch.deadline - time.monotonic())
            response = post_once(session, url, body, timeout=timeout, limit=_MAX_ANSWER_BYTES)
        except http_errors() as exc:
            # requests' messages name the URL, never the body or the headers.
            if not watch.expired and _never_connected(exc):
                error = _NotSentError(f"could not connect to {host}: {type(exc).__name__}")
            else:
                error = DeliveryError(_no_answer(host, watch.expired, watch.limit, exc))
    if error is not None:
        raise error
    if watch.expired:
        raise DeliveryError(_no_answer(host, True, watch.limit, None))
    return response


def _never_connected(exc: BaseException) -> bool:
    """True when the connection itself failed (refused, unreachable, not resolved, timed out
    connecting): the request was never written."""
    import requests
    import urllib3

    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    # urllib3's NewConnectionError (refused, unreachable) and NameResolutionError are
    # ConnectTimeoutErrors too: every failure before the connection existed.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


def _no_answer(host: str, late: bool, limit: float, exc: BaseException | None) -> str:
    if late:
        return f"no complete response from {host} within {limit:g}s"
    return f"no response from {host}: {type(exc).__name__}"


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _detail(body: bytes, secret: str) -> str:
    """What the API said was wrong (its ``meta.error``), short, on one line, key redacted."""
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    meta = answer.get("meta") if isinstance(answer, dict) else None
    error = meta.get("error") if isinstance(meta, dict) else None
    if not isinstance(error, str) or not error.strip():
        return ""
    if secret:
        error = error.replace(secret, "[app_api_key]")
    return f": {shorten(error, _MAX_DETAIL)}"


def _after(attempts: int) -> str:
    retries = attempts - 1
    if retries <= 0:
        return ""
    return f" (after {retries} {'retry' if retries == 1 else 'retries'})"
