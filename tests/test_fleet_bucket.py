"""The fleet's rate limit on a real Redis: one bucket and one 429 pause for every pacer,
and each process on its own, warned once, while Redis cannot be reached."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from customerio_logging._fleet_rate import FleetRate, fleet_burst
from customerio_logging._pacing import Pacer
from customerio_logging._redis_client import LONGEST_RETRY, REDIS_TIMEOUT, make_client, namespace
from customerio_logging.testing._redis import RedisServer

from .helpers import FakeClock, in_fork

PREFIX = namespace("site", "http://127.0.0.1:1")
RATE = 40.0


class Voices:
    """What a FleetRate said: its problems and its recoveries."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.backs: list[str] = []


def fleet(
    url: str,
    voices: Voices | None = None,
    *,
    rate: float = RATE,
    clock: FakeClock | None = None,
    client: redis.Redis | None = None,
) -> FleetRate:
    """A FleetRate on ``url``, as one process of the fleet would make it."""
    voices = voices or Voices()
    return FleetRate(
        url,
        prefix=PREFIX,
        rate=rate,
        on_problem=voices.problems.append,
        on_back=voices.backs.append,
        clock=clock or time.monotonic,
        client=client,
    )


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test's Redis, to look at the keys."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


class TestSharedBucket:
    def test_two_pacers_on_one_redis_share_the_rate(self, redis_server: RedisServer) -> None:
        pacers = [Pacer(RATE, shared=fleet(redis_server.url)) for _ in range(2)]
        grants = [0, 0]
        started = time.monotonic()
        end = started + 0.5

        def run(i: int) -> None:
            while time.monotonic() < end:
                assert pacers[i].acquire()
                grants[i] += 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        elapsed = time.monotonic() - started
        # Every grant lies within the run, by Redis's clock as by ours: a full bucket's
        # burst, plus the rate's worth of the run (one more for the clocks' rounding).
        # Each pacer on its own would allow that much alone.
        assert sum(grants) <= fleet_burst(RATE) + RATE * elapsed + 1, (grants, elapsed)
        assert min(grants) >= 1, grants

    def test_a_pause_from_one_process_holds_the_other(self, redis_server: RedisServer) -> None:
        one = Pacer(RATE, shared=fleet(redis_server.url))
        other_fleet = fleet(redis_server.url)
        one.pause(5.0)
        turn = other_fleet.take()
        assert turn is not None
        assert turn.paused
        assert 4.5 < turn.wait <= 5.0

    def test_a_shorter_pause_never_shortens_a_longer_one(self, redis_server: RedisServer) -> None:
        one, other = fleet(redis_server.url), fleet(redis_server.url)
        one.pause(5.0)
        other.pause(1.0)
        turn = other.take()
        assert turn is not None
        assert turn.paused
        assert turn.wait > 4.5
        other.pause(8.0)  # a longer one extends it
        turn = one.take()
        assert turn is not None
        assert turn.paused
        assert turn.wait > 7.5

    def test_the_deadline_ends_a_wait_the_fleet_asked_for(self, redis_server: RedisServer) -> None:
        fleet(redis_server.url).pause(5.0)
        pacer = Pacer(RATE, shared=fleet(redis_server.url))
        started = time.monotonic()
        pacer.set_deadline(started + 1.5)
        assert not pacer.acquire()
        assert 1.4 < time.monotonic() - started < 3.5

    def test_redis_is_not_asked_when_the_deadline_comes_sooner_than_its_timeout(
        self, hanging_redis: str
    ) -> None:
        voices = Voices()
        pacer = Pacer(1000.0, shared=fleet(hanging_redis, voices))
        started = time.monotonic()
        pacer.set_deadline(started + REDIS_TIMEOUT / 2)
        assert pacer.acquire()  # this process's own bucket: no Redis call to wait on
        took = time.monotonic() - started
        assert took < REDIS_TIMEOUT / 2, took
        assert voices.problems == []

    def test_a_pause_is_not_shared_when_the_deadline_comes_sooner_than_redis_s_timeout(
        self, hanging_redis: str
    ) -> None:
        voices = Voices()
        pacer = Pacer(1000.0, shared=fleet(hanging_redis, voices))
        started = time.monotonic()
        pacer.set_deadline(started + REDIS_TIMEOUT / 2)
        pacer.pause(30.0)  # a 429 met during the exit: held here, not told to Redis
        took = time.monotonic() - started
        assert took < REDIS_TIMEOUT / 2, took
        assert voices.problems == []
        assert not pacer.acquire()  # paused past the deadline

    def test_an_idle_bucket_and_an_ended_pause_leave_no_key(
        self, redis_server: RedisServer, direct: redis.Redis
    ) -> None:
        shared = fleet(redis_server.url)
        assert shared.take() == (0.0, False)
        shared.pause(0.5)
        bucket, pause = direct.pttl(f"{PREFIX}rate:bucket"), direct.pttl(f"{PREFIX}rate:pause")
        # The bucket lives as long as it takes to fill again (then absent is the same).
        assert 0 < bucket <= fleet_burst(RATE) / RATE * 1000 + 1000
        assert 0 < pause <= 500

    def test_the_fleet_pause_holds_this_process_even_if_redis_fails_during_it(
        self, redis_server: RedisServer
    ) -> None:
        fleet(redis_server.url).pause(5.0)
        clock = FakeClock()
        started = clock()

        def sleep(seconds: float) -> None:
            if not clock.sleeps:
                redis_server.stop()  # Redis goes away 0.1 s into the pause
                seconds = 0.1
            clock.sleep(seconds)

        pacer = Pacer(RATE, shared=fleet(redis_server.url), clock=clock, sleep=sleep)
        assert pacer.acquire()
        assert clock() - started >= 4.9, clock.sleeps


