"""FleetStorage: Redis first, the local file while Redis is down, and the move back.

The remote here is a second SQLite file behind a switch (the real Redis backend is tested
through the conformance suite and tests/test_fleet_backlog.py): these tests are about
routing, the outage's warning and backoff, and what moves where.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from customerio_logging._storage import SpoolBusyError, SpoolUnavailableError, Storage
from customerio_logging._storage.fleet import FIRST_RETRY, LOCAL_LOOK, LONGEST_RETRY, FleetStorage
from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import BIG, SITE, FakeClock, ids_of, make_letter, make_op


class Switched:
    """A storage that fails every call while ``down`` (as a Redis that stopped answering)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.down = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.down and name not in ("close", "reset_after_fork"):
                raise SpoolUnavailableError("Redis at redis://127.0.0.1:1/0 failed (refused)")
            return attribute(*args, **kwargs)

        return call

    @property
    def is_open(self) -> bool:
        return bool(self.inner.is_open)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.warnings: list[str] = []
        self.remote = Switched(SQLiteSpool(tmp_path / "redis.sqlite3", max_bytes=BIG, site_id=SITE))
        self.local = SQLiteSpool(tmp_path / "local.sqlite3", max_bytes=BIG, site_id=SITE)
        self.fleet = FleetStorage(
            self.remote,  # type: ignore[arg-type]
            self.local,
            location="redis://127.0.0.1:1/0",
            on_problem=self.warnings.append,
            clock=self.clock,
        )

    def close(self) -> None:
        self.fleet.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def ops(prefix: str, count: int) -> list[Any]:
    return [make_op(f"{prefix}{i:04d}") for i in range(count)]


def remote_ids(rig: Rig) -> list[str]:
    return ids_of(rig.remote.inner.claim(10_000, max_bytes=1 << 40))


