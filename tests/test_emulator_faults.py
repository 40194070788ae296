"""Tests of the emulator's fault injection: FaultPlan, set_faults, and what clients see."""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from customerio_logging._limits import MAX_REQUEST_BYTES
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import HTTP_TIMEOUT, basic_auth, batch_op, open_session, post_batch

# A delay no test waits out: only stop() or a client timeout ends it.
LONG_DELAY = 30.0
# Stands for "the client saw the connection close without an answer" in lists of outcomes.
DROPPED = 0


def ulid(i: int) -> str:
    return f"01ARZ3NDEKTSV4RRFFQ69G{i:04d}"


def event(i: int = 0, name: str = "signed_up") -> dict[str, Any]:
    return batch_op(name, id=ulid(i))


def outcome(session: requests.Session, emu: TrackAPIEmulator, batch: list[Any]) -> int:
    """The status the client got, or DROPPED when the connection closed without one."""
    try:
        return post_batch(session, emu, batch).status_code
    except requests.ConnectionError:
        return DROPPED


def outcomes(plan: FaultPlan, n: int) -> list[int]:
    """What n one-op batches get from a fresh emulator running ``plan``."""
    with TrackAPIEmulator(faults=plan) as emu, open_session(emu) as s:
        return [outcome(s, emu, [event(i)]) for i in range(n)]


def get_region(session: requests.Session, emu: TrackAPIEmulator) -> requests.Response:
    return session.get(f"{emu.url}/api/v1/accounts/region", timeout=HTTP_TIMEOUT)