class TestRedisDown:
    def test_a_stopped_redis_paces_locally_warns_once_and_is_used_again_after_it_is_back(
        self, redis_server: RedisServer, direct: redis.Redis
    ) -> None:
        voices, clock = Voices(), FakeClock()
        pacer = Pacer(1000.0, shared=fleet(redis_server.url, voices, clock=clock))
        redis_server.stop()
        for _ in range(5):
            assert pacer.acquire()  # the local bucket: a burst of 1000
        [problem] = voices.problems
        assert f"127.0.0.1:{redis_server.port}" in problem
        assert "ConnectionError" in problem
        assert "not shared" in problem
        redis_server.restart()
        assert pacer.acquire()
        assert voices.backs == []  # still backing off: Redis not asked yet
        assert not direct.exists(f"{PREFIX}rate:bucket")
        clock.advance(1.0)
        assert pacer.acquire()
        assert direct.exists(f"{PREFIX}rate:bucket")
        [back] = voices.backs
        assert "answers again" in back
        assert len(voices.problems) == 1

    def test_the_backoff_doubles_up_to_its_ceiling_and_starts_over_after_a_success(
        self, redis_server: RedisServer
    ) -> None:
        voices, clock = Voices(), FakeClock()
        shared = fleet(redis_server.url, voices, clock=clock)
        redis_server.stop()
        for backoff in (1, 2, 4, 8, 16, 30):  # each try at the moment the last allowed
            assert shared.take() is None
            clock.advance(backoff)
        assert shared.take() is None  # the try after a 30 s wait: still down
        redis_server.start()
        clock.advance(LONGEST_RETRY - 0.1)
        assert shared.take() is None  # not asked before the 30 s are over
        clock.advance(0.1)
        assert shared.take() is not None
        redis_server.stop()
        assert shared.take() is None
        redis_server.start()
        clock.advance(1.0)  # a new outage starts from the first backoff again
        assert shared.take() is not None
        assert len(voices.problems) == 2
        assert len(voices.backs) == 2

    def test_a_refused_password_is_never_repeated(
        self, redis_server: RedisServer, direct: redis.Redis
    ) -> None:
        direct.config_set("requirepass", "the-right-one")
        voices = Voices()
        url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
        pacer = Pacer(1000.0, shared=fleet(url, voices))
        assert pacer.acquire()
        [problem] = voices.problems
        assert "hunter2" not in problem
        assert "Authentication" in problem
        assert f"redis://127.0.0.1:{redis_server.port}/0" in problem

    def test_a_redis_that_does_not_answer_costs_one_bounded_wait(self, hanging_redis: str) -> None:
        voices = Voices()
        client = make_client(hanging_redis, timeout=0.2)
        pacer = Pacer(1000.0, shared=fleet(hanging_redis, voices, client=client))
        started = time.monotonic()
        assert pacer.acquire()
        assert pacer.acquire()  # backing off: no second wait
        took = time.monotonic() - started
        assert 0.15 < took < 1.5, took
        [problem] = voices.problems
        assert "Timeout" in problem


class TestFork:
    def test_a_fork_child_takes_tokens_on_a_connection_of_its_own(
        self, redis_server: RedisServer
    ) -> None:
        client = make_client(redis_server.url)
        voices = Voices()
        shared = fleet(redis_server.url, voices, rate=1000.0, client=client)
        assert shared.take() is not None
        parent_id = client.client_id()
        parent_turns: list[object] = []

        def child() -> object:
            turns = [shared.take() for _ in range(20)]
            return {"id": client.client_id(), "ok": all(t is not None for t in turns)}

        def in_parent() -> None:
            parent_turns.extend(shared.take() for _ in range(20))

        code, result = in_fork(child, timeout=20, in_parent=in_parent)
        assert code == 0, result
        assert result["ok"]
        assert result["id"] != parent_id
        assert all(turn is not None for turn in parent_turns)
        assert client.client_id() == parent_id
        assert voices.problems == []