class TestRoutes:
    def test_with_redis_up_nothing_is_written_locally(self, rig: Rig) -> None:
        rig.fleet.add(ops("a", 3))
        rig.fleet.add(ops("r", 2), lease=True)
        claimed = rig.fleet.claim(10)
        rig.fleet.ack(ids_of(claimed))
        rig.fleet.ack(["r0000", "r0001"])
        assert ids_of(claimed) == ["a0000", "a0001", "a0002"]
        assert rig.local.pending() == 0
        assert rig.fleet.pending() == 0
        assert rig.warnings == []

    def test_while_redis_is_down_writes_go_to_the_local_file_with_one_warning(
        self, rig: Rig
    ) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 2))
        rig.remote.calls.clear()
        rig.fleet.add(ops("b", 2))
        rig.fleet.add(ops("c", 2))
        assert rig.remote.calls == []  # not tried again before its backoff ends
        assert rig.local.pending() == 6
        assert len(rig.warnings) == 1
        assert "Using the local spool on this host until Redis answers again" in rig.warnings[0]

    def test_the_next_try_waits_a_doubling_backoff(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("x", 1))
        waits = []
        for _ in range(7):
            tried, start = len(rig.remote.calls), rig.clock()
            while len(rig.remote.calls) == tried:
                rig.clock.advance(0.25)
                rig.fleet.add(ops("x", 1))
            waits.append(rig.clock() - start)
        assert waits[0] == pytest.approx(FIRST_RETRY, abs=0.25)
        assert waits[1] == pytest.approx(2 * FIRST_RETRY, abs=0.25)
        assert max(waits) == pytest.approx(LONGEST_RETRY, abs=0.25)
        assert len(rig.warnings) == 1

    def test_a_log_call_s_write_never_tries_a_redis_that_is_down(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 1))
        rig.clock.advance(10 * LONGEST_RETRY)
        rig.remote.calls.clear()
        rig.fleet.add(ops("b", 1), wait=0.05, open_file=False)
        rig.fleet.dead_letter([make_letter("b0000")], wait=0.05)
        assert rig.remote.calls == []
        assert rig.local.pending() == 1

    def test_what_piled_up_locally_moves_to_redis_once_it_answers(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 5))
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.add(ops("b", 1))  # Redis answers again
        claimed = rig.fleet.claim(3)
        assert ids_of(claimed) == ["b0000", "a0000", "a0001"]  # moved rows join Redis's tail
        assert rig.local.pending() == 0
        assert rig.remote.inner.pending() == 6
        assert rig.warnings[-1].startswith("Redis at redis://127.0.0.1:1/0 answers again")

    def test_an_earlier_process_s_local_rows_move_too(self, tmp_path: Path) -> None:
        earlier = SQLiteSpool(tmp_path / "local.sqlite3", max_bytes=BIG, site_id=SITE)
        earlier.add(ops("old", 4))
        earlier.close()
        rig = Rig(tmp_path)
        try:
            assert len(rig.fleet.claim(10)) == 4
            assert rig.local.pending() == 0
        finally:
            rig.close()

    def test_while_redis_is_down_replay_claims_and_settles_locally(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 4))
        claimed = rig.fleet.claim(4)
        assert ids_of(claimed) == ["a0000", "a0001", "a0002", "a0003"]
        rig.fleet.ack(["a0000"])
        rig.fleet.release(["a0001"])
        rig.fleet.dead_letter([make_letter("a0002")])
        assert rig.local.pending() == 2  # a0001 released, a0003 still claimed
        assert [row.id for row in rig.local.dead_letters()] == ["a0002"]
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.ack(["a0003"])  # held locally: settled there, Redis never asked
        assert rig.local.pending() == 1
        assert "ack" not in rig.remote.calls[-1:]

    def test_reservations_made_during_an_outage_are_acked_in_the_local_file(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("r", 3), lease=True)
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.ack(["r0000", "r0001", "r0002"])
        assert rig.local.pending() == 0

    def test_a_failed_move_gives_the_rows_back_to_the_local_file(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 3))
        rig.clock.advance(LONGEST_RETRY)
        assert ids_of(rig.fleet.claim(2)) == ["a0000", "a0001"]  # still down: locally
        rig.fleet.release(["a0000", "a0001"])
        assert rig.local.pending() == 3
        assert rig.local.claim(10) != []  # nothing left leased by the failed move

    def test_without_a_local_file_redis_errors_are_the_caller_s(self, tmp_path: Path) -> None:
        remote = Switched(SQLiteSpool(tmp_path / "redis.sqlite3", max_bytes=BIG, site_id=SITE))
        fleet = FleetStorage(remote, None, location="redis://x")  # type: ignore[arg-type]
        remote.down = True
        with pytest.raises(SpoolUnavailableError):
            fleet.add(ops("a", 1))
        with pytest.raises(SpoolUnavailableError):
            fleet.add(ops("a", 1))  # no backoff without a fallback: each call tries
        fleet.close()

    def test_a_busy_redis_is_busy_not_down(self, rig: Rig) -> None:
        def busy(*args: Any, **kwargs: Any) -> int:
            raise SpoolBusyError("busy")

        rig.remote.inner.add = busy  # type: ignore[method-assign]
        with pytest.raises(SpoolBusyError):
            rig.fleet.add(ops("a", 1), wait=0.05, open_file=False)
        assert not rig.fleet.remote_down
        assert rig.warnings == []

    def test_a_forked_child_holds_nothing_and_tries_redis_at_once(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("r", 2), lease=True)
        rig.fleet.reset_after_fork()
        assert not rig.fleet.remote_down
        rig.remote.down = False
        rig.fleet.ack(["r0000"])  # not held by the child: Redis's
        assert rig.local.pending() == 2


class TestAcksWhileDown:
    def test_an_ack_of_redis_s_rows_waits_for_redis_without_calling_it(self, rig: Rig) -> None:
        rig.fleet.add(ops("a", 3))
        claimed = ids_of(rig.fleet.claim(3))
        rig.remote.down = True
        rig.fleet.add(ops("b", 1))  # Redis fails: taken as down
        rig.remote.calls.clear()
        rig.fleet.ack(claimed)
        rig.fleet.release(claimed)
        assert rig.remote.calls == []
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.claim(10)  # a try of the library's thread: Redis answers, the acks go
        assert rig.remote.inner.pending() == 1  # b0000 only, moved from the local file


