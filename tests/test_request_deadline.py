"""A request ends by its deadline, whatever the server does: trickled answers, slow connects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from customerio import CustomerIO

import customerio_logging as cio
from customerio_logging import DeliveryError
from customerio_logging._capture import Snapshot
from customerio_logging._delivery import Delivery, SessionTransport
from customerio_logging._replay import Replayer
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._watchdog import THREAD_NAME, RequestDeadlines, watch_socket
from customerio_logging._wire import Operation
from customerio_logging.testing import TrackAPIEmulator

from .helpers import run_python

# A server without a deadline of its own gives up after this, so that a client without
# one (the code before the fix) still ends, late, and the test fails instead of hanging.
_SERVER_LIMIT = 4.0
_MARGIN = 0.5

_STATUS = b"HTTP/1.1 200 OK\r\n"
_HEADERS = b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
# A TLS record header announcing 16 KiB of handshake: the client waits for all of it.
_TLS_RECORD = b"\x16\x03\x03\x40\x00"

PHASES = {
    # name: (sent at once, then repeated one byte at a time)
    "status line": (b"HTTP/1.1 200 ", b"O"),
    "headers": (_STATUS + b"X-Slow: ", b"a"),
    "body": (_STATUS + _HEADERS + b"{", b" "),
}


_WHOLE_ANSWER = _STATUS + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Trickler:
    """A server on 127.0.0.1 that answers every connection with ``head``, then ``drip``
    one byte per ``interval`` seconds, for ``_SERVER_LIMIT`` seconds; or, with ``burst``,
    that many bytes at once, then silence.

    With ``tls``, over TLS; with ``warmup``, the first request on each connection gets a
    whole answer at once, and only the second (on the same connection) the trickle.
    """

    def __init__(
        self,
        head: bytes,
        drip: bytes,
        interval: float,
        *,
        burst: int = 0,
        tls: ssl.SSLContext | None = None,
        warmup: bool = False,
    ) -> None:
        self.head, self.drip, self.interval, self.burst = head, drip, interval, burst
        self.tls, self.warmup = tls, warmup
        self.connections = 0
        self.accepted = threading.Event()
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        self.connections += 1
        self.accepted.set()
        end = time.monotonic() + _SERVER_LIMIT
        try:
            conn.settimeout(_SERVER_LIMIT)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self.warmup:
                _read_request(conn)
                conn.sendall(_WHOLE_ANSWER)
                _read_request(conn)
            conn.sendall(self.head)
            if self.burst:
                conn.sendall(b"x" * self.burst)
                self.stopping.wait(end - time.monotonic())
                return
            while not self.stopping.wait(self.interval) and time.monotonic() < end:
                conn.sendall(self.drip)
        except OSError:
            pass  # the client hung up: what it should do at its deadline
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        body += conn.recv(65536)


@contextlib.contextmanager
def _trickling(phase: str, interval: float) -> Iterator[Trickler]:
    """A server that trickles ``phase`` of its answer, a byte every ``interval`` seconds."""
    head, drip = PHASES[phase]
    server = Trickler(head, drip, interval=interval)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    with _trickling(request.param, 0.1) as server:
        yield server


def _transport(url: str, timeout: float) -> SessionTransport:
    return SessionTransport(CustomerIO("site", "key", retries=0), url, timeout=timeout)


def _op(i: int = 0) -> Operation:
    body = json.dumps({"type": "person", "identifiers": {"id": "u1"}, "i": i}).encode()
    return Operation(id=f"{i:026d}", action="event", name="e", body=body)


def _timed_send(transport: SessionTransport) -> tuple[float, DeliveryError]:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        transport.send(b'{"batch":[{"secret_payload":1}]}')
    return time.monotonic() - started, info.value


class TestSessionTransportDeadline:
    @pytest.mark.parametrize("trickler", list(PHASES), indirect=True)
    def test_a_trickled_answer_is_cut_off_at_the_deadline(self, trickler: Trickler) -> None:
        transport = _transport(f"http://127.0.0.1:{trickler.port}", timeout=0.5)
        elapsed, error = _timed_send(transport)
        assert 0.45 <= elapsed < 0.5 + _MARGIN
        assert str(error) == f"no complete response from 127.0.0.1:{trickler.port} within 0.5s"
        assert error.status_code is None
        assert "secret_payload" not in str(error)
        transport.close()

    def test_a_trickled_tls_handshake_is_cut_off_at_the_deadline(self) -> None:
        server = Trickler(_TLS_RECORD, b"\x00", interval=0.1)
        try:
            transport = _transport(f"https://127.0.0.1:{server.port}", timeout=0.5)
            elapsed, error = _timed_send(transport)
        finally:
            server.close()
        assert elapsed < 0.5 + _MARGIN
        assert "no complete response" in str(error)
        assert "within 0.5s" in str(error)

    @pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
    def test_a_pooled_connection_that_trickles_is_cut_off_too(
        self, tls: bool, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_files)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files[0]))
        head, drip = PHASES["body"]
        server = Trickler(head, drip, interval=0.1, tls=context, warmup=True)
        try:
            scheme = "https" if tls else "http"
            transport = _transport(f"{scheme}://127.0.0.1:{server.port}", timeout=0.5)
            assert transport.send(b'{"batch":[]}').status == 200  # back to the pool
            elapsed, error = _timed_send(transport)
        finally:
            server.close()
        assert elapsed < 0.5 + _MARGIN
        assert str(error) == f"no complete response from 127.0.0.1:{server.port} within 0.5s"
        assert server.connections == 1  # the second request went on the pooled connection

    def test_a_connect_that_hangs_ends_at_the_deadline(self) -> None:
        # A listener that never accepts, its one-connection backlog full: SYNs go unanswered.
        listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=1)
        try:
            transport = _transport(f"http://127.0.0.1:{port}", timeout=0.5)
            elapsed, error = _timed_send(transport)
        finally:
            filler.close()
            listener.close()
        assert elapsed < 0.5 + _MARGIN
        assert str(error) == f"no complete response from 127.0.0.1:{port} within 0.5s"

    def test_a_huge_body_is_read_only_so_far(self) -> None:
        head = _STATUS + b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        server = Trickler(head, b"", interval=0.1, burst=16 << 20)
        try:
            transport = _transport(f"http://127.0.0.1:{server.port}", timeout=2.0)
            started = time.monotonic()
            response = transport.send(b'{"batch":[]}')
            elapsed = time.monotonic() - started
        finally:
            server.close()
        assert response.status == 200
        assert len(response.body) == 4 << 20
        assert elapsed < 2.0

    def test_errors_name_the_host_without_the_urls_credentials(self) -> None:
        transport = _transport("http://user:secret@127.0.0.1:9", timeout=2.0)  # nothing there
        _, error = _timed_send(transport)
        assert str(error) == "no response from 127.0.0.1:9: ConnectionError"

    def test_no_request_goes_once_the_cut_has_passed(self, emulator: TrackAPIEmulator) -> None:
        transport = SessionTransport(
            CustomerIO(emulator.site_id, emulator.api_key, retries=0), emulator.url, timeout=2.0
        )
        assert transport.send(b'{"batch":[]}').status == 400  # a whole answer: empty batch
        transport.set_deadline(time.monotonic())  # shutdown's deadline, already passed
        with pytest.raises(DeliveryError, match="before the shutdown deadline"):
            transport.send(b'{"batch":[]}')
        assert len(emulator.requests) == 1
        transport.close()


class TestWatchdog:
    def test_one_named_daemon_thread_serves_every_request(self, emulator: TrackAPIEmulator) -> None:
        transports = [
            SessionTransport(
                CustomerIO(emulator.site_id, emulator.api_key, retries=0), emulator.url, timeout=5
            )
            for _ in range(3)
        ]
        for transport in transports:
            assert transport.send(b'{"batch":[]}').status == 400  # a whole answer
        watchdogs = [t for t in threading.enumerate() if t.name == THREAD_NAME]
        assert len(watchdogs) == 1
        assert watchdogs[0].daemon
        for transport in transports:
            transport.close()

    def test_a_socket_named_after_the_deadline_is_shut_down_at_once(self) -> None:
        first, first_peer = socket.socketpair()
        late, late_peer = socket.socketpair()
        first.settimeout(2.0)
        late.settimeout(2.0)
        try:
            with RequestDeadlines(0.05).request() as watch:
                watch_socket(first)
                assert first.recv(1) == b""  # woken at the deadline: end of file
                assert watch.expired
                assert not watch.cut
                watch_socket(late)  # say, connected just after the deadline
                started = time.monotonic()
                assert late.recv(1) == b""
                assert time.monotonic() - started < 0.5
        finally:
            for sock in (first, first_peer, late, late_peer):
                sock.close()

    def test_a_cut_ends_a_request_in_flight(self) -> None:
        deadlines = RequestDeadlines(30.0)
        left, right = socket.socketpair()
        try:
            with deadlines.request() as watch:
                watch_socket(left)
                deadlines.cut(time.monotonic() + 0.1)
                left.settimeout(2.0)
                started = time.monotonic()
                assert left.recv(1) == b""
                assert time.monotonic() - started < 1.0
                assert watch.expired
                assert watch.cut
        finally:
            left.close()
            right.close()


_FORK_PROGRAM = """
import os, socket, threading, time
from customerio_logging._watchdog import THREAD_NAME, RequestDeadlines, watch_socket

