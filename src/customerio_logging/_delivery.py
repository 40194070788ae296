"""One batch to the Track API: build the body, send it, read the answer op by op."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._pacing import Pacer
from ._reasons import NETWORK_ERROR, REJECTED, REQUEST_TOO_LARGE, UNAUTHORIZED
from ._watchdog import RequestDeadlines, Watch
from ._wire import BATCH_PATH, Operation, Response, Transport, batch_body, shorten
from .exceptions import DeliveryError

if TYPE_CHECKING:
    import requests

    from ._config import Settings
    from ._posting import PreparedPost
    from ._retry import RetryPolicy

__all__ = [
    "Delivery",
    "DeliveryReport",
    "Failure",
    "SessionTransport",
    "SwitchedOff",
    "http_errors",
    "official_client",
    "post_once",
    "transport_for",
]


class SwitchedOff:
    """The transport of a bridge switched off (``enabled=False``): it sends nothing."""

    def send(self, body: bytes) -> Response:
        """Refuse: a switched-off bridge has no way out.

        Raises:
            DeliveryError: Always.
        """
        raise DeliveryError("customerio_logging is switched off (enabled=False): nothing is sent")

    def close(self) -> None:
        """Nothing to close."""


class SessionTransport:
    """Posts batch bodies over the official ``customerio.CustomerIO`` client's session.

    The client's session carries basic auth, TCP keep-alive and its user agent. Its
    urllib3 retries are replaced by none at all: the retry policy lives in one place,
    above the transport, and never stacks on another.

    ``timeout`` bounds the whole request, from connecting to the last byte of the answer,
    not each read: a server that trickles its answer is cut off at the deadline (see
    :mod:`._watchdog`), and ``send`` raises ``DeliveryError`` saying so. Each address a
    host name resolves to is tried for at most the time left; the name lookup itself is
    bounded by the system's resolver. An answer's body is read up to 4 MiB (the API's are
    far smaller); the rest is left unread and the connection dropped.

    Every batch goes through one :class:`PreparedPost`: the request is prepared, and its
    connection pool chosen, once per session, not once per batch.
    """

    def __init__(self, client: Any, track_url: str, *, timeout: float) -> None:
        self._client = client
        self._url = track_url + BATCH_PATH
        # The host as messages name it: never a URL's credentials.
        self._host = urlsplit(track_url).netloc.rpartition("@")[2]
        self._deadlines = RequestDeadlines(timeout)
        self._session: requests.Session | None = None
        self._post: PreparedPost | None = None
        # Imported and read here, on the thread that builds the bridge, never by the
        # dispatch thread's first send: a fork while a thread imports leaves that module's
        # import lock held in the child, whose own first send would wait for it forever.
        from . import _adapter, _posting  # noqa: F401

        self._agent = _user_agent()

    def __repr__(self) -> str:
        return f"SessionTransport(url={self._url!r})"

    def _http(self) -> requests.Session:
        if self._session is None:
            from ._adapter import no_retry_adapter

            session = self._client.http
            adapter = no_retry_adapter()
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["User-Agent"] = (
                f"{self._agent} {session.headers.get('User-Agent', '')}".strip()
            )
            # requests re-reads the environment on every request (proxies, CA bundle),
            # scanning all of os.environ each time. Read it once, here, by requests' own
            # rules, then stop: the same settings for a fraction of the cost.
            found = session.merge_environment_settings(self._url, {}, None, None, None)
            session.proxies.update(found["proxies"])
            session.verify = found["verify"]
            session.cert = found["cert"]
            session.trust_env = False
            self._session = session
        return self._session

    def send(self, body: bytes) -> Response:
        """POST ``body`` to ``/api/v2/batch``; see :class:`Transport`."""
        post = self._post
        if post is None:
            from ._posting import PreparedPost

            post = self._post = PreparedPost(self._http(), self._url)
        with self._deadlines.request() as watch:
            left = watch.deadline - time.monotonic()
            if left <= 0:
                raise self._late(watch)
            try:
                response = post.send(body, timeout=left)
            except http_errors() as exc:
                if watch.expired or time.monotonic() >= watch.deadline:
                    raise self._late(watch) from exc
                # requests' messages name the URL, never the body or the credentials.
                raise DeliveryError(
                    f"no response from {self._host}: {type(exc).__name__}", status_code=None
                ) from exc
        if watch.expired:
            # Cut off just as it ended: whatever was read may be incomplete.
            raise self._late(watch)
        return response

    def _late(self, watch: Watch) -> DeliveryError:
        if watch.cut:
            return DeliveryError(
                f"no complete response from {self._host} before the shutdown deadline",
                status_code=None,
            )
        return DeliveryError(
            f"no complete response from {self._host} within {watch.limit:g}s", status_code=None
        )

    def set_deadline(self, deadline: float) -> None:
        """From now on no request outlives ``deadline`` (monotonic seconds), not even one in
        flight: shutdown's deadline."""
        self._deadlines.cut(deadline)

    def close(self) -> None:
        """Close the HTTP session; a later ``send`` opens a new one."""
        self._session = self._post = None
        self._client.close()


