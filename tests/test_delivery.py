"""Delivery and the session transport: one request per batch, no hidden retries."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from customerio_logging._config import Settings
from customerio_logging._delivery import Delivery, Failure, SessionTransport, transport_for
from customerio_logging._wire import Operation, Response, batch_body
from customerio_logging.exceptions import DeliveryError
from customerio_logging.testing import MockTransport

from .helpers import basic_auth


class _Counting(http.server.BaseHTTPRequestHandler):
    status = 503
    hits = 0
    bodies: ClassVar[list[bytes]] = []
    auth: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(self.rfile.read(length))
        type(self).auth.append(self.headers.get("Authorization"))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[tuple[str, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"hits": 0, "bodies": [], "auth": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _ops(n: int) -> list[Operation]:
    return [
        Operation(id=f"{i:026d}", action="event", name="e", body=json.dumps({"i": i}).encode())
        for i in range(n)
    ]


class TestBatchBody:
    def test_the_body_joins_the_encoded_operations(self) -> None:
        body = batch_body(_ops(3))
        assert json.loads(body) == {"batch": [{"i": 0}, {"i": 1}, {"i": 2}]}


class TestSessionTransport:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 401])
    def test_an_error_status_is_returned_after_exactly_one_request(
        self, counting_server: tuple[str, type[_Counting]], status: int
    ) -> None:
        from customerio import CustomerIO

        url, handler = counting_server
        handler.status = status
        transport = SessionTransport(CustomerIO("site", "key", retries=0), url, timeout=5.0)
        response = transport.send(b'{"batch":[]}')
        assert response.status == status
        assert handler.hits == 1
        transport.close()

    def test_it_posts_the_exact_bytes_with_basic_auth_and_our_user_agent(
        self, counting_server: tuple[str, type[_Counting]]
    ) -> None:
        from customerio import CustomerIO

        url, handler = counting_server
        handler.status = 200
        transport = SessionTransport(CustomerIO("site", "key", retries=0), url, timeout=5.0)
        body = batch_body(_ops(2))
        assert transport.send(body).status == 200
        assert handler.bodies == [body]
        assert (handler.auth[0] or "").startswith("Basic ")
        session = transport._http()
        assert session.headers["User-Agent"].startswith("customerio-logging")
        assert "Customer.io Python Client" in session.headers["User-Agent"]
        transport.close()

    def test_a_network_failure_is_a_delivery_error_without_the_payload(self) -> None:
        from customerio import CustomerIO

        from customerio_logging import DeliveryError

        transport = SessionTransport(
            CustomerIO("site", "key", retries=0), "http://127.0.0.1:9", timeout=2.0
        )
        with pytest.raises(DeliveryError) as info:
            transport.send(b'{"batch":[{"secret_payload":1}]}')
        assert info.value.status_code is None
        assert "secret_payload" not in str(info.value)
        assert isinstance(info.value.__cause__, requests.RequestException)


class TestDelivery:
    def test_an_unreadable_207_counts_the_batch_sent_and_says_so(self) -> None:
        class Fixed:
            def send(self, body: bytes) -> Response:
                return Response(207, {}, b"not json")

            def close(self) -> None:
                pass

        report = Delivery(Fixed()).deliver(_ops(2))
        assert len(report.sent) == 2
        assert "207" in (report.error or "")

    def test_out_of_range_207_indexes_are_ignored(self) -> None:
        errors = {
            "errors": [
                {"batch_index": 7, "reason": "x"},
                {"batch_index": True},
                {"batch_index": 0, "reason": "bad", "message": "m " * 300},
            ]
        }

        class Fixed:
            def send(self, body: bytes) -> Response:
                return Response(207, {}, json.dumps(errors).encode())

            def close(self) -> None:
                pass

        report = Delivery(Fixed()).deliver(_ops(2))
        assert [op.id for op in report.sent] == [_ops(2)[1].id]
        ((_, failure),) = report.failed
        assert failure.reason == "bad"
        assert len(failure.message) <= 200


HUGE = 5_000_000  # characters: what a hostile or broken server once put in one reason
_NASTY = "line one\nline two\x1b[31m red \u202e reversed\x00 "


def _hostile(text: str) -> dict[str, str]:
    return {"reason": text, "field": text, "message": text}


def _bounded(failure: Failure) -> None:
    """Each text short, on one line, with no control character a terminal would act on."""
    for text, limit in ((failure.reason, 100), (failure.field or "", 200), (failure.message, 700)):
        assert len(text) <= limit
        assert text.isprintable()


class TestServerWords:
    """Whatever the server says, what is kept of it is short and on one line."""

    @pytest.mark.parametrize(
        ("status", "single"),
        [(207, False), (400, True), (500, False), (422, False)],
        ids=["207", "400-alone", "500", "422"],
    )
    @pytest.mark.parametrize(
        "text", ["r" * HUGE, _NASTY * 1000, "a " * HUGE], ids=["long", "nasty", "spaced"]
    )
    def test_every_kept_text_is_capped(self, status: int, single: bool, text: str) -> None:
        errors = [{"batch_index": i, **_hostile(text)} for i in range(2)]
        body = json.dumps({"errors": errors}).encode()
        ops = _ops(1 if single else 2)
        report = Delivery(MockTransport(Response(status, {}, body))).deliver(ops)
        assert len(report.failed) == len(ops)
        for _, failure in report.failed:
            _bounded(failure)
        assert report.error is not None
        assert len(report.error) <= 700
        assert report.error.isprintable()

    def test_a_transports_long_error_is_capped(self) -> None:
        from customerio_logging.exceptions import DeliveryError

        failing = MockTransport(DeliveryError("reset " * HUGE, status_code=None))
        report = Delivery(failing).deliver(_ops(1))
        ((_, failure),) = report.failed
        assert failure.reason == "network_error"
        assert len(failure.message) <= 700

    @pytest.mark.parametrize("status", [207, 400])
    def test_an_answer_nested_beyond_the_stack_is_unreadable_not_a_crash(self, status: int) -> None:
        deep = b'{"errors":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        report = Delivery(MockTransport(Response(status, {}, deep))).deliver(_ops(1))
        if status == 207:
            assert len(report.sent) == 1  # the unreadable-207 rule
        else:
            ((_, failure),) = report.failed
            assert failure.message == "HTTP 400 from the Track API"


class TestEnvironmentSettings:
    """The session reads proxies and the CA bundle from the environment once, as requests
    would on every request."""

    def test_a_proxy_from_the_environment_is_used(
        self, counting_server: tuple[str, type[_Counting]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from customerio import CustomerIO

        proxy, handler = counting_server
        handler.status = 200
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        # Nothing listens on port 9: only the proxy can answer.
        transport = SessionTransport(
            CustomerIO("site", "key", retries=0), "http://127.0.0.1:9", timeout=5.0
        )
        assert transport.send(b'{"batch":[]}').status == 200
        assert handler.hits == 1
        transport.close()

    def test_no_proxy_is_honoured(
        self, counting_server: tuple[str, type[_Counting]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from customerio import CustomerIO

        url, handler = counting_server
        handler.status = 200
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        transport = SessionTransport(CustomerIO("site", "key", retries=0), url, timeout=5.0)
        assert transport.send(b'{"batch":[]}').status == 200
        transport.close()

    def test_a_ca_bundle_from_the_environment_is_used(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from customerio import CustomerIO

        bundle = tmp_path / "ca.pem"
        bundle.write_text("not used: nothing is sent")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        transport = SessionTransport(
            CustomerIO("site", "key", retries=0), "https://track.customer.io", timeout=5.0
        )
        assert transport._http().verify == str(bundle)


class TestTransportFor:
    """The transport the bridge and the command line build from the settings."""

    def test_it_posts_to_the_settings_url_with_their_credentials(
        self, counting_server: tuple[str, type[_Counting]]
    ) -> None:
        url, handler = counting_server
        handler.status = 200
        transport = transport_for(Settings(site_id="site", api_key="key", track_url=url))
        try:
            assert transport.send(b'{"batch":[]}').status == 200
        finally:
            transport.close()
        assert handler.hits == 1
        assert handler.auth == [basic_auth("site", "key")]
        assert repr(transport) == f"SessionTransport(url={url + '/api/v2/batch'!r})"

    def test_a_given_client_is_the_one_it_posts_through(
        self, counting_server: tuple[str, type[_Counting]]
    ) -> None:
        from customerio import CustomerIO

        url, handler = counting_server
        handler.status = 200
        client = CustomerIO("client-site", "client-key", retries=0)
        transport = transport_for(
            Settings(site_id="site", api_key="key", track_url=url), client=client
        )
        try:
            transport.send(b'{"batch":[]}')
        finally:
            transport.close()
        assert handler.auth == [basic_auth("client-site", "client-key")]

    def test_a_request_ends_at_the_settings_request_timeout(self, hanging_api: str) -> None:
        # The connection is made, the reply never comes.
        settings = Settings(site_id="s", api_key="k", track_url=hanging_api, request_timeout=0.2)
        transport = transport_for(settings)
        try:
            with pytest.raises(DeliveryError, match=r"within 0\.2s"):
                transport.send(b'{"batch":[]}')
        finally:
            transport.close()
