"""PreparedPost: what ``Session.post`` sent, byte for byte, prepared once; its answers,
errors and cookies as requests gave them; and the session transport built on it."""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import requests
from customerio import CustomerIO

from customerio_logging._adapter import no_retry_adapter
from customerio_logging._delivery import SessionTransport
from customerio_logging._posting import JSON_HEADERS, PreparedPost
from customerio_logging._wire import Response

from .helpers import closed_port_url, wait_until

SECRET = "SECRET-KEY-4417"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
HANG = b""
"""An answer that never comes (the connection stays open until the server closes)."""


@pytest.fixture(autouse=True)
def _own_ca_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these override a session's own verify: the tests set what they mean.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in (*headers, f"Content-Length: {len(body)}"))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


class RawServer:
    """An HTTP/1.1 server on 127.0.0.1 that keeps each request's bytes as they came and
    gives ``answers`` in turn, the last one again and again; None closes the connection
    without an answer. Connections are kept alive between requests; ``ended`` counts
    those the client closed."""

    def __init__(self, *answers: bytes | None, tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers) or [OK]
        self.requests: list[bytes] = []
        self.connections = 0
        self.ended = 0
        self._tls = tls
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        finally:
            self.ended += 1

    def _exchange(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        with contextlib.suppress(OSError), contextlib.ExitStack() as stack:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            stack.enter_context(conn)
            self.connections += 1
            stream = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = stream.readline()
                    if not line:
                        return
                    head += line
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                self.requests.append(head + stream.read(int(found[1]) if found else 0))
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                if answer is None:
                    return
                if answer == HANG:
                    self._stopping.wait()
                    return
                conn.sendall(answer)


@contextlib.contextmanager
def serving(*answers: bytes | None, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    server = RawServer(*answers, tls=tls)
    try:
        yield server
    finally:
        server.close()


def _session() -> requests.Session:
    """A session set up as the transports set up the official client's."""
    session = requests.Session()
    session.auth = ("site-1", SECRET)
    session.headers["User-Agent"] = "customerio-logging/test Customer.io Python Client/1"
    adapter = no_retry_adapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _posted(
    session: requests.Session, url: str, body: bytes, *, timeout: float = 5.0, limit: int = 4 << 20
) -> Response:
    """What the library did before PreparedPost: Session.post, the streamed answer read
    up to ``limit``, the reply closed. The oracle the new code must match."""
    reply = session.post(
        url, data=body, headers=JSON_HEADERS, timeout=timeout, allow_redirects=False, stream=True
    )
    chunks: list[bytes] = []
    try:
        size = 0
        for chunk in reply.iter_content(64 << 10):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        reply.close()
    return Response(reply.status_code, dict(reply.headers), b"".join(chunks)[:limit])


def _both(
    *answers: bytes | None,
    body: bytes = b'{"batch":[]}',
    sends: int = 1,
    limit: int = 4 << 20,
    proxy: bool = False,
) -> tuple[list[bytes], list[bytes], list[Response], list[Response]]:
    """The same requests through Session.post and through PreparedPost, each to its own
    server (or through it as a proxy): what each server received (its port left out), and
    what each side got back."""
    results: list[tuple[list[bytes], list[Response]]] = []
    for prepared in (False, True):
        with serving(*answers) as server, _session() as session:
            url = server.url + "/api/v2/batch"
            if proxy:
                session.proxies = {"http": server.url}
                url = "http://127.0.0.1:9/api/v2/batch"  # only the proxy answers
            post = PreparedPost(session, url)
            got = [
                post.send(body, timeout=5.0, limit=limit)
                if prepared
                else _posted(session, url, body, limit=limit)
                for _ in range(sends)
            ]
            port = f":{server.port}".encode()
            results.append(([wire.replace(port, b":PORT") for wire in server.requests], got))
    (old_wire, old), (new_wire, new) = results
    return old_wire, new_wire, old, new


def _same_answer(old: Response, new: Response) -> None:
    assert (new.status, new.headers, new.body) == (old.status, old.headers, old.body)


class TestWhatIsSent:
    @pytest.mark.parametrize("proxy", [False, True], ids=["direct", "through a proxy"])
    def test_the_request_is_byte_for_byte_what_session_post_sent(self, proxy: bool) -> None:
        old_wire, new_wire, _, _ = _both(body=b'{"batch":[{"a":1}]}', sends=2, proxy=proxy)
        assert new_wire == old_wire
        target = b"http://127.0.0.1:9/api/v2/batch" if proxy else b"/api/v2/batch"
        assert new_wire[0].startswith(b"POST " + target + b" HTTP/1.1\r\n")
        assert b"Authorization: Basic " in new_wire[0]
        assert b"User-Agent: customerio-logging/test" in new_wire[0]

    def test_prepared_once_each_body_goes_with_its_own_length(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bodies = [b'{"batch":[' + b"1," * n + b"1]}" for n in (500, 3, 40)]
        with serving() as server, _session() as session:
            prepared = []
            monkeypatch.setattr(
                session,
                "prepare_request",
                lambda r, real=session.prepare_request: prepared.append(r) or real(r),
            )
            post = PreparedPost(session, server.url + "/api/v2/batch")
            for body in bodies:
                assert post.send(body, timeout=5.0).status == 200
        assert len(prepared) == 1
        assert server.connections == 1  # one kept-alive connection for all three
        for wire, body in zip(server.requests, bodies, strict=True):
            head, sent = wire.split(b"\r\n\r\n", 1)
            assert sent == body
            assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"

    def test_a_closed_session_is_prepared_again_and_still_posts(self) -> None:
        with serving() as server, _session() as session:
            post = PreparedPost(session, server.url + "/api/v2/batch")
            assert post.send(b"{}", timeout=5.0).status == 200
            session.close()  # as client.close() does: its pools close
            assert post.send(b"{}", timeout=5.0).status == 200
        assert server.connections == 2

    def test_no_repr_shows_the_credentials(self) -> None:
        with serving() as server, _session() as session:
            post = PreparedPost(session, server.url + "/api/v2/batch")
            post.send(b"{}", timeout=5.0)
            assert SECRET not in repr(post)
            assert SECRET not in repr(post._route)


class TestWhatComesBack:
    @pytest.mark.parametrize(
        "answer",
        [
            OK,
            _answer("207 Multi-Status", b'{"errors":[{"batch_index":0}]}', "X-A: 1", "x-a: 2"),
            _answer("429 Too Many Requests", b"", "Retry-After: 3"),
            _answer("302 Found", b"", "Location: http://127.0.0.1:9/elsewhere"),
            _answer("200 OK", gzip.compress(b'{"gzipped":true}'), "Content-Encoding: gzip"),
            CHUNKED,
        ],
        ids=["200", "207 with a repeated header", "429", "redirect", "gzip", "chunked"],
    )
    def test_the_answer_is_what_session_post_gave(self, answer: bytes) -> None:
        _, _, old, new = _both(answer, sends=2)
        for before, after in zip(old, new, strict=True):
            _same_answer(before, after)

    def test_a_redirect_is_not_followed(self) -> None:
        moved = _answer("307 Temporary Redirect", b"", "Location: /elsewhere")
        with serving(moved) as server, _session() as session:
            post = PreparedPost(session, server.url + "/api/v2/batch")
            assert post.send(b"{}", timeout=5.0).status == 307
        assert len(server.requests) == 1

    def test_an_answer_past_the_limit_is_cut_and_its_connection_dropped(self) -> None:
        big = _answer("200 OK", b"x" * 100_000)
        _, _, old, new = _both(big, OK, sends=2, limit=1000)
        _same_answer(old[0], new[0])
        assert len(new[0].body) == 1000
        with serving(big, OK) as server, _session() as session:
            post = PreparedPost(session, server.url + "/api/v2/batch")
            post.send(b"{}", timeout=5.0, limit=1000)
            assert wait_until(lambda: server.ended == 1, 5.0)  # closed at once, not pooled
            post.send(b"{}", timeout=5.0, limit=1000)
        assert server.connections == 2

    def test_cookies_the_server_sets_are_sent_back_as_requests_would(self) -> None:
        sets = _answer("200 OK", b"{}", "Set-Cookie: lb=node-7; Path=/")
        old_wire, new_wire, _, _ = _both(sets, OK, sends=3)
        assert new_wire == old_wire
        assert b"Cookie: lb=node-7" not in new_wire[0]
        assert b"Cookie: lb=node-7" in new_wire[1]
        assert b"Cookie: lb=node-7" in new_wire[2]


def _shape(exc: BaseException) -> list[str]:
    """An exception's type and the types it wraps (their texts name objects by address)."""
    shape = [type(exc).__name__]
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, BaseException):
        shape.append(type(inner).__name__)
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            shape.append(type(reason).__name__)
    return shape


def _raised(prepared: bool, session: requests.Session, url: str, timeout: float) -> BaseException:
    """What a POST raised: through PreparedPost, or through Session.post before it."""
    try:
        if prepared:
            PreparedPost(session, url).send(b"{}", timeout=timeout)
        else:
            _posted(session, url, b"{}", timeout=timeout)
    except Exception as exc:  # any exception: its shape is compared
        return exc
    pytest.fail("the POST raised nothing")


class TestFailures:
    """Every failure raises what Session.post raised: the transports map those to
    DeliveryError by type, and name the type in their messages."""

    @pytest.mark.parametrize(
        "answer",
        [
            None,
            HANG,
            _answer("200 OK", b"short")[:-2],
            _answer("200 OK", b"not gzip", "Content-Encoding: gzip"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"NOT HTTP\r\n\r\n",
        ],
        ids=["closed", "no answer", "cut short", "bad gzip", "bad chunk", "not http"],
    )
    def test_a_broken_answer_raises_as_session_post_did(self, answer: bytes | None) -> None:
        shapes = []
        for prepared in (False, True):
            with serving(answer) as server, _session() as session:
                error = _raised(prepared, session, server.url + "/api/v2/batch", 0.3)
            shapes.append(_shape(error))
        assert shapes[1] == shapes[0]
        assert shapes[0][0] != "AssertionError"

    @pytest.mark.parametrize(
        "how", ["refused", "dead proxy", "tls to plain http", "missing ca bundle", "bad url"]
    )
    def test_no_connection_raises_as_session_post_did(self, how: str) -> None:
        shapes = []
        for prepared in (False, True):
            with serving(OK) as server, _session() as session:
                url = {
                    "refused": closed_port_url(),
                    "dead proxy": "http://127.0.0.1:9",
                    "tls to plain http": server.url.replace("http:", "https:"),
                    "missing ca bundle": server.url.replace("http:", "https:"),
                    "bad url": "http://[::1",
                }[how] + "/api/v2/batch"
                if how == "dead proxy":
                    session.proxies = {"http": closed_port_url()}
                if how == "missing ca bundle":
                    session.verify = "/nonexistent/ca.pem"
                error = _raised(prepared, session, url, 2.0)
            shapes.append(_shape(error))
        assert shapes[1] == shapes[0]


def _tls_server_context(tls_files: tuple[Path, Path], *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    if client_cert:
        # The self-signed certificate is its own issuer: a client must present it.
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls_files[0])
    return context


class TestTLS:
    @pytest.mark.parametrize("where", ["file", "folder", "environment"])
    def test_verify_with_a_ca_bundle(
        self,
        where: str,
        tls_files: tuple[Path, Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        cert = tls_files[0]
        bundle = str(cert)
        if where == "folder":
            openssl = shutil.which("openssl")
            assert openssl is not None  # tls_files needed it too
            found = subprocess.run(
                [openssl, "x509", "-hash", "-noout", "-in", cert],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            )
            (tmp_path / f"{found.stdout.strip()}.0").write_bytes(cert.read_bytes())
            bundle = str(tmp_path)
        context = _tls_server_context(tls_files, client_cert=False)
        with serving(OK, tls=context) as server:
            with _session() as session:
                if where == "environment":
                    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
                else:
                    session.verify = bundle
                post = PreparedPost(session, server.url + "/api/v2/batch")
                assert post.send(b"{}", timeout=5.0).status == 200
            monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
            with _session() as session:  # the usual CAs do not know this certificate
                post = PreparedPost(session, server.url + "/api/v2/batch")
                with pytest.raises(requests.exceptions.SSLError):
                    post.send(b"{}", timeout=5.0)

    @pytest.mark.filterwarnings("ignore:`get_connection` has been deprecated:DeprecationWarning")
    def test_requests_before_2_32_2_route_the_same_way(
        self, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Those versions have no get_connection_with_tls_context: their send() asked
        # get_connection, then cert_verify set the TLS settings on the pool.
        monkeypatch.delattr(requests.adapters.HTTPAdapter, "get_connection_with_tls_context")
        context = _tls_server_context(tls_files, client_cert=True)
        with serving(OK, tls=context) as server, _session() as session:
            session.verify = str(tls_files[0])
            session.cert = (str(tls_files[0]), str(tls_files[1]))
            post = PreparedPost(session, server.url + "/api/v2/batch")
            assert post.send(b"{}", timeout=5.0).status == 200
        with serving() as server, _session() as session:
            session.proxies = {"http": server.url}  # the server plays the proxy
            post = PreparedPost(session, "http://127.0.0.1:9/api/v2/batch")
            assert post.send(b"{}", timeout=5.0).status == 200
        assert server.requests[0].startswith(b"POST http://127.0.0.1:9/api/v2/batch ")

    def test_the_client_certificate_is_presented(self, tls_files: tuple[Path, Path]) -> None:
        context = _tls_server_context(tls_files, client_cert=True)
        with serving(OK, tls=context) as server:
            with _session() as session:
                session.verify = str(tls_files[0])
                session.cert = (str(tls_files[0]), str(tls_files[1]))
                post = PreparedPost(session, server.url + "/api/v2/batch")
                assert post.send(b"{}", timeout=5.0).status == 200
            with _session() as session:
                session.verify = str(tls_files[0])
                post = PreparedPost(session, server.url + "/api/v2/batch")
                with pytest.raises(requests.RequestException):
                    post.send(b"{}", timeout=5.0)


class TestSessionTransportReuse:
    def test_a_send_after_close_opens_a_new_session(self) -> None:
        with serving() as server:
            client = CustomerIO("site-1", SECRET, retries=0)
            transport = SessionTransport(client, server.url, timeout=5.0)
            assert transport.send(b'{"batch":[]}').status == 200
            first = transport._http()
            transport.close()
            assert transport.send(b'{"batch":[]}').status == 200
            assert transport._http() is not first
            transport.close()
        assert server.connections == 2

    def test_the_app_closing_the_official_client_does_not_stop_sending(self) -> None:
        with serving() as server:
            client = CustomerIO("site-1", SECRET, retries=0)
            transport = SessionTransport(client, server.url, timeout=5.0)
            assert transport.send(b'{"batch":[]}').status == 200
            client.close()
            assert transport.send(b'{"batch":[]}').status == 200
            transport.close()
        assert len(server.requests) == 2


class TestStandIns:
    """What is not requests' own sending gets Session.post itself, and sees the batches."""

    def test_a_test_double_on_http_adapter_send_sees_the_batch(self) -> None:
        # What `responses` does: HTTPAdapter.send replaced, after the first batch went out.
        seen: list[bytes] = []

        def double(adapter: object, request: requests.PreparedRequest, **_: object) -> object:
            assert isinstance(request.body, bytes)
            seen.append(request.body)
            reply = requests.Response()
            reply.status_code, reply.raw = 200, io.BytesIO(b"{}")
            return reply

        with serving() as server, _session() as session:
            post = PreparedPost(session, server.url + "/api/v2/batch")
            assert post.send(b'{"n":1}', timeout=5.0).status == 200
            with mock.patch("requests.adapters.HTTPAdapter.send", double):
                answer = post.send(b'{"n":2}', timeout=5.0)
            assert post.send(b'{"n":3}', timeout=5.0).status == 200
        assert (answer.status, answer.body) == (200, b"{}")
        assert seen == [b'{"n":2}']
        assert [wire.split(b"\r\n\r\n", 1)[1] for wire in server.requests] == [
            b'{"n":1}',
            b'{"n":3}',
        ]

    def test_an_adapter_the_app_mounted_sends_the_batch(self) -> None:
        with serving() as server, _session() as session:
            adapter = requests.adapters.HTTPAdapter()
            session.mount("http://", adapter)
            with mock.patch.object(adapter, "send", wraps=adapter.send) as sent:
                post = PreparedPost(session, server.url + "/api/v2/batch")
                assert post.send(b'{"n":1}', timeout=5.0).status == 200
            assert sent.call_count == 1
        assert server.requests[0].endswith(b'{"n":1}')