def post_once(
    session: requests.Session, url: str, body: bytes, *, timeout: float, limit: int
) -> Response:
    """POST a JSON ``body`` once (no redirect followed) and read the answer, at most
    ``limit`` bytes of it. The HTTP library's errors (:func:`http_errors`) propagate."""
    from ._posting import PreparedPost

    return PreparedPost(session, url).send(body, timeout=timeout, limit=limit)


def http_errors() -> tuple[type[BaseException], ...]:
    """What a request can raise when no complete answer came (imported when first needed:
    the HTTP client is not loaded with the package)."""
    import http.client

    import requests
    import urllib3

    return (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        OSError,
    )


def official_client(settings: Settings) -> Any:
    """The official ``customerio.CustomerIO`` client for ``settings``, its own retries off."""
    from customerio import CustomerIO

    return CustomerIO(
        site_id=settings.site_id,
        api_key=settings.api_key,
        retries=0,
        timeout=settings.request_timeout,
    )


def transport_for(settings: Settings, *, client: Any = None) -> SessionTransport:
    """The transport ``settings`` call for: the official client's session, its retries off.

    Args:
        settings: Whose credentials, ``track_url`` and ``request_timeout`` it uses.
        client: The official client to post through; None makes one
            (:func:`official_client`).
    """
    if client is None:
        client = official_client(settings)
    return SessionTransport(client, settings.track_url, timeout=settings.request_timeout)


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"customerio-logging/{version('customerio-logging')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "customerio-logging"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an operation was not delivered.

    The texts are cut to a few hundred characters on one line, whoever made them: they
    go into counters, errors, warnings and the dead letter, and may be the server's words.
    """

    reason: str
    message: str
    field: str | None = None
    status: int | None = None

    def __post_init__(self) -> None:
        for name, limit in (
            ("reason", _REASON_CHARS),
            ("message", _MESSAGE_CHARS),
            ("field", _FIELD_CHARS),
        ):
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                object.__setattr__(self, name, shorten(value, limit))

    @property
    def permanent(self) -> bool:
        """True when sending the operation again cannot help: the API refused it itself.

        A refusal of one operation (207, or 400/413 when it was alone) or a status that
        says the request will never be understood (other 4xx but 401, 403, 408 and 429;
        501; 505). Network errors, timeouts, throttling, 5xx and refused credentials are
        not permanent: the operation can wait in the spool.
        """
        status = self.status
        if status is None:
            return False
        if status == 207 or status in (501, 505):
            return True
        return 400 <= status < 500 and status not in (401, 403, 408, 429)


@dataclass(slots=True)
class DeliveryReport:
    """The outcome of one batch, op by op."""

    sent: list[Operation] = field(default_factory=list)
    failed: list[tuple[Operation, Failure]] = field(default_factory=list)
    dropped: list[Operation] = field(default_factory=list)
    """Not sent because the shutdown deadline passed first."""
    retried: int = 0
    """Requests repeated after a transient failure."""
    requests: int = 0
    """Requests made, retries and split halves included."""
    error: str | None = None
    """A summary for ``Stats.last_error`` when something went wrong."""

    def fail(self, ops: Sequence[Operation], failure: Failure) -> None:
        """Count ``ops`` failed for one reason."""
        self.failed.extend((op, failure) for op in ops)
        self.error = failure.message


class Delivery:
    """Delivers one batch: paced, retried, split when too large, bisected when refused.

    - Every request waits its turn with the :class:`Pacer` (rate limit, 429 pause).
    - Transient failures are retried by the :class:`RetryPolicy`.
    - 413: the batch is split in halves and each half delivered; one operation alone
      still too large fails with ``request_too_large``.
    - 400 on a batch: split in halves until the refused operations are alone; only those
      fail, the rest are delivered.
    - 207: only the operations the answer names fail; none is sent again.
    - 401/403: the credentials were refused. The batch is held (which holds the whole
      pipeline: the queue keeps the events, up to ``max_queue_size``) and tried again
      after a growing pause, 30 s up to 5 min, until it goes through or the shutdown
      deadline passes. ``on_problem`` is told at once.

    Args:
        transport: Sends one body.
        pacer: Paces requests; also carries the shutdown deadline.
        policy: Retries transient failures; none when None.
        on_problem: Called with a message when the credentials are refused (on the sending
            thread; it must not block).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        pacer: Pacer | None = None,
        policy: RetryPolicy | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.pacer = pacer or Pacer(rate=1000.0)
        self._policy = policy
        self._on_problem = on_problem
        self.credentials_refused = False
        self.in_request = False
        """True while a request is on the wire (it may hang): shutdown does not wait for it."""

    def deliver(self, ops: Sequence[Operation]) -> DeliveryReport:
        """Send ``ops`` (in as many requests as it takes) and sort them into sent and failed."""
        report = DeliveryReport()
        if ops:
            self._deliver(list(ops), report)
        return report

    def _deliver(self, ops: list[Operation], report: DeliveryReport) -> None:
        try:
            response = self._send(batch_body(ops), report)
        except _DeadlinePassedError as exc:
            report.dropped.extend(ops)
            report.error = str(exc)
            return
        except DeliveryError as exc:
            report.fail(ops, Failure(NETWORK_ERROR, str(exc), status=exc.status_code))
            return
        status = response.status
        if status == 207:
            _partial(ops, response, report)
        elif 200 <= status < 300:
            report.sent.extend(ops)
        elif status in (400, 413) and len(ops) > 1:
            middle = len(ops) // 2
            self._deliver(ops[:middle], report)
            self._deliver(ops[middle:], report)
        else:
            report.fail(ops, _whole_batch_failure(response))

    def _send(self, body: bytes, report: DeliveryReport) -> Response:
        refusals = 0
        while True:
            if self._policy is None:
                response = self._attempt(body, report)
            else:
                response, retries = self._policy.run(lambda: self._attempt(body, report))
                report.retried += retries
            if response.status not in (401, 403):
                self.credentials_refused = False
                return response
            failure = _whole_batch_failure(response)
            if not self.credentials_refused and self._on_problem is not None:
                self._on_problem(failure.message)
            self.credentials_refused = True
            if self.pacer.expired():
                return response
            # No tight loop on refused credentials: wait long, then try the same batch.
            self.pacer.sleep(min(_REFUSED_MAX_PAUSE, _REFUSED_PAUSE * 2**refusals))
            refusals += 1
            if self.pacer.expired():
                return response

    def _attempt(self, body: bytes, report: DeliveryReport) -> Response:
        if not self.pacer.acquire():
            raise _DeadlinePassedError(
                "events not sent: the shutdown deadline passed while they waited their turn",
                status_code=None,
            )
        report.requests += 1
        self.in_request = True
        try:
            return self.transport.send(body)
        finally:
            self.in_request = False


