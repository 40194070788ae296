"""What every Storage backend must do, written against the protocol alone.

Each test runs once per backend in ``BACKENDS`` (SQLite and Redis): a new backend adds
its factory there and inherits the whole contract. Time is an injected clock.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from customerio_logging import Settings
from customerio_logging._storage import (
    CALLER_WAIT,
    DeadLetterRow,
    SpoolBusyError,
    Storage,
    open_storage,
)
from customerio_logging._storage.fleet import FleetStorage
from customerio_logging._storage.leases import FRESH_LEASE, REPLAY_LEASE
from customerio_logging._storage.redis import RedisStorage
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation, batch_body
from customerio_logging.testing._redis import RedisServer

from ..helpers import (
    BIG,
    SITE,
    URL,
    FakeClock,
    foreign_bytes,
    ids_of,
    in_fork,
    make_letter,
    make_op,
)


class _Factory(Protocol):
    def __call__(
        self, request: pytest.FixtureRequest, *, max_bytes: int, clock: Callable[[], float]
    ) -> Storage: ...


def _sqlite(
    request: pytest.FixtureRequest, *, max_bytes: int, clock: Callable[[], float]
) -> Storage:
    place: Path = request.getfixturevalue("tmp_path")
    return SQLiteSpool(place / "spool.sqlite3", max_bytes=max_bytes, site_id=SITE, clock=clock)


def _redis(
    request: pytest.FixtureRequest, *, max_bytes: int, clock: Callable[[], float]
) -> Storage:
    server: RedisServer = request.getfixturevalue("shared_redis")
    # The same workspace, and an API host of the test's own: a namespace of its own.
    host = f"https://{request.node.nodeid}"
    return RedisStorage(server.url, max_bytes=max_bytes, site_id=SITE, track_url=host, clock=clock)


def _fleet(
    request: pytest.FixtureRequest, *, max_bytes: int, clock: Callable[[], float]
) -> Storage:
    """Redis with the file as its fallback, as ``open_storage`` makes it for redis_url."""
    local = _sqlite(request, max_bytes=max_bytes, clock=clock)
    remote = _redis(request, max_bytes=max_bytes, clock=clock)
    return FleetStorage(remote, local, location="redis://127.0.0.1/0")


BACKENDS: dict[str, _Factory] = {"fleet": _fleet, "redis": _redis, "sqlite": _sqlite}
"""Each backend's factory: a storage of the test's own (a file in its folder, keys in a
namespace of its own), the same for every storage the test makes. A factory asks for
the fixtures it needs."""


@pytest.fixture(params=sorted(BACKENDS))
def factory(request: pytest.FixtureRequest) -> _Factory:
    return BACKENDS[request.param]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def new_storage(
    factory: _Factory, request: pytest.FixtureRequest, clock: FakeClock
) -> Iterator[Callable[..., Storage]]:
    """Storages on one shared place (as several processes would see it), closed at the end."""
    made: list[Storage] = []

    def make(*, max_bytes: int = BIG) -> Storage:
        storage = factory(request, max_bytes=max_bytes, clock=clock)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


class TestSurface:
    """Every method and property of the protocol, with the protocol's parameters."""

    def test_every_member_is_there_with_the_same_parameters(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage()
        members = [name for name in vars(Storage) if not name.startswith("_")]
        assert "claim" in members
        for name in members:
            expected = inspect.getattr_static(Storage, name)
            found = inspect.getattr_static(type(storage), name)
            if isinstance(expected, property):
                assert isinstance(found, property), name
                continue
            wanted = inspect.signature(expected).parameters.values()
            got = inspect.signature(found).parameters.values()
            assert [(p.name, p.kind) for p in got] == [(p.name, p.kind) for p in wanted], name


class TestContract:
    """Add, claim with a lease, ack, release, dead letter and status: the round trips."""

    def test_what_goes_in_comes_out_exactly_oldest_first(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage()
        ops = [make_op("c"), Operation("a", "identify", None, bytes(range(256))), make_op("b")]
        assert storage.add(ops[:2]) == 0
        storage.add(ops[2:])
        assert storage.claim(10) == ops
        assert storage.pending() == 3  # claimed rows still wait until acked

    def test_a_claim_holds_its_rows_until_its_lease_ends(
        self, new_storage: Callable[..., Storage], clock: FakeClock
    ) -> None:
        storage, other = new_storage(), new_storage()
        storage.add([make_op("a"), make_op("b")])
        assert ids_of(storage.claim(1)) == ["a"]
        assert ids_of(other.claim(10)) == ["b"]  # two claimers never get the same row
        assert storage.claim(10) == other.claim(10) == []
        clock.advance(REPLAY_LEASE - 1)
        assert storage.claim(10) == []
        clock.advance(1)
        assert ids_of(other.claim(10)) == ["a", "b"]

    def test_ack_removes_and_release_gives_back(self, new_storage: Callable[..., Storage]) -> None:
        storage = new_storage()
        storage.add([make_op("a"), make_op("b"), make_op("c")])
        storage.claim(3)
        storage.ack(["a", "unknown"])
        storage.release(["b", "unknown"])
        storage.ack([])
        storage.release([])
        assert storage.pending() == 2
        assert ids_of(storage.claim(10)) == ["b"]  # c is still leased

    def test_a_reservation_waits_for_its_long_lease_or_a_plain_add(
        self, new_storage: Callable[..., Storage], clock: FakeClock
    ) -> None:
        storage = new_storage()
        storage.add([make_op("a"), make_op("b")], lease=True)
        clock.advance(REPLAY_LEASE + 1)
        assert storage.claim(10) == []
        assert storage.status().leased == 2
        storage.add([make_op("a")])  # the queue gave up on it: released to replay
        assert storage.pending() == 2  # one row per id
        assert ids_of(storage.claim(10)) == ["a"]
        storage.ack(["a"])
        clock.advance(FRESH_LEASE - REPLAY_LEASE - 2)  # its last second
        assert storage.claim(10) == []
        clock.advance(1)
        assert ids_of(storage.claim(10)) == ["b"]

    def test_a_claim_fits_one_batch_body(self, new_storage: Callable[..., Storage]) -> None:
        storage = new_storage()
        ops = [make_op(f"o{i}", 100) for i in range(3)]
        storage.add(ops)
        assert storage.claim(10, max_bytes=len(batch_body(ops)) - 1) == ops[:2]
        assert storage.claim(0) == []
        big = make_op("big", 500)
        storage.add([big])
        assert storage.claim(10, max_bytes=100) == [ops[2]]  # order is kept
        assert storage.claim(10, max_bytes=100) == [big]  # alone, however large

    def test_past_its_bound_the_oldest_go_and_are_counted(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage(max_bytes=1000)
        assert storage.add([make_op(f"o{i:02d}", 100) for i in range(10)]) == 0
        evicted = storage.add([make_op("new", 100)])
        assert evicted > 0
        status = storage.status()
        assert status.bytes <= status.max_bytes == 1000
        assert ids_of(storage.claim(100))[-1] == "new"
        assert status.pending == 11 - evicted

    def test_a_dead_letter_keeps_why_and_can_be_requeued(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage()
        storage.add([make_op("a")])
        storage.claim(10)
        invalid = DeadLetterRow(
            0, None, None, None, "invalid_event", "user_id", "missing", 2.0, None
        )
        assert storage.dead_letter([make_letter("a", body=b'{"a":1}'), invalid]) == 0
        assert storage.pending() == 0  # the waiting row went with it
        sent, never = storage.dead_letters()
        assert sent == dataclasses.replace(make_letter("a", body=b'{"a":1}'), seq=sent.seq)
        assert never == dataclasses.replace(invalid, seq=never.seq)
        assert sent.seq < never.seq
        assert storage.status().dead_letters == 2
        assert storage.requeue(reason="http_400") == 1
        assert storage.claim(10) == [Operation("a", "event", "n", b'{"a":1}')]
        assert [r.reason for r in storage.dead_letters(limit=5)] == ["invalid_event"]
        assert storage.purge_dead_letters() == 1
        assert storage.purge() == 1
        assert (storage.pending(), storage.status().dead_letters) == (0, 0)

    def test_status_counts_what_is_held(
        self, new_storage: Callable[..., Storage], clock: FakeClock
    ) -> None:
        storage = new_storage(max_bytes=5000)
        storage.add([make_op("a", 100), make_op("b", 50)])
        clock.advance(10)
        storage.add([make_op("c", 25)])
        storage.claim(1)
        status = storage.status()
        assert (status.pending, status.leased, status.bytes, status.max_bytes) == (3, 1, 175, 5000)
        assert (status.oldest, status.newest) == (clock.now - 10, clock.now)
        assert status.site_id == SITE


class TestOpening:
    """Opened on first use or by prepare; a call that may not open says busy, writes nothing."""

    def test_prepare_opens_close_closes_and_use_opens_again(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage()
        assert not storage.is_open
        storage.prepare()
        assert storage.is_open
        storage.add([make_op("a")])
        storage.close()
        storage.close()
        assert not storage.is_open
        assert storage.pending() == 1
        storage.reset_after_fork()  # in the process that opened it: nothing to do
        assert storage.is_open

    @pytest.mark.parametrize(
        "options",
        [{"wait": CALLER_WAIT}, {"wait": CALLER_WAIT, "open_file": False}, {"open_file": False}],
        ids=["a-wait", "a-wait-and-no-open", "no-open"],
    )
    def test_a_call_that_may_not_open_is_busy_and_writes_nothing(
        self, new_storage: Callable[..., Storage], options: dict[str, Any]
    ) -> None:
        storage = new_storage()
        with pytest.raises(SpoolBusyError):
            storage.add([make_op("a")], **options)
        with pytest.raises(SpoolBusyError):
            storage.dead_letter([make_letter("a")], **options)
        assert storage.pending() == 0
        assert storage.status().dead_letters == 0
        storage.add([make_op("a")], **options)  # open now: the same call goes through
        assert storage.pending() == 1

    def test_a_forked_child_uses_its_own_connection(
        self, new_storage: Callable[..., Storage]
    ) -> None:
        storage = new_storage()
        storage.add([make_op("a"), make_op("b")])
        assert ids_of(storage.claim(1)) == ["a"]

        def child() -> object:
            storage.reset_after_fork()
            storage.add([make_op("c")])
            return {"open": storage.is_open, "claimed": ids_of(storage.claim(10))}

        assert in_fork(child, timeout=30.0) == (0, {"open": True, "claimed": ["b", "c"]})
        storage.ack(["a"])
        assert ids_of(storage.claim(10)) == ["b", "c"]  # the child is gone: at once


class TestOpenStorage:
    """The bridge's factory: the backend the settings ask for, or none."""

    def _settings(self, spool_path: object) -> Settings:
        return Settings(site_id=SITE, api_key="key", track_url=URL, spool_path=spool_path)

    def test_no_spool_no_storage(self) -> None:
        assert open_storage(self._settings(False)) is None

    def test_the_settings_spool_file_opened_on_first_use(self, tmp_path: Path) -> None:
        path = tmp_path / "spool.sqlite3"
        foreign_bytes(path)
        problems: list[str] = []
        settings = self._settings(path)
        storage = open_storage(settings, on_problem=problems.append)
        assert isinstance(storage, SQLiteSpool)
        try:
            assert (storage.path, storage.max_bytes) == (path, settings.max_spool_bytes)
            assert not storage.is_open
            assert problems == []
            assert storage.status().site_id == SITE
            assert len(problems) == 1  # the foreign file was moved aside, and said so
            assert str(path) in problems[0]
        finally:
            storage.close()