deadlines = RequestDeadlines(0.2)

def cut_off_in_time():
    mine, peer = socket.socketpair()
    mine.settimeout(5.0)
    started = time.monotonic()
    with deadlines.request() as watch:
        watch_socket(mine)
        got = mine.recv(1)
    return got == b"" and watch.expired and time.monotonic() - started < 2.0

assert cut_off_in_time()  # the parent's watchdog thread runs now
pid = os.fork()
if pid == 0:
    threads = [t for t in threading.enumerate() if t.name == THREAD_NAME]
    ok = cut_off_in_time() and len(threads) == 0
    ok = ok and sum(t.name == THREAD_NAME for t in threading.enumerate()) == 1
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


_CUT_PROGRAM = """
import threading, time
from customerio import CustomerIO
from customerio_logging._delivery import SessionTransport
from customerio_logging._watchdog import THREAD_NAME

transport = SessionTransport(CustomerIO("s", "k", retries=0), "http://127.0.0.1:9", timeout=1)
transport.set_deadline(time.monotonic() + 1.0)  # as shutdown does, maybe in an exit hook
print(sum(t.name == THREAD_NAME for t in threading.enumerate()))
"""


def _stdout_of(program: str) -> str:
    """Run ``program`` (code) in a fresh interpreter that imports what this one does."""
    result = run_python(
        *("-W", "ignore::DeprecationWarning", "-c", program),
        env={"PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=20,
        check=True,
    )
    return result.stdout.strip()


class TestWatchdogInAFreshProcess:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_forked_child_starts_its_own_watchdog(self) -> None:
        assert _stdout_of(_FORK_PROGRAM) == "child 0"

    def test_shutdowns_cut_starts_no_thread(self) -> None:
        assert _stdout_of(_CUT_PROGRAM) == "0"


def _bridge(server: Trickler, tmp_path: Path, *, request_timeout: float) -> cio.Bridge:
    return cio.configure(
        site_id="site",
        api_key="key",
        track_url=f"http://127.0.0.1:{server.port}",
        request_timeout=request_timeout,
        max_retries=0,
        flush_interval=0.05,
        spool_path=tmp_path / "spool.db",
        install_signal_handlers=False,
    )


class TestBridgeDeadline:
    def test_a_trickled_batch_is_spooled_within_the_request_timeout(self, tmp_path: Path) -> None:
        with _trickling("body", 0.2) as server:
            try:
                bridge = _bridge(server, tmp_path, request_timeout=1.0)
                bridge.submit(_capture())
                started = time.monotonic()
                assert bridge.flush(timeout=1.0 + _MARGIN + 0.5)
                assert time.monotonic() - started < 1.0 + _MARGIN + 0.5
                stats = bridge.stats()
            finally:
                cio.shutdown(0.5)
        assert stats.spooled == 1
        assert stats.sent == 0
        assert stats.last_error == (f"no complete response from 127.0.0.1:{server.port} within 1s")

    def test_shutdown_cuts_off_a_request_in_flight(self, tmp_path: Path) -> None:
        with _trickling("headers", 0.2) as server:
            bridge = _bridge(server, tmp_path, request_timeout=30.0)
            bridge.submit(_capture())
            assert server.accepted.wait(5.0)
            bridge.shutdown(0.3)
            thread = bridge.thread
            assert thread is not None
            thread.join(1.0)
            assert not thread.is_alive()  # not stuck in the socket for 30 s
            stats = bridge.stats()
        assert stats.spooled == 1
        assert stats.queue_depth == 0
        assert "before the shutdown deadline" in (stats.last_error or "")


class TestReplayDeadline:
    def test_a_trickled_replay_round_gives_its_batch_back_in_time(self, tmp_path: Path) -> None:
        spool = SQLiteSpool(tmp_path / "spool.db", max_bytes=1 << 20)
        with _trickling("status line", 0.2) as server, contextlib.closing(spool):
            spool.add([_op(1)])
            transport = _transport(f"http://127.0.0.1:{server.port}", timeout=1.0)
            replayer = Replayer(spool, Delivery(transport), batch_size=10)
            started = time.monotonic()
            result = replayer.round()
            elapsed = time.monotonic() - started
            pending = spool.pending()
        assert elapsed < 1.0 + _MARGIN
        assert result.returned == 1
        assert pending == 1
        assert result.error == f"no complete response from 127.0.0.1:{server.port} within 1s"


def _capture() -> Snapshot:
    return Snapshot(True, "plan_changed", {"user_id": "u1"}, 1_700_000_000.0)
