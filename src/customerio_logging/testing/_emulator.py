"""TrackAPIEmulator: a local server that answers like Customer.io's Track API and records it all."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self, cast
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

__all__ = ["RecordedRequest", "TrackAPIEmulator"]

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


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request the emulator answered.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request target as sent, query string included.
        status: The status code the emulator answered with.
        op_count: How many operations the request carried (the batch length, 1 for the v1
            endpoints), accepted or not; 0 when the body could not be read as operations.
        body_bytes: The size of the request body in bytes.
        errors: The error objects of the answer (per operation for a 207, for the whole
            request otherwise); empty on success.
    """

    method: str
    path: str
    status: int
    op_count: int
    body_bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)


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


@dataclass(frozen=True, slots=True)
class _Problem:
    reason: str
    field: str
    message: str

    def as_error(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


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

    Args:
        site_id: The site id the emulator accepts.
        api_key: The Track API key the emulator accepts.
        host: The address to bind; only loopback makes sense.
        port: The port to bind; 0 picks a free one.
    """

    def __init__(
        self,
        *,
        site_id: str = "emulator-site",
        api_key: str = "emulator-key",
        host: str = "127.0.0.1",
        port: int = 0,
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
        """Every request answered, in arrival order, whatever its status (a snapshot)."""
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
        """Forget every recorded request, operation and rejection."""
        with self._state:
            self._operations.clear()
            self._requests.clear()
            self._rejected.clear()

    # -- request handling --------------------------------------------------------------

    def _respond(self, request: _Request) -> _Reply:
        # The one entry point for a well-framed request: a fault plan can decide here,
        # before normal processing, to answer otherwise.
        reply = self._process(request)
        self._record_request(request, reply)
        return reply

    def _record_request(self, request: _Request, reply: _Reply) -> None:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            status=reply.status,
            op_count=reply.op_count,
            body_bytes=len(request.body),
            errors=reply.errors,
        )
        with self._state:
            self._requests.append(recorded)

    def _process(self, request: _Request) -> _Reply:
        if not secrets.compare_digest(
            request.headers.get("authorization", "").encode(), self._authorization.encode()
        ):
            return _Reply(401, _UNAUTHORIZED)
        path = urlsplit(request.path).path
        if request.method == "GET" and path == "/api/v1/accounts/region":
            return _Reply(200, {"url": self.url, "data_center": "us", "environment_id": 1})
        if request.method == "POST" and path == "/api/v2/batch":
            return self._batch(request.body)
        match = _V1_CUSTOMER_RE.fullmatch(path)
        if match is not None:
            customer_id = unquote(match["id"])
            if request.method == "POST" and match["events"]:
                return self._v1_track(customer_id, request.body)
            if request.method == "PUT" and not match["events"]:
                return self._v1_identify(customer_id, request.body)
        return _Reply(404, {"meta": {"error": f"Not found: {request.method} {path}"}})

    def _batch(self, body: bytes) -> _Reply:
        if len(body) > MAX_REQUEST_BYTES:
            return _too_large(len(body))
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
        for index, op in enumerate(batch):
            problem = _check_batch_operation(op)
            if problem is None:
                accepted.append(op)
                continue
            errors.append({"batch_index": index, **problem.as_error()})
            rejected.append({"operation": op, **problem.as_error(), "status": 207})
        self._record_operations(accepted, rejected)
        if errors:
            # The real API answers per operation even when none was valid: 207, not 400.
            return _Reply(207, {"errors": errors}, op_count=len(batch), errors=errors)
        return _Reply(200, {}, op_count=len(batch))

    def _v1_track(self, customer_id: str, body: bytes) -> _Reply:
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
        return self._v1_accept(op, problem)

    def _v1_identify(self, customer_id: str, body: bytes) -> _Reply:
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
        return self._v1_accept(op, problem)

    def _v1_accept(self, op: dict[str, Any], problem: _Problem | None) -> _Reply:
        if problem is not None:
            self._record_operations([], [{"operation": op, **problem.as_error(), "status": 400}])
            reply = _v1_error(problem)
            reply.op_count = 1
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


def _too_large(size: int) -> _Reply:
    error = {
        "reason": "request_too_large",
        "message": f"request body is {size} bytes; the limit is {MAX_REQUEST_BYTES}",
    }
    return _Reply(413, {"errors": [error]}, errors=[error])


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
            reply = self._server.emulator._respond(request_or_reply)
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
        body = json.dumps(reply.payload).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def _framing_error(status: int, message: str) -> _Reply:
    # The body's end is unknown, so the connection cannot carry another request.
    error = {"reason": "invalid_request", "field": "headers", "message": message}
    return _Reply(status, {"errors": [error]}, errors=[error], close=True)
