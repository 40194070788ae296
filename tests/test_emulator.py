"""Tests of the Track API emulator: auth, endpoints, recording and lifecycle (its validation
rules: test_emulator_validation.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import types
from typing import Any

import pytest
import requests

from customerio_logging import testing
from customerio_logging._limits import MAX_NAME_BYTES, MAX_REQUEST_BYTES
from customerio_logging.testing import RecordedRequest, TrackAPIEmulator

from .helpers import HTTP_TIMEOUT, basic_auth, batch_op, open_session, post_batch, raw_exchange

ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class TestPublicAPI:
    def test_all_is_sorted_and_complete(self) -> None:
        # Submodules (the pytest plugin) and pytest's assertion-rewriting names aside.
        public = {
            name
            for name, value in vars(testing).items()
            if name.isidentifier()
            and not name.startswith("_")
            and not isinstance(value, types.ModuleType)
        }
        assert testing.__all__ == sorted(testing.__all__)
        assert set(testing.__all__) == public


class TestAuth:
    @pytest.mark.parametrize(
        "auth",
        [
            None,
            ("emulator-site", "wrong-key"),
            ("wrong-site", "emulator-key"),
            ("", ""),
        ],
        ids=["missing", "wrong-key", "wrong-site", "empty"],
    )
    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/api/v1/accounts/region"), ("POST", "/api/v2/batch")],
    )
    def test_bad_credentials_get_401(
        self,
        emulator: TrackAPIEmulator,
        auth: tuple[str, str] | None,
        method: str,
        path: str,
    ) -> None:
        response = requests.request(
            method,
            emulator.url + path,
            json={"batch": [batch_op()]},
            auth=auth,
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 401
        assert response.json() == {"meta": {"error": "Unauthorized request"}}
        assert emulator.operations == []

    @pytest.mark.parametrize("header", ["Bearer emulator-key", "Basic !!!", "Basic"])
    def test_malformed_authorization_header_gets_401(
        self, emulator: TrackAPIEmulator, header: str
    ) -> None:
        response = requests.get(
            f"{emulator.url}/api/v1/accounts/region",
            headers={"Authorization": header},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 401

    def test_custom_credentials(self) -> None:
        with TrackAPIEmulator(site_id="s", api_key="k") as emu:
            url = f"{emu.url}/api/v1/accounts/region"
            assert requests.get(url, auth=("s", "k"), timeout=HTTP_TIMEOUT).status_code == 200
            assert requests.get(url, auth=("s", "x"), timeout=HTTP_TIMEOUT).status_code == 401


class TestRegion:
    def test_region_points_at_the_emulator(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        response = session.get(f"{emulator.url}/api/v1/accounts/region", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
        assert response.json() == {"url": emulator.url, "data_center": "us", "environment_id": 1}


class TestRouting:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/"),
            ("GET", "/api/v2/batch"),
            ("POST", "/api/v1/accounts/region"),
            ("POST", "/api/v2/entity"),
            ("DELETE", "/api/v1/customers/u1"),
            ("PUT", "/api/v1/customers/u1/events"),
        ],
    )
    def test_unknown_route_gets_json_404(
        self, emulator: TrackAPIEmulator, session: requests.Session, method: str, path: str
    ) -> None:
        response = session.request(method, emulator.url + path, json={}, timeout=HTTP_TIMEOUT)
        assert response.status_code == 404
        assert "error" in response.json()["meta"]


class TestBatch:
    def test_valid_batch_gets_200_and_is_recorded_in_order(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        ops = [batch_op("a", id=ULID, timestamp=1_700_000_000), batch_op("b", attributes={"k": 1})]
        response = post_batch(session, emulator, ops)
        assert response.status_code == 200
        assert response.json() == {}
        assert emulator.operations == ops
        [recorded] = emulator.requests
        assert recorded == RecordedRequest(
            method="POST",
            path="/api/v2/batch",
            status=200,
            op_count=2,
            body_bytes=recorded.body_bytes,
            errors=[],
        )
        assert recorded.body_bytes == len(json.dumps({"batch": ops}).encode())

    def test_partly_invalid_batch_gets_207_and_records_only_valid_ops(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        bad_name = batch_op("x" * (MAX_NAME_BYTES + 1))
        bad_type = {**batch_op("c"), "type": "object"}
        ops = [batch_op("a"), bad_name, batch_op("b"), bad_type]
        response = post_batch(session, emulator, ops)
        assert response.status_code == 207
        errors = response.json()["errors"]
        assert [(e["batch_index"], e["reason"], e["field"]) for e in errors] == [
            (1, "name_too_long", "name"),
            (3, "invalid_type", "type"),
        ]
        assert all(e["message"] for e in errors)
        assert emulator.operations == [ops[0], ops[2]]
        assert emulator.requests[0].errors == errors
        assert [(r["operation"], r["reason"], r["status"]) for r in emulator.rejected] == [
            (bad_name, "name_too_long", 207),
            (bad_type, "invalid_type", 207),
        ]

    def test_all_invalid_batch_still_gets_207(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        response = post_batch(session, emulator, [batch_op(""), {"type": "person"}])
        assert response.status_code == 207
        assert [e["batch_index"] for e in response.json()["errors"]] == [0, 1]
        assert emulator.operations == []
        assert len(emulator.rejected) == 2

    def test_oversize_body_gets_413_and_connection_stays_usable(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        ops = [batch_op(str(i), attributes={"pad": "x" * 20_000}) for i in range(30)]
        body = json.dumps({"batch": ops}).encode()
        assert len(body) > MAX_REQUEST_BYTES
        response = session.post(f"{emulator.url}/api/v2/batch", data=body, timeout=HTTP_TIMEOUT)
        assert response.status_code == 413
        assert response.json()["errors"][0]["reason"] == "request_too_large"
        assert emulator.operations == []
        assert emulator.requests[0].body_bytes == len(body)
        assert emulator.requests[0].op_count == len(ops)
        # The body was drained, so the same keep-alive connection serves the next request.
        assert post_batch(session, emulator, [batch_op()]).status_code == 200

    def test_body_at_the_limit_is_accepted(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        body = json.dumps({"batch": [batch_op()]}).encode()
        body += b" " * (MAX_REQUEST_BYTES - len(body))
        response = session.post(f"{emulator.url}/api/v2/batch", data=body, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200


def _identify(**extra: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": "u1"}, "action": "identify", **extra}


class TestEvents:
    def test_events_filters_named_actions_and_name(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        page = {**batch_op("/home"), "action": "page"}
        ops = [batch_op("a"), _identify(), page, batch_op("b"), batch_op("a", user="u2")]
        assert post_batch(session, emulator, ops).status_code == 200
        assert emulator.events() == [ops[0], page, ops[3], ops[4]]
        assert emulator.events("a") == [ops[0], ops[4]]
        assert emulator.events("missing") == []


class TestV1Endpoints:
    def test_track_is_recorded_as_a_v2_event(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        response = session.post(
            f"{emulator.url}/api/v1/customers/u%2F1%20x/events",
            json={"name": "bought", "data": {"sku": "a"}, "id": ULID, "timestamp": 7},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200
        assert emulator.operations == [
            {
                "type": "person",
                "identifiers": {"id": "u/1 x"},
                "action": "event",
                "name": "bought",
                "attributes": {"sku": "a"},
                "id": ULID,
                "timestamp": 7,
            }
        ]
        assert emulator.requests[0].op_count == 1

    @pytest.mark.parametrize(
        "body",
        [{"data": {}}, {"name": ""}, {"name": "n", "data": [1]}, {"name": "n", "timestamp": 1.5}],
    )
    def test_invalid_track_gets_400(
        self, emulator: TrackAPIEmulator, session: requests.Session, body: dict[str, Any]
    ) -> None:
        response = session.post(
            f"{emulator.url}/api/v1/customers/u1/events", json=body, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 400
        assert response.json()["meta"]["error"]
        assert emulator.operations == []
        assert [r["status"] for r in emulator.rejected] == [400]

    def test_track_body_not_json_gets_400(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        response = session.post(
            f"{emulator.url}/api/v1/customers/u1/events", data=b"nope", timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 400
        assert emulator.rejected == []

    def test_identify_is_recorded_as_a_v2_identify(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        response = session.put(
            f"{emulator.url}/api/v1/customers/u1",
            json={"email": "a@example.com", "plan": "pro"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200
        assert emulator.operations == [
            _identify(attributes={"email": "a@example.com", "plan": "pro"})
        ]
        assert emulator.events() == []


class TestFraming:
    def test_post_without_content_length_gets_411(self, emulator: TrackAPIEmulator) -> None:
        reply = raw_exchange(emulator, b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\n\r\n{}")
        assert reply.startswith(b"HTTP/1.1 411 ")
        assert emulator.requests[0].status == 411

    def test_chunked_body_gets_411(self, emulator: TrackAPIEmulator) -> None:
        reply = raw_exchange(
            emulator,
            b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 411 ")

    @pytest.mark.parametrize("length", [b"abc", b"-1", b"+2", b"1_0"])
    def test_invalid_content_length_gets_400(
        self, emulator: TrackAPIEmulator, length: bytes
    ) -> None:
        reply = raw_exchange(
            emulator,
            b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 400 ")

    def test_truncated_body_gets_400_without_hanging(self, emulator: TrackAPIEmulator) -> None:
        started = time.monotonic()
        reply = raw_exchange(
            emulator, b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}"
        )
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert time.monotonic() - started < HTTP_TIMEOUT

    def test_absurd_content_length_gets_413_and_close(self, emulator: TrackAPIEmulator) -> None:
        reply = raw_exchange(
            emulator,
            b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in reply

    def test_keep_alive_reuses_the_connection(self, emulator: TrackAPIEmulator) -> None:
        host, port = emulator.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
        try:
            headers = {"Authorization": basic_auth(emulator.site_id, emulator.api_key)}
            conn.request("GET", "/api/v1/accounts/region", headers=headers)
            first = conn.getresponse()
            first.read()
            sock = conn.sock
            conn.request("GET", "/api/v1/accounts/region", headers=headers)
            second = conn.getresponse()
            second.read()
            assert (first.status, second.status) == (200, 200)
            assert sock is not None
            assert conn.sock is sock
        finally:
            conn.close()


class TestWaits:
    @pytest.mark.parametrize("wait", ["wait_for_operations", "wait_for_requests"])
    def test_returns_false_on_timeout_quickly(self, emulator: TrackAPIEmulator, wait: str) -> None:
        started = time.monotonic()
        assert getattr(emulator, wait)(1, timeout=0.05) is False
        assert time.monotonic() - started < 1.0


class TestWaitForOperations:
    def test_returns_true_when_operations_arrive(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        sender = threading.Thread(
            target=post_batch, args=(session, emulator, [batch_op(), batch_op()])
        )
        sender.start()
        try:
            assert emulator.wait_for_operations(2, timeout=HTTP_TIMEOUT) is True
        finally:
            sender.join(HTTP_TIMEOUT)
        assert len(emulator.operations) == 2

    def test_zero_is_immediately_true(self, emulator: TrackAPIEmulator) -> None:
        assert emulator.wait_for_operations(0, timeout=0) is True


class TestReset:
    def test_reset_forgets_everything(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        post_batch(session, emulator, [batch_op(), batch_op("")])
        assert len(emulator.operations) == 1
        assert len(emulator.requests) == 1
        assert len(emulator.rejected) == 1
        emulator.reset()
        assert (emulator.operations, emulator.requests, emulator.rejected) == ([], [], [])
        assert emulator.wait_for_operations(1, timeout=0) is False

    def test_snapshots_are_copies(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        post_batch(session, emulator, [batch_op()])
        emulator.operations.clear()
        emulator.requests.clear()
        assert len(emulator.operations) == 1
        assert len(emulator.requests) == 1


class TestLifecycle:
    def test_random_ports_differ(self) -> None:
        with TrackAPIEmulator() as a, TrackAPIEmulator() as b:
            assert a.url.startswith("http://127.0.0.1:")
            assert not a.url.endswith("/")
            assert a.url != b.url

    def test_serves_from_a_named_daemon_thread(self, emulator: TrackAPIEmulator) -> None:
        threads = [t for t in threading.enumerate() if t.name == "customerio-emulator"]
        assert threads
        assert all(t.daemon for t in threads)

    def test_start_returns_self_and_stop_is_idempotent(self) -> None:
        emu = TrackAPIEmulator()
        assert emu.start() is emu
        url = emu.url
        emu.stop()
        emu.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/api/v1/accounts/region", timeout=HTTP_TIMEOUT)

    def test_start_twice_raises(self, emulator: TrackAPIEmulator) -> None:
        with pytest.raises(RuntimeError, match="already running"):
            emulator.start()

    def test_url_before_start_raises(self) -> None:
        with pytest.raises(RuntimeError, match="start"):
            _ = TrackAPIEmulator().url

    def test_stop_closes_keep_alive_connections(self) -> None:
        emu = TrackAPIEmulator().start()
        with open_session(emu) as s:
            assert post_batch(s, emu, [batch_op()]).status_code == 200
            emu.stop()
            with pytest.raises(requests.ConnectionError):
                post_batch(s, emu, [batch_op()])
        assert len(emu.operations) == 1

    def test_restart_keeps_the_url(self) -> None:
        emu = TrackAPIEmulator().start()
        try:
            url = emu.url
            emu.stop()
            emu.start()
            assert emu.url == url
            auth = (emu.site_id, emu.api_key)
            response = requests.get(
                f"{url}/api/v1/accounts/region", auth=auth, timeout=HTTP_TIMEOUT
            )
            assert response.status_code == 200
        finally:
            emu.stop()


class TestConcurrency:
    def test_concurrent_senders_are_all_recorded(self, emulator: TrackAPIEmulator) -> None:
        threads_count, batches, per_batch = 8, 10, 5
        failures: list[BaseException] = []

        def send(worker: int) -> None:
            try:
                with open_session(emulator) as s:
                    for b in range(batches):
                        ops = [batch_op(f"{worker}-{b}-{i}") for i in range(per_batch)]
                        assert post_batch(s, emulator, ops).status_code == 200
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=send, args=(w,)) for w in range(threads_count)]
        for w in workers:
            w.start()
        total = threads_count * batches * per_batch
        assert emulator.wait_for_operations(total, timeout=30)
        for w in workers:
            w.join(HTTP_TIMEOUT)
        assert failures == []
        names = [op["name"] for op in emulator.operations]
        assert len(names) == total
        assert len(set(names)) == total
        assert len(emulator.requests) == threads_count * batches