class TestMovedRowsEvicted:
    """Rows moved from the local file may make Redis evict its oldest: those events are
    lost, and like any eviction they are counted and said."""

    def test_redis_s_evictions_during_a_move_are_told(self, tmp_path: Path) -> None:
        remote = Switched(SQLiteSpool(tmp_path / "redis.sqlite3", max_bytes=BIG, site_id=SITE))
        local = SQLiteSpool(tmp_path / "local.sqlite3", max_bytes=BIG, site_id=SITE)
        real_add = remote.inner.add

        def full(ops: Any, **kwargs: Any) -> int:
            real_add(ops, **kwargs)
            return 7  # as a Redis at its bound: its 7 oldest gone to take these

        remote.inner.add = full  # type: ignore[method-assign]
        evicted: list[int] = []
        fleet = FleetStorage(
            remote,  # type: ignore[arg-type]
            local,
            location="redis://127.0.0.1:1/0",
            on_evicted=evicted.append,
        )
        try:
            local.add(ops("a", 3))  # left by an outage
            fleet.claim(1)
            assert local.pending() == 0
            assert evicted == [7]
        finally:
            fleet.close()


class TestAReservationGivenUpInRedis:
    def test_its_ack_reaches_the_row_that_was_sent(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("r", 1), lease=True)  # durability="disk" during the outage
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.add(ops("r", 1))  # the queue gave up on it: to Redis, for replay
        claimed = rig.fleet.claim(10)
        assert ids_of(claimed) == ["r0000"]  # Redis's row (the local one stays reserved)
        rig.fleet.ack(ids_of(claimed))
        assert rig.remote.inner.pending() == 0  # not left claimed, to be sent again
        assert rig.local.pending() == 0


class TestRowsAnotherProcessLeftLocally:
    def test_are_moved_to_redis_at_the_next_look(self, rig: Rig, tmp_path: Path) -> None:
        assert rig.fleet.claim(10) == []  # the local file looked at: nothing there
        # A cron job on this host met a Redis that was down, spooled locally, and ended
        # before Redis answered again: only this long-running process is left to move them.
        other = SQLiteSpool(tmp_path / "local.sqlite3", max_bytes=BIG, site_id=SITE)
        other.add(ops("c", 3))
        other.close()
        rig.clock.advance(LOCAL_LOOK)
        assert ids_of(rig.fleet.claim(10)) == ["c0000", "c0001", "c0002"]
        assert rig.local.pending() == 0


class TestALogCallAfterAnOutage:
    def test_never_makes_the_calls_that_wait_for_redis_to_answer_again(self, rig: Rig) -> None:
        rig.fleet.add(ops("a", 2))
        claimed = ids_of(rig.fleet.claim(2))
        real_add = rig.remote.inner.add

        def add_while_another_thread_meets_an_outage(batch: Any, **kwargs: Any) -> int:
            # Meanwhile the dispatch thread's call fails, and it acks while Redis is down.
            rig.fleet._failed(SpoolUnavailableError("Redis at redis://127.0.0.1:1/0 failed"))
            rig.fleet.ack(claimed)
            return int(real_add(batch, **kwargs))

        rig.remote.inner.add = add_while_another_thread_meets_an_outage  # type: ignore[method-assign]
        rig.remote.calls.clear()
        rig.fleet.add(ops("b", 1), wait=0.05, open_file=False)  # a durability="disk" call
        assert rig.remote.calls == ["add"]  # the waiting acks are not its to make...
        rig.clock.advance(LONGEST_RETRY)
        rig.fleet.claim(10)  # ...but the library's thread's, as Redis answers
        assert "ack" in rig.remote.calls
        assert rig.remote.inner.pending() == 1


class TestBusyAndLetters:
    def test_a_busy_redis_leaves_the_write_to_an_open_local_file(self, rig: Rig) -> None:
        def busy(*args: Any, **kwargs: Any) -> int:
            raise SpoolBusyError("busy")

        rig.local.prepare()
        rig.remote.inner.add = busy  # type: ignore[method-assign]
        rig.fleet.add(ops("a", 2), wait=0.05)
        assert rig.local.pending() == 2
        assert not rig.fleet.remote_down
        assert rig.warnings == []

    def test_dead_letters_set_aside_locally_during_an_outage_move_to_redis(self, rig: Rig) -> None:
        rig.remote.down = True
        rig.fleet.add(ops("a", 2))
        claimed = rig.fleet.claim(2)
        rig.fleet.dead_letter([make_letter(op.id) for op in claimed])
        assert [row.id for row in rig.local.dead_letters()] == ["a0000", "a0001"]
        rig.remote.down = False
        rig.clock.advance(LONGEST_RETRY)
        assert rig.fleet.claim(10) == []
        assert [row.id for row in rig.fleet.dead_letters()] == ["a0000", "a0001"]
        assert list(rig.local.dead_letters()) == []
