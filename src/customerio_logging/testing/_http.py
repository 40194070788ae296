"""The emulator's socket side: an HTTP/1.1 server that frames each request by Content-Length,
hands it to the emulator, then sends the answer, or drops or trickles it as told."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, cast

from .._limits import MAX_REQUEST_BYTES
from .._reasons import INVALID_REQUEST, REQUEST_TOO_LARGE

__all__ = ["Reply", "Request", "Server", "too_large_error"]

# A body declared larger than this is not drained: the connection is closed instead, so a
# client announcing gigabytes cannot keep a handler thread reading.
_MAX_DRAIN_BYTES: Final = 16 * MAX_REQUEST_BYTES
# Bounds every socket read, so a client that stops sending mid-request cannot hold a thread.
_SOCKET_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the handler read it off the socket."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # When it was read whole (Unix seconds): what a rate limit sees.
    received_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Reply:
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
    # The operations processing accepted, and those it refused with why.
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


Respond = Callable[[Request, threading.Event], Reply]
"""Answers a well-framed request; the event is set when the server stops."""
Record = Callable[[Request, Reply], None]
"""Records a request refused before it could be read whole, with its answer."""


def too_large_error(size: int, limit: int) -> dict[str, Any]:
    """The error object of a 413: the body's size and the limit it broke."""
    return {
        "reason": REQUEST_TOO_LARGE,
        "message": f"request body is {size} bytes; the limit is {limit}",
    }


class Server(ThreadingHTTPServer):
    """Serves from a named daemon thread; every request goes to ``respond``.

    It keeps track of its open connections, so ``close()`` can hang them up: a client's
    pooled keep-alive connection must not be answered by a stopped emulator.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, respond: Respond, record: Record) -> None:
        self.respond: Final = respond
        self.record: Final = record
        # Set by close(): wakes the handlers that hold an answer back for a delay.
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def start(self, thread_name: str) -> None:
        """Serve from a daemon thread of that name."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            # serve_forever checks for shutdown() once per interval: keep close() quick.
            kwargs={"poll_interval": 0.01},
            name=thread_name,
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, hang up every open connection and wait for the thread."""
        # Wakes handlers holding an answer back for a delay: they close instead.
        self.stopping.set()
        self.shutdown()
        # Keep-alive connections outlive serve_forever: close them too.
        self._close_connections()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def _close_connections(self) -> None:
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
    def _server(self) -> Server:
        return cast(Server, self.server)

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
        if isinstance(request_or_reply, Request):
            reply = self._server.respond(request_or_reply, self._server.stopping)
        else:
            reply = request_or_reply
            self._server.record(Request(self.command, self.path, {}, b""), reply)
        self._send(reply)

    def _read_request(self) -> Request | Reply:
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
            error = too_large_error(length, MAX_REQUEST_BYTES)
            return Reply(413, {"errors": [error]}, errors=[error], close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            return _framing_error(400, f"body ended after {len(body)} of {length} bytes")
        headers = {key.lower(): value for key, value in self.headers.items()}
        return Request(self.command, self.path, headers, body)

    def _send(self, reply: Reply) -> None:
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

    def _write(self, reply: Reply) -> None:
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


def _framing_error(status: int, message: str) -> Reply:
    # The body's end is unknown, so the connection cannot carry another request.
    error = {"reason": INVALID_REQUEST, "field": "headers", "message": message}
    return Reply(status, {"errors": [error]}, errors=[error], close=True)
