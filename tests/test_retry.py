"""Delivery under failure: retries, Retry-After, the rate limit, 413 splits and 400 bisection.

Time is a fake clock: waits advance it instead of sleeping.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from customerio_logging import DeliveryError
from customerio_logging._delivery import Delivery
from customerio_logging._pacing import Pacer
from customerio_logging._retry import RetryPolicy, is_retryable, retry_after
from customerio_logging._wire import Operation, Response

from .helpers import FakeClock

START = 1000.0  # where each test's fake clock starts


def _ops(n: int, *, size: int = 20, bad: frozenset[int] = frozenset()) -> list[Operation]:
    return [
        Operation(
            id=f"{i:026d}",
            action="event",
            name="bad" if i in bad else "e",
            body=json.dumps({"i": i, "bad": i in bad, "pad": "x" * size}).encode(),
        )
        for i in range(n)
    ]


class Scripted:
    """A transport answering with a function of the body (or a script of answers)."""

    def __init__(self, answer: Callable[[list[dict[str, object]]], Response | Exception]) -> None:
        self.answer = answer
        self.bodies: list[bytes] = []
        self.accepted: Counter[int] = Counter()

    def send(self, body: bytes) -> Response:
        self.bodies.append(body)
        batch = json.loads(body)["batch"]
        result = self.answer(batch)
        if isinstance(result, Exception):
            raise result
        if result.status == 200:
            self.accepted.update(int(op["i"]) for op in batch)  # type: ignore[call-overload]
        return result

    def close(self) -> None:
        pass


def _script(
    *answers: Response | Exception,
) -> Callable[[list[dict[str, object]]], Response | Exception]:
    queue = list(answers)
    return lambda batch: queue.pop(0) if len(queue) > 1 else queue[0]


def _delivery(
    transport: Scripted, clock: FakeClock, *, rate: float = 1000.0, **policy: float
) -> Delivery:
    pacer = Pacer(rate, clock=clock, sleep=clock.sleep)
    options: dict[str, float] = {
        "max_retries": 5,
        "base_delay": 0.5,
        "max_delay": 30.0,
        "budget": 60.0,
        "max_retry_after": 60.0,
    }
    options.update(policy)
    retry = RetryPolicy(
        pacer=pacer,
        clock=clock,
        rng=random.Random(0),
        max_retries=int(options.pop("max_retries")),
        **options,
    )
    return Delivery(transport, pacer=pacer, policy=retry)


class TestRetryable:
    @pytest.mark.parametrize(
        ("status", "retried"),
        [
            (408, True),
            (429, True),
            (500, True),
            (502, True),
            (503, True),
            (504, True),
            (599, True),
            (501, False),
            (505, False),
            (400, False),
            (401, False),
            (403, False),
            (404, False),
            (413, False),
            (200, False),
            (207, False),
        ],
    )
    def test_statuses(self, status: int, retried: bool) -> None:
        assert is_retryable(status) is retried


class TestRetryAfter:
    def test_seconds(self) -> None:
        assert retry_after({"Retry-After": "3"}) == 3.0
        assert retry_after({"retry-after": " 1.5 "}) == 1.5

    def test_an_http_date(self) -> None:
        when = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
        now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
        header = {"Retry-After": format_datetime(when, usegmt=True)}
        assert retry_after(header, now=lambda: now) == pytest.approx(10.0)

    @pytest.mark.parametrize("value", ["soon", "", "-5"])
    def test_garbage_or_the_past(self, value: str) -> None:
        assert retry_after({"Retry-After": value}) in (None, 0.0)

    def test_absent(self) -> None:
        assert retry_after({}) is None


class TestRetries:
    def test_transient_failures_are_retried_with_growing_jittered_waits(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(500), Response(503), Response(502), Response(200)))
        report = _delivery(transport, clock).deliver(_ops(3))
        assert len(report.sent) == 3
        assert report.retried == 3
        assert len(transport.bodies) == 4
        first, second, third = clock.sleeps
        assert 0.25 <= first <= 0.5
        assert 0.5 <= second <= 1.0
        assert 1.0 <= third <= 2.0

    def test_network_errors_are_retried(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(DeliveryError("reset", status_code=None), Response(200)))
        report = _delivery(transport, clock).deliver(_ops(2))
        assert (len(report.sent), report.retried) == (2, 1)

    @pytest.mark.parametrize("status", [400, 404, 422, 501, 505])
    def test_permanent_failures_are_not_retried(self, status: int) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(status)))
        report = _delivery(transport, clock).deliver(_ops(1))
        assert len(report.failed) == 1
        assert (report.retried, len(transport.bodies)) == (0, 1)

    def test_retries_stop_at_max_retries_and_the_batch_fails(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(500)))
        report = _delivery(transport, clock, max_retries=3).deliver(_ops(2))
        assert len(transport.bodies) == 4
        assert report.retried == 3
        assert {f.reason for _, f in report.failed} == {"http_500"}

    def test_retries_stop_within_the_budget(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(503)))
        started = clock.now
        report = _delivery(transport, clock, max_retries=100, budget=10.0).deliver(_ops(1))
        assert len(report.failed) == 1
        assert clock.now - started <= 10.0
        assert len(transport.bodies) > 3

    def test_retry_after_is_honoured_and_capped(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(
            _script(
                Response(429, {"Retry-After": "7"}),
                Response(503, {"Retry-After": "500"}),
                Response(200),
            )
        )
        report = _delivery(transport, clock, max_retry_after=20.0).deliver(_ops(1))
        assert len(report.sent) == 1
        assert clock.sleeps[:2] == [7.0, 20.0]

    def test_a_429_pauses_every_request_not_only_its_batch(self) -> None:
        clock = FakeClock(START)
        pacer = Pacer(1000.0, clock=clock, sleep=clock.sleep)
        pacer.pause(5.0)
        started = clock.now
        assert pacer.acquire()
        assert clock.now - started >= 5.0

    def test_the_shutdown_deadline_ends_retrying(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(503)))
        delivery = _delivery(transport, clock, max_retries=100, budget=1e9)
        delivery.pacer.set_deadline(clock.now + 3.0)
        report = delivery.deliver(_ops(1))
        # Not failed: still deliverable, but the deadline came first. Counted dropped.
        assert (len(report.failed), len(report.dropped)) == (0, 1)
        assert "deadline" in (report.error or "")
        assert clock.now <= START + 3.0 + 1e-9

    @pytest.mark.parametrize("asked", ["0", "Mon, 01 Jan 1990 00:00:00 GMT"])
    def test_a_retry_after_of_zero_or_the_past_is_no_tight_loop(self, asked: str) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(503, {"Retry-After": asked}), Response(200)))
        report = _delivery(transport, clock).deliver(_ops(1))
        assert len(report.sent) == 1
        assert clock.sleeps[0] >= 0.25  # our own backoff, at least

    def test_a_long_retry_after_is_honoured_even_past_the_budget(self) -> None:
        clock = FakeClock(START)
        transport = Scripted(_script(Response(429, {"Retry-After": "60"}), Response(200)))
        report = _delivery(transport, clock, budget=60.0, max_retry_after=60.0).deliver(_ops(1))
        assert len(report.sent) == 1
        assert clock.sleeps[0] == 60.0


class TestPacer:
    def test_the_rate_limit_spaces_requests(self) -> None:
        clock = FakeClock(START)
        pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
        started = clock.now
        for _ in range(30):
            assert pacer.acquire()
        # A burst of 10, then one every 0.1 s.
        assert clock.now - started == pytest.approx(2.0, abs=0.05)

    def test_a_deadline_wakes_a_real_wait_at_once(self) -> None:
        pacer = Pacer(1.0)
        pacer.pause(60.0)
        done = threading.Event()

        def wait() -> None:
            pacer.acquire()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        started = time.monotonic()
        pacer.set_deadline(time.monotonic() + 0.05)
        assert done.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert pacer.expired()


class TestSplitting:
    def test_413_splits_until_each_body_fits(self) -> None:
        clock = FakeClock(START)
        limit = 400

        def answer(batch: list[dict[str, object]]) -> Response:
            return Response(413) if len(json.dumps({"batch": batch})) > limit else Response(200)

        transport = Scripted(answer)
        report = _delivery(transport, clock).deliver(_ops(20))
        assert len(report.sent) == 20
        assert transport.accepted == Counter(range(20))

    def test_one_operation_too_large_alone_fails_and_the_rest_go(self) -> None:
        clock = FakeClock(START)
        ops = [
            *_ops(3),
            Operation(
                id="9" * 26,
                action="event",
                name="big",
                body=b'{"i":99,"big":"' + b"x" * 500 + b'"}',
            ),
        ]

        def answer(batch: list[dict[str, object]]) -> Response:
            return Response(413) if any("big" in op for op in batch) else Response(200)

        report = _delivery(Scripted(answer), clock).deliver(ops)
        assert [op.id for op, _ in report.failed] == ["9" * 26]
        assert report.failed[0][1].reason == "request_too_large"
        assert len(report.sent) == 3

    def test_400_bisects_to_the_bad_operations(self) -> None:
        clock = FakeClock(START)
        bad = frozenset({3, 11})

        def answer(batch: list[dict[str, object]]) -> Response:
            if any(op["bad"] for op in batch):
                return Response(400, {}, b'{"errors":[{"reason":"invalid","message":"bad op"}]}')
            return Response(200)

        transport = Scripted(answer)
        report = _delivery(transport, clock).deliver(_ops(16, bad=bad))
        assert sorted(int(op.id) for op, _ in report.failed) == sorted(bad)
        assert len(report.sent) == 14
        assert transport.accepted == Counter(i for i in range(16) if i not in bad)

    @settings(max_examples=80, deadline=None)
    @given(
        n=st.integers(min_value=1, max_value=40),
        sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=40, max_size=40),
        bad=st.frozensets(st.integers(min_value=0, max_value=39), max_size=5),
        limit=st.integers(min_value=200, max_value=4000),
        flaky=st.lists(st.booleans(), min_size=1, max_size=30),
    )
    def test_splitting_and_retrying_never_lose_or_duplicate(
        self, n: int, sizes: list[int], bad: frozenset[int], limit: int, flaky: list[bool]
    ) -> None:
        assume(not all(flaky))  # then every 503 streak ends within max_retries
        clock = FakeClock(START)
        ops = [
            Operation(
                id=f"{i:026d}",
                action="event",
                name="e",
                body=json.dumps({"i": i, "bad": i in bad, "pad": "x" * sizes[i]}).encode(),
            )
            for i in range(n)
        ]
        failures = iter(flaky * 1000)

        def answer(batch: list[dict[str, object]]) -> Response:
            if len(json.dumps({"batch": batch}, separators=(",", ":"))) > limit:
                return Response(413)
            if next(failures):
                return Response(503)
            if any(op["bad"] for op in batch):
                return Response(400)
            return Response(200)

        transport = Scripted(answer)
        report = _delivery(transport, clock, max_retries=50, budget=1e9).deliver(ops)
        sent = Counter(int(op.id) for op in report.sent)
        failed = Counter(int(op.id) for op, _ in report.failed)
        # Every op ends exactly once, sent or failed.
        assert sent + failed == Counter(range(n))
        # What counts as sent is exactly what the server accepted, each once.
        assert transport.accepted == sent
        # Splitting only ever sends subsets: no body is larger than the first.
        assert all(len(body) <= len(transport.bodies[0]) for body in transport.bodies)
        # Only bad or alone-too-large ops fail.
        for i in failed:
            alone = len(b'{"batch":[' + ops[i].body + b"]}")
            assert i in bad or alone > limit