def padded_body(size: int) -> bytes:
    """A valid one-op batch body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = json.dumps({"batch": [event()]}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


class TestFaultPlan:
    def test_defaults_inject_nothing(self) -> None:
        plan = FaultPlan()
        with TrackAPIEmulator(faults=plan) as emu, open_session(emu) as s:
            assert post_batch(s, emu, [event()]).status_code == 200
            assert emu.faults is plan
        assert [(r.status, r.fault) for r in emu.requests] == [(200, None)]

    def test_is_frozen_and_keyword_only(self) -> None:
        plan = FaultPlan(seed=1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            plan.seed = 2  # type: ignore[misc]
        with pytest.raises(TypeError):
            FaultPlan(1)  # type: ignore[call-arg]

    def test_lists_become_tuples(self) -> None:
        plan = FaultPlan(script=[503, "drop"], failure_statuses=[502])  # type: ignore[arg-type]
        assert plan.script == (503, "drop")
        assert plan.failure_statuses == (502,)
        assert hash(plan) == hash(FaultPlan(script=(503, "drop"), failure_statuses=(502,)))

    def test_rates_may_add_up_to_one_despite_rounding(self) -> None:
        FaultPlan(failure_rate=0.3, drop_rate=0.6, drop_after_accept_rate=0.1)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1"),
            ({"failure_rate": -0.1}, "failure_rate must be between 0 and 1"),
            ({"drop_rate": float("nan")}, "drop_rate must be between 0 and 1"),
            ({"drop_after_accept_rate": True}, "drop_after_accept_rate must be between"),
            ({"failure_rate": 0.6, "drop_rate": 0.5}, "must be at most 1"),
            ({"failure_statuses": (200,)}, "failure_statuses must be statuses 400-599"),
            ({"failure_rate": 0.1, "failure_statuses": ()}, "must not be empty"),
            ({"script": (200,)}, "script entries must be an error status"),
            ({"script": (600,)}, "script entries must be an error status"),
            ({"script": ("explode",)}, "script entries must be an error status"),
            ({"script": (True,)}, "script entries must be an error status"),
            ({"rate_limit": 0}, "rate_limit must be a positive number"),
            ({"rate_limit": float("inf")}, "rate_limit must be a positive number"),
            ({"retry_after": -1}, "retry_after must be seconds >= 0"),
            ({"retry_after": True}, "retry_after must be seconds >= 0"),
            ({"retry_after": " "}, "retry_after must be seconds or a one-line HTTP date"),
            ({"retry_after": "1\r\nX-Evil: 1"}, "one-line HTTP date"),
            ({"delay": -0.1}, "delay must be seconds >= 0"),
            ({"delay": float("inf")}, "delay must be seconds >= 0"),
            ({"trickle": -1}, "trickle must be seconds >= 0"),
            ({"trickle": True}, "trickle must be seconds >= 0"),
            ({"max_request_bytes": 0}, "max_request_bytes must be a positive int"),
            ({"max_request_bytes": True}, "max_request_bytes must be a positive int"),
            ({"reject_ops": "nope"}, "reject_ops must be a callable"),
        ],
    )
    def test_invalid_values_say_what_to_change(self, kwargs: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            FaultPlan(**kwargs)


class TestScript:
    def test_steps_are_consumed_in_order_then_requests_are_normal(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=(503, "drop", 429, "drop_after_accept", 400)))
        got = [outcome(session, emulator, [event(i)]) for i in range(7)]
        assert got == [503, DROPPED, 429, DROPPED, 400, 200, 200]
        # Only the drop_after_accept request and the two normal ones were processed.
        assert [op["id"] for op in emulator.operations] == [ulid(3), ulid(5), ulid(6)]

    def test_setting_a_plan_again_restarts_its_script(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        plan = FaultPlan(script=(502,))
        emulator.set_faults(plan)
        assert [outcome(session, emulator, [event()]) for _ in range(2)] == [502, 200]
        emulator.set_faults(plan)
        assert [outcome(session, emulator, [event()]) for _ in range(2)] == [502, 200]

    def test_v1_endpoints_consume_steps_too(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=(500, 503)))
        track = session.post(
            f"{emulator.url}/api/v1/customers/u1/events", json={"name": "a"}, timeout=HTTP_TIMEOUT
        )
        identify = session.put(f"{emulator.url}/api/v1/customers/u1", json={}, timeout=HTTP_TIMEOUT)
        assert (track.status_code, identify.status_code) == (500, 503)
        # The v1 endpoints' error shape.
        assert track.json()["meta"]["error"].startswith("500 ")
        assert post_batch(session, emulator, [event()]).status_code == 200

    def test_a_status_answer_keeps_the_connection_alive(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(FaultPlan(script=(503,)))
        host, port = emulator.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
        try:
            auth = basic_auth(emulator.site_id, emulator.api_key)
            headers = {"Authorization": auth, "Content-Type": "application/json"}
            body = json.dumps({"batch": [event()]})
            statuses = []
            for _ in range(2):
                conn.request("POST", "/api/v2/batch", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                sock = conn.sock
            assert statuses == [503, 200]
            assert conn.sock is sock
        finally:
            conn.close()


class TestStatusAnswers:
    @pytest.mark.parametrize(
        ("status", "reason", "retry_after"),
        [
            (400, "http_400", False),
            (401, "http_401", False),
            (408, "request_timeout", False),
            (413, "request_too_large", False),
            (429, "rate_limited", True),
            (500, "internal_error", False),
            (502, "bad_gateway", False),
            (503, "service_unavailable", True),
            (504, "gateway_timeout", False),
            (599, "http_599", False),
        ],
    )
    def test_body_and_retry_after(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        status: int,
        reason: str,
        retry_after: bool,
    ) -> None:
        emulator.set_faults(FaultPlan(script=(status,), retry_after=7))
        response = post_batch(session, emulator, [event(), event(1)])
        assert response.status_code == status
        [error] = response.json()["errors"]
        assert error["reason"] == reason
        assert error["message"].startswith(f"{status}")
        assert response.headers.get("Retry-After") == ("7" if retry_after else None)
        assert emulator.operations == []
        [recorded] = emulator.requests
        assert (recorded.status, recorded.op_count, recorded.errors) == (status, 2, [error])


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "header"),
        [
            (1, "1"),
            (0, "0"),
            (3.0, "3"),
            (2.5, "2.5"),
            (0.05, "0.05"),
            ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
    )
    @pytest.mark.parametrize("status", [429, 503])
    def test_header_value(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        value: float | str,
        header: str,
        status: int,
    ) -> None:
        emulator.set_faults(FaultPlan(script=(status,), retry_after=value))
        assert post_batch(session, emulator, [event()]).headers["Retry-After"] == header

    def test_http_date_round_trips(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        plan = FaultPlan(script=(429,), retry_after=email.utils.format_datetime(when, usegmt=True))
        emulator.set_faults(plan)
        header = post_batch(session, emulator, [event()]).headers["Retry-After"]
        assert email.utils.parsedate_to_datetime(header) == when

    def test_rate_limit_and_failure_rate_use_it(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(failure_rate=1.0, failure_statuses=(503,), retry_after=4))
        assert post_batch(session, emulator, [event()]).headers["Retry-After"] == "4"
        emulator.set_faults(FaultPlan(rate_limit=1, retry_after=4))
        assert post_batch(session, emulator, [event()]).status_code == 200
        limited = post_batch(session, emulator, [event()])
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "4")


class TestFailureRate:
    def test_same_seed_same_requests_same_statuses(self) -> None:
        plan = FaultPlan(seed=7, failure_rate=0.3)
        first = outcomes(plan, 200)
        assert outcomes(plan, 200) == first
        failures = sum(status != 200 for status in first)
        assert 0.2 <= failures / 200 <= 0.4
        assert set(first) == {200, 500, 503}

    def test_another_seed_gives_another_sequence(self) -> None:
        assert outcomes(FaultPlan(seed=1, failure_rate=0.5), 40) != outcomes(
            FaultPlan(seed=2, failure_rate=0.5), 40
        )

    def test_drops_are_reproducible_too(self) -> None:
        plan = FaultPlan(seed=3, failure_rate=0.2, drop_rate=0.2, drop_after_accept_rate=0.2)
        first = outcomes(plan, 60)
        assert outcomes(plan, 60) == first
        assert {200, DROPPED} <= set(first)

    def test_timing_of_the_rate_limit_does_not_shift_the_draws(self) -> None:
        unlimited = outcomes(FaultPlan(seed=5, failure_rate=0.5), 80)
        limited = outcomes(FaultPlan(seed=5, failure_rate=0.5, rate_limit=5), 80)
        assert 429 in limited
        assert [s for s, t in zip(limited, unlimited, strict=True) if s != 429] == [
            t for s, t in zip(limited, unlimited, strict=True) if s != 429
        ]

    def test_statuses_come_from_failure_statuses(self) -> None:
        got = outcomes(FaultPlan(failure_rate=1.0, failure_statuses=(502, 504)), 30)
        assert set(got) == {502, 504}

    def test_failed_requests_accept_nothing(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(failure_rate=1.0))
        for i in range(5):
            assert post_batch(session, emulator, [event(i)]).status_code in (500, 503)
        assert emulator.operations == []
        assert {r.fault for r in emulator.requests} == {"failure_rate"}


class TestDrop:
    @pytest.mark.parametrize(
        "plan", [FaultPlan(script=("drop",)), FaultPlan(drop_rate=1.0)], ids=["script", "rate"]
    )
    def test_client_sees_a_connection_error_and_nothing_is_accepted(
        self, emulator: TrackAPIEmulator, session: requests.Session, plan: FaultPlan
    ) -> None:
        emulator.set_faults(plan)
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            post_batch(session, emulator, [event(), event(1)])
        assert time.monotonic() - started < 1.0
        assert emulator.operations == []
        assert emulator.rejected == []
        [recorded] = emulator.requests
        assert (recorded.status, recorded.fault, recorded.op_count) == (0, "drop", 2)

    def test_no_byte_of_answer_is_sent(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(FaultPlan(script=("drop",)))
        host, port = emulator.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
        try:
            conn.request("POST", "/api/v2/batch", body=json.dumps({"batch": [event()]}))
            with pytest.raises(http.client.RemoteDisconnected):
                conn.getresponse()
        finally:
            conn.close()

    def test_the_next_request_gets_a_new_connection_and_an_answer(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=("drop",)))
        assert outcome(session, emulator, [event()]) == DROPPED
        assert post_batch(session, emulator, [event()]).status_code == 200


class TestDropAfterAccept:
    @pytest.mark.parametrize(
        "plan",
        [FaultPlan(script=("drop_after_accept",)), FaultPlan(drop_after_accept_rate=1.0)],
        ids=["script", "rate"],
    )
    def test_client_sees_an_error_but_the_ops_are_accepted(
        self, emulator: TrackAPIEmulator, session: requests.Session, plan: FaultPlan
    ) -> None:
        emulator.set_faults(plan)
        ops = [event(), event(1)]
        with pytest.raises(requests.ConnectionError):
            post_batch(session, emulator, ops)
        assert emulator.operations == ops
        [recorded] = emulator.requests
        assert (recorded.status, recorded.fault, recorded.op_count) == (0, "drop_after_accept", 2)

    def test_a_resend_shows_up_as_duplicate_ids(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=("drop_after_accept",)))
        ops = [event(), event(1)]
        assert outcome(session, emulator, ops) == DROPPED
        assert post_batch(session, emulator, ops).status_code == 200
        assert emulator.accepted_ids() == Counter({ulid(0): 2, ulid(1): 2})
        ids = emulator.accepted_ids()
        duplicates = sum(ids.values()) - len(ids)
        assert duplicates == sum(
            r.op_count for r in emulator.requests if r.fault == "drop_after_accept"
        )

    def test_the_unsent_answer_keeps_its_errors(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=("drop_after_accept",)))
        assert outcome(session, emulator, [event(), event(1, name="")]) == DROPPED
        [recorded] = emulator.requests
        assert [e["batch_index"] for e in recorded.errors] == [1]
        assert emulator.operations == [event()]


class TestRateLimit:
    LIMIT = 50

    def test_a_burst_over_the_limit_gets_429_then_requests_pass_again(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(rate_limit=self.LIMIT, retry_after=0.02))
        started = time.monotonic()
        passed = 0
        limited = None
        for i in range(10 * self.LIMIT):
            response = post_batch(session, emulator, [event(i)])
            if response.status_code == 429:
                limited = response
                break
            assert response.status_code == 200
            passed += 1
        elapsed = time.monotonic() - started
        assert limited is not None, "no 429 in a burst of ten times the limit"
        # A full bucket, plus what refilled while the burst ran.
        assert self.LIMIT <= passed <= self.LIMIT + self.LIMIT * elapsed + 1
        assert limited.headers["Retry-After"] == "0.02"
        assert limited.json()["errors"][0]["reason"] == "rate_limited"
        assert (emulator.requests[-1].status, emulator.requests[-1].fault) == (429, "rate_limit")
        assert len(emulator.operations) == passed

        deadline = time.monotonic() + HTTP_TIMEOUT
        waiter = threading.Event()
        while (status := post_batch(session, emulator, [event()]).status_code) == 429:
            assert time.monotonic() < deadline, "still limited long after the window"
            waiter.wait(float(limited.headers["Retry-After"]))
        assert status == 200

    def test_scripted_requests_take_no_token(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        # A bucket of one token refilling every 1000 s: only one request passes the limit.
        emulator.set_faults(FaultPlan(script=(503, 503), rate_limit=0.001))
        got = [outcome(session, emulator, [event()]) for _ in range(4)]
        assert got == [503, 503, 200, 429]


class TestDelay:
    def test_an_answer_takes_at_least_the_delay(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(delay=0.2))
        started = time.monotonic()
        assert post_batch(session, emulator, [event()]).status_code == 200
        assert time.monotonic() - started >= 0.2
        assert emulator.requests[0].fault == "delay"

    def test_faulted_answers_are_delayed_too(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(delay=0.2, script=(503, "drop")))
        started = time.monotonic()
        assert outcome(session, emulator, [event()]) == 503
        assert outcome(session, emulator, [event()]) == DROPPED
        assert time.monotonic() - started >= 0.4
        assert [r.fault for r in emulator.requests] == ["script", "drop"]

    def test_a_client_timeout_still_delivers_the_ops(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(delay=LONG_DELAY))
        with pytest.raises(requests.Timeout):
            post_batch(session, emulator, [event()], timeout=0.2)
        assert emulator.wait_for_operations(1, timeout=HTTP_TIMEOUT)

    def test_stop_during_a_delay_is_quick_and_closes_the_connection(self) -> None:
        arrived = threading.Event()

        def note_arrival(op: dict[str, Any]) -> None:
            arrived.set()

        emu = TrackAPIEmulator(faults=FaultPlan(delay=LONG_DELAY, reject_ops=note_arrival))
        emu.start()
        failed_at: list[float] = []

        def send() -> None:
            with open_session(emu) as s:
                try:
                    post_batch(s, emu, [event()], timeout=LONG_DELAY)
                except requests.ConnectionError:
                    failed_at.append(time.monotonic())

        sender = threading.Thread(target=send)
        sender.start()
        try:
            assert arrived.wait(HTTP_TIMEOUT)
            stopping = time.monotonic()
            emu.stop()
            assert time.monotonic() - stopping < 1.0
            sender.join(HTTP_TIMEOUT)
            assert not sender.is_alive()
            assert failed_at
            assert failed_at[0] - stopping < 1.0
            # The handler woke from its wait rather than sleeping it out.
            assert emu.wait_for_requests(1, timeout=HTTP_TIMEOUT)
        finally:
            emu.stop()
            sender.join(HTTP_TIMEOUT)
        [recorded] = emu.requests
        assert (recorded.status, recorded.fault) == (0, "delay")
        assert len(emu.operations) == 1


class TestTrickle:
    def test_the_whole_answer_arrives_one_byte_at_a_time(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(FaultPlan(trickle=0.002))
        body = json.dumps({"batch": [event()]}).encode()
        auth = basic_auth(emulator.site_id, emulator.api_key)
        conn = http.client.HTTPConnection(urlsplit(emulator.url).netloc, timeout=HTTP_TIMEOUT)
        started = time.monotonic()
        conn.request("POST", "/api/v2/batch", body, {"Authorization": auth})
        response = conn.getresponse()
        answer = response.read()
        elapsed = time.monotonic() - started
        conn.close()
        assert response.status == 200
        assert json.loads(answer) == {}
        # Every byte, status line and headers included, waited its turn.
        head = len(str(response.headers)) + len("HTTP/1.1 200 OK\r\n")
        assert elapsed >= (head + len(answer)) * 0.002
        [recorded] = emulator.requests
        assert (recorded.status, recorded.fault) == (200, "trickle")
        assert emulator.accepted_ids() == Counter({ulid(0): 1})

    def test_a_client_deadline_gives_up_and_the_ops_are_still_accepted(
        self, emulator: TrackAPIEmulator
    ) -> None:
        from customerio import CustomerIO

        from customerio_logging import DeliveryError
        from customerio_logging._delivery import SessionTransport

        emulator.set_faults(FaultPlan(trickle=0.05))
        client = CustomerIO(emulator.site_id, emulator.api_key, retries=0)
        transport = SessionTransport(client, emulator.url, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"no complete response .* within 0\.3s"):
            transport.send(json.dumps({"batch": [event()]}).encode())
        assert time.monotonic() - started < 1.0
        transport.close()
        assert emulator.accepted_ids() == Counter({ulid(0): 1})

    def test_stop_during_a_trickle_is_quick(self) -> None:
        emu = TrackAPIEmulator(faults=FaultPlan(trickle=LONG_DELAY)).start()
        outcome: list[str] = []

        def send() -> None:
            with open_session(emu) as s:
                try:
                    post_batch(s, emu, [event()], timeout=LONG_DELAY)
                except requests.ConnectionError as exc:
                    outcome.append(type(exc).__name__)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            assert emu.wait_for_requests(1, timeout=HTTP_TIMEOUT)
            stopping = time.monotonic()
            emu.stop()
            sender.join(HTTP_TIMEOUT)
            assert time.monotonic() - stopping < 1.0
        finally:
            emu.stop()
            sender.join(HTTP_TIMEOUT)
        assert outcome == ["ConnectionError"]


class TestMaxRequestBytes:
    LIMIT = 1000

    @pytest.mark.parametrize(("size", "status"), [(LIMIT - 1, 200), (LIMIT, 200), (LIMIT + 1, 413)])
    def test_threshold(
        self, emulator: TrackAPIEmulator, session: requests.Session, size: int, status: int
    ) -> None:
        emulator.set_faults(FaultPlan(max_request_bytes=self.LIMIT))
        response = session.post(
            f"{emulator.url}/api/v2/batch", data=padded_body(size), timeout=HTTP_TIMEOUT
        )
        assert response.status_code == status
        [recorded] = emulator.requests
        if status == 413:
            [error] = response.json()["errors"]
            assert error["reason"] == "request_too_large"
            assert f"the limit is {self.LIMIT}" in error["message"]
            assert emulator.operations == []
            assert recorded.fault == "max_request_bytes"
        else:
            assert len(emulator.operations) == 1
            assert recorded.fault is None

    def test_over_the_real_limit_is_no_fault(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(max_request_bytes=self.LIMIT))
        response = session.post(
            f"{emulator.url}/api/v2/batch",
            data=padded_body(MAX_REQUEST_BYTES + 1),
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 413
        assert f"the limit is {MAX_REQUEST_BYTES}" in response.json()["errors"][0]["message"]
        assert emulator.requests[0].fault is None

    def test_v1_endpoints_get_it_in_their_shape(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(max_request_bytes=10))
        response = session.post(
            f"{emulator.url}/api/v1/customers/u1/events",
            json={"name": "long enough"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 413
        assert "the limit is 10" in response.json()["meta"]["error"]
        assert emulator.requests[0].fault == "max_request_bytes"


class TestRejectOps:
    def test_207_names_exactly_the_refused_ops_and_accepts_the_rest(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        seen: list[str] = []

        def refuse_bad(op: dict[str, Any]) -> str | None:
            seen.append(op["name"])
            return "blocked_by_test" if op["name"].startswith("bad") else None

        emulator.set_faults(FaultPlan(reject_ops=refuse_bad))
        ops = [
            event(0, "ok1"),
            event(1, "bad1"),
            event(2, ""),  # invalid on its own: refused by validation, never shown to the plan
            event(3, "ok2"),
            event(4, "bad2"),
        ]
        response = post_batch(session, emulator, ops)
        assert response.status_code == 207
        errors = response.json()["errors"]
        assert [(e["batch_index"], e["reason"], e["field"]) for e in errors] == [
            (1, "blocked_by_test", "operation"),
            (2, "invalid_name", "name"),
            (4, "blocked_by_test", "operation"),
        ]
        assert all(e["message"] for e in errors)
        assert emulator.operations == [ops[0], ops[3]]
        assert seen == ["ok1", "bad1", "ok2", "bad2"]
        assert [(r["operation"]["name"], r["reason"], r["status"]) for r in emulator.rejected] == [
            ("bad1", "blocked_by_test", 207),
            ("", "invalid_name", 207),
            ("bad2", "blocked_by_test", 207),
        ]
        assert emulator.requests[0].fault == "reject_ops"

    def test_refusing_nothing_is_a_plain_200(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(reject_ops=lambda op: None))
        assert post_batch(session, emulator, [event()]).status_code == 200
        assert emulator.requests[0].fault is None

    def test_v1_refusal_is_a_400(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(reject_ops=lambda op: "nope"))
        response = session.post(
            f"{emulator.url}/api/v1/customers/u1/events", json={"name": "a"}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 400
        assert "nope" in response.json()["meta"]["error"]
        assert emulator.operations == []
        assert [(r["reason"], r["status"]) for r in emulator.rejected] == [("nope", 400)]
        assert emulator.requests[0].fault == "reject_ops"


class TestSetFaults:
    def test_none_restores_normal_behaviour(self) -> None:
        with TrackAPIEmulator(faults=FaultPlan(failure_rate=1.0)) as emu, open_session(emu) as s:
            assert post_batch(s, emu, [event()]).status_code in (500, 503)
            emu.set_faults(None)
            assert emu.faults is None
            assert post_batch(s, emu, [event()]).status_code == 200
        assert [r.fault for r in emu.requests] == ["failure_rate", None]
        assert len(emu.operations) == 1

    def test_a_plan_takes_effect_on_the_next_request(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        assert post_batch(session, emulator, [event()]).status_code == 200
        plan = FaultPlan(script=(503,))
        emulator.set_faults(plan)
        assert emulator.faults is plan
        assert post_batch(session, emulator, [event()]).status_code == 503

    def test_reset_keeps_the_plan(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=(503, 502)))
        assert post_batch(session, emulator, [event()]).status_code == 503
        emulator.reset()
        assert post_batch(session, emulator, [event()]).status_code == 502

    def test_switching_plans_while_requests_run_is_safe(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        failing = FaultPlan(failure_rate=1.0, failure_statuses=(503,))
        done = threading.Event()

        def flip() -> None:
            while not done.is_set():
                emulator.set_faults(failing)
                emulator.set_faults(None)

        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            got = [outcome(session, emulator, [event(i)]) for i in range(100)]
        finally:
            done.set()
            flipper.join(HTTP_TIMEOUT)
        assert set(got) <= {200, 503}
        assert len(emulator.requests) == 100
        assert len(emulator.operations) == got.count(200)


class TestUnfaultedRoutes:
    @pytest.mark.parametrize(
        "plan",
        [
            FaultPlan(script=("drop", 503)),
            FaultPlan(failure_rate=1.0),
            FaultPlan(drop_rate=1.0),
            FaultPlan(drop_after_accept_rate=1.0),
            FaultPlan(rate_limit=0.001),
            FaultPlan(delay=LONG_DELAY),
        ],
        ids=["script", "failure", "drop", "drop-after-accept", "rate-limit", "delay"],
    )
    def test_region_endpoint_is_never_faulted(
        self, emulator: TrackAPIEmulator, session: requests.Session, plan: FaultPlan
    ) -> None:
        emulator.set_faults(plan)
        started = time.monotonic()
        for _ in range(3):
            response = get_region(session, emulator)
            assert response.status_code == 200
            assert response.json()["url"] == emulator.url
        assert time.monotonic() - started < 1.0
        assert [(r.status, r.fault) for r in emulator.requests] == [(200, None)] * 3

    def test_region_requests_do_not_consume_the_script(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=(503,)))
        assert get_region(session, emulator).status_code == 200
        assert post_batch(session, emulator, [event()]).status_code == 503

    def test_unknown_routes_are_not_faulted(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=(503,), failure_rate=1.0))
        assert session.get(f"{emulator.url}/nowhere", timeout=HTTP_TIMEOUT).status_code == 404
        assert emulator.requests[0].fault is None


class TestRecordedFault:
    @pytest.mark.parametrize(
        ("plan", "status", "fault"),
        [
            (FaultPlan(), 200, None),
            (FaultPlan(script=(502,)), 502, "script"),
            (FaultPlan(failure_rate=1.0, failure_statuses=(500,)), 500, "failure_rate"),
            (FaultPlan(script=("drop",)), 0, "drop"),
            (FaultPlan(drop_rate=1.0), 0, "drop"),
            (FaultPlan(script=("drop_after_accept",)), 0, "drop_after_accept"),
            (FaultPlan(drop_after_accept_rate=1.0), 0, "drop_after_accept"),
            (FaultPlan(delay=0.01), 200, "delay"),
            (FaultPlan(trickle=0.0005), 200, "trickle"),
            (FaultPlan(trickle=0.0005, delay=0.01), 200, "trickle"),
            (FaultPlan(max_request_bytes=10), 413, "max_request_bytes"),
            (FaultPlan(reject_ops=lambda op: "no"), 207, "reject_ops"),
            # The fault that shaped the answer wins over the delay that held it back.
            (FaultPlan(script=(503,), delay=0.01), 503, "script"),
        ],
        ids=lambda value: repr(value) if not isinstance(value, FaultPlan) else "plan",
    )
    def test_fault_and_status(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        plan: FaultPlan,
        status: int,
        fault: str | None,
    ) -> None:
        emulator.set_faults(plan)
        assert outcome(session, emulator, [event(), event(1)]) == status
        [recorded] = emulator.requests
        assert (recorded.status, recorded.fault, recorded.op_count) == (status, fault, 2)

    def test_rate_limit(self, emulator: TrackAPIEmulator, session: requests.Session) -> None:
        emulator.set_faults(FaultPlan(rate_limit=0.001))
        assert [outcome(session, emulator, [event()]) for _ in range(2)] == [200, 429]
        assert [r.fault for r in emulator.requests] == [None, "rate_limit"]


class TestAcceptedIds:
    def test_counts_each_accepted_id(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        assert emulator.accepted_ids() == Counter()
        identify = {"type": "person", "identifiers": {"id": "u1"}, "action": "identify"}
        post_batch(session, emulator, [event(0), event(1), event(0), identify, event(2, name="")])
        session.post(
            f"{emulator.url}/api/v1/customers/u1/events",
            json={"name": "a", "id": ulid(1)},
            timeout=HTTP_TIMEOUT,
        )
        ids = emulator.accepted_ids()
        assert isinstance(ids, Counter)
        assert ids == Counter({ulid(0): 2, ulid(1): 2})
        emulator.reset()
        assert emulator.accepted_ids() == Counter()


class TestWaitForRequests:
    def test_counts_dropped_requests(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        emulator.set_faults(FaultPlan(script=("drop",)))
        assert outcome(session, emulator, [event()]) == DROPPED
        assert emulator.wait_for_requests(1, timeout=0) is True