class _DeadlinePassedError(DeliveryError):
    """The batch never went: the shutdown deadline came first (its events are dropped)."""


_REFUSED_PAUSE = 30.0
_REFUSED_MAX_PAUSE = 300.0


def _partial(ops: Sequence[Operation], response: Response, report: DeliveryReport) -> None:
    errors = _errors(response.body)
    by_index: dict[int, Failure] = {}
    for err in errors:
        index = err.get("batch_index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(ops):
            by_index[index] = Failure(
                reason=_api_text(err.get("reason"), _REASON_CHARS) or REJECTED,
                message=_api_text(err.get("message")) or "rejected by the Track API",
                field=_api_text(err.get("field")),
                status=207,
            )
    for index, op in enumerate(ops):
        failure = by_index.get(index)
        if failure is None:
            report.sent.append(op)
        else:
            report.failed.append((op, failure))
    if by_index:
        report.error = f"HTTP 207: the Track API refused {len(by_index)} of {len(ops)} operations"
    else:
        # A 207 whose errors cannot be read: the API accepted the rest, and resending
        # could duplicate what it kept. Count them sent and say so.
        report.error = "HTTP 207 without readable errors: operations counted as sent"


def _whole_batch_failure(response: Response) -> Failure:
    status = response.status
    if status == 413:
        return Failure(
            REQUEST_TOO_LARGE,
            "HTTP 413: the Track API refused the request as too large, even for one operation",
            status=status,
        )
    if status in (401, 403):
        return Failure(
            UNAUTHORIZED,
            f"HTTP {status}: the Track API refused the credentials; check site_id "
            f"(CUSTOMERIO_SITE_ID) and api_key (CUSTOMERIO_TRACK_API_KEY)",
            status=status,
        )
    errors = _errors(response.body)
    detail = ""
    if errors:
        first = errors[0]
        parts = [_api_text(first.get(k)) for k in ("reason", "field", "message")]
        detail = ": " + ", ".join(p for p in parts if p)
    return Failure(f"http_{status}", f"HTTP {status} from the Track API{detail}", status=status)


def _errors(body: bytes) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested beyond the stack
        return []
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(errors, list):
        return []
    return [err for err in errors if isinstance(err, dict)]


_REASON_CHARS = 100  # a short code, like "invalid_field"
_FIELD_CHARS = 200
_MESSAGE_CHARS = 700  # "HTTP 400 from the Track API: " and three of the API's texts


def _api_text(value: object, limit: int = _FIELD_CHARS) -> str | None:
    # The API's words go into counters and errors: keep them short and single-line.
    return None if value is None else shorten(str(value), limit)
