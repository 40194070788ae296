"""What is the Redis backlog's own, beyond the protocol every storage keeps
(test_protocol.py runs that on Redis too): owners in other processes and on other hosts,
the server's clock, the bound on what it takes in Redis, errors that never show the
password, a slow or stopped server, and one namespace per workspace. A real server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from customerio_logging._storage import CALLER_WAIT, SpoolBusyError, SpoolUnavailableError, leases
from customerio_logging._storage import redis as redis_storage
from customerio_logging._storage.redis import MIN_MEMORY_BOUND, RedisStorage
from customerio_logging._storage.redis_connection import DEFAULT_WAIT
from customerio_logging._wire import Operation, new_ulid
from customerio_logging.testing._redis import RedisServer

from ..helpers import (
    BIG,
    CHILD_TIMEOUT,
    SITE,
    FakeClock,
    children,
    ids_of,
    make_letter,
    make_op,
    read_line,
    run_python,
    say,
    wait_until,
)

ELSEWHERE = "another-host|pid:[1]|4242|abcdef"
"""An owner token of a process on another host: never known to be gone."""

_STORE = """
import sys
from customerio_logging._storage.redis import RedisStorage
url, site, host = sys.argv[1:4]
store = RedisStorage(url, max_bytes=10**9, site_id=site, track_url=host)
"""


@pytest.fixture
def place(request: pytest.FixtureRequest, shared_redis: RedisServer) -> tuple[str, str, str]:
    """The shared server's URL, the workspace, and an API host of the test's own."""
    return shared_redis.url, SITE, f"https://{request.node.nodeid}"


@pytest.fixture
def make_store(place: tuple[str, str, str]) -> Iterator[Callable[..., RedisStorage]]:
    """RedisStorage on ``place`` (keyword arguments override), closed at the end."""
    made: list[RedisStorage] = []

    def make(**overrides: Any) -> RedisStorage:
        url, site, host = place
        options: dict[str, Any] = {"max_bytes": BIG, "site_id": site, "track_url": host}
        options.update(overrides)
        store = RedisStorage(options.pop("url", url), **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@contextlib.contextmanager
def owned_by(token: str) -> Iterator[None]:
    """This process's calls made as the owner ``token`` (another process's, say)."""
    saved = leases._token
    leases._token = (os.getpid(), token)
    try:
        yield
    finally:
        leases._token = saved


@pytest.fixture
def server(shared_redis: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the shared server: to look at the keys, or do what an admin does."""
    with redis.Redis.from_url(shared_redis.url, socket_timeout=5.0) as client:
        yield client


def ulid_ops(count: int, size: int) -> list[Operation]:
    return [make_op(new_ulid(time.time()), size) for _ in range(count)]


class TestOwners:
    """Leases belong to processes: on this host a gone one frees its rows at once, on
    another host they wait for the lease; two claimers never share a row."""

    def test_processes_claiming_at_once_never_share_a_row(
        self, make_store: Callable[..., RedisStorage], place: tuple[str, str, str]
    ) -> None:
        ops = [make_op(f"op{i:03d}") for i in range(300)]
        make_store().add(ops)
        drain = _STORE + (
            "store.prepare()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "got = []\n"
            "while batch := store.claim(7):\n"
            "    got += [op.id for op in batch]\n"
            "    store.ack([op.id for op in batch])\n"
            "print(json.dumps(got), flush=True)\n"
        )
        command = ["-c", "import json\n" + drain, *place]
        with children(command, command, command) as procs:
            for proc in procs:
                assert read_line(proc).strip() == "ready"
            for proc in procs:
                say(proc, "go\n")
            claimed = [json.loads(read_line(proc)) for proc in procs]
        every = [op_id for got in claimed for op_id in got]
        assert sorted(every) == ids_of(ops)  # each row once, by one of them
        assert make_store().pending() == 0

    @pytest.mark.parametrize("mode", ["claim", "lease"])
    def test_rows_of_a_process_that_is_gone_are_claimable_at_once(
        self, make_store: Callable[..., RedisStorage], place: tuple[str, str, str], mode: str
    ) -> None:
        # The child claims rows, or reserves them for its queue, and ends.
        child = _STORE + (
            "from customerio_logging._wire import Operation\n"
            "ops = [Operation(i, 'event', 'n', b'{}') for i in 'abc']\n"
            "if sys.argv[4] == 'claim':\n"
            "    store.add(ops)\n"
            "    assert len(store.claim(3)) == 3\n"
            "else:\n"
            "    store.add(ops, lease=True)\n"
        )
        run_python("-c", child, *place, mode, timeout=CHILD_TIMEOUT, check=True)
        store = make_store()
        assert store.status().leased == 3  # its leases are still running...
        assert ids_of(store.claim(10)) == ["a", "b", "c"]  # ...but it is gone

    def test_rows_of_another_hosts_process_wait_for_their_lease(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        clock = FakeClock()
        store = make_store(clock=clock)
        with owned_by(ELSEWHERE):
            store.add([make_op("a"), make_op("b")])
            assert ids_of(store.claim(1)) == ["a"]
            store.add([make_op("c")], lease=True)
        assert ids_of(store.claim(10)) == ["b"]  # a is claimed, c reserved: theirs
        store.ack(["b"])
        store.release(["a", "c"])  # not this process's to give back
        clock.advance(leases.REPLAY_LEASE - 1)
        assert store.claim(10) == []
        assert store.status().leased == 2
        clock.advance(1)
        assert ids_of(store.claim(10)) == ["a"]
        store.ack(["a"])
        clock.advance(leases.FRESH_LEASE - leases.REPLAY_LEASE - 1)
        assert store.claim(10) == []
        clock.advance(1)
        assert ids_of(store.claim(10)) == ["c"]

    def test_a_claim_finds_rows_behind_many_live_reservations(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        store = make_store()
        with owned_by(ELSEWHERE):
            store.add([make_op(f"r{i:04d}") for i in range(1500)], lease=True)
        store.add([make_op("z")])
        # A claim hands at most a thousand live reservations back to their owner: Redis
        # serves no one else meanwhile. The next goes on from there.
        assert [ids_of(store.claim(10)) for _ in range(2)] == [[], ["z"]]
        store.release(["z"])  # now behind 1,500 pending rows under a live lease
        assert ids_of(store.claim(1)) == ["z"]
        assert store.status().leased == 1501

    def test_consumers_of_processes_long_idle_do_not_pile_up(
        self,
        make_store: Callable[..., RedisStorage],
        server: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(leases, "FRESH_LEASE", 0.05)  # "long idle": over 0.1 s
        store = make_store()
        store.add([make_op("a"), make_op("b")])
        with owned_by(ELSEWHERE):
            store.ack(ids_of(store.claim(1)))
        consumers = server.xinfo_consumers(store.namespace + "ops", "senders")
        assert ELSEWHERE.encode() in [c["name"] for c in consumers]

        def forgotten() -> bool:
            store.release(ids_of(store.claim(1)))
            names = server.xinfo_consumers(store.namespace + "ops", "senders")
            return ELSEWHERE.encode() not in [c["name"] for c in names]

        assert wait_until(forgotten, 5.0)
        assert ids_of(store.claim(10)) == ["b"]


class TestServerClock:
    """Without a clock of the caller's, every time is the Redis server's."""

    def test_leases_and_times_go_by_the_servers_clock(
        self, make_store: Callable[..., RedisStorage], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(leases, "REPLAY_LEASE", 0.3)
        store = make_store()
        before = time.time()
        store.add([make_op("a")])
        status = store.status()
        assert status.oldest is not None
        assert before - 1 <= status.oldest <= time.time() + 1  # the same host's clock
        with owned_by(ELSEWHERE):
            assert ids_of(store.claim(1)) == ["a"]
        start = time.monotonic()
        assert store.claim(1) == []
        assert wait_until(lambda: store.claim(1), 5.0)
        assert time.monotonic() - start >= 0.25


class TestBounds:
    """What the backlog takes in Redis stays within its bound; the dead letter within its
    own; what goes is counted."""

    def test_the_backlog_stays_within_its_bound_in_redis(
        self, make_store: Callable[..., RedisStorage], server: redis.Redis
    ) -> None:
        store = make_store(max_bytes=MIN_MEMORY_BOUND)
        batches = [ulid_ops(100, 500) for _ in range(30)]
        evicted = sum(store.add(batch) for batch in batches)
        status = store.status()
        assert evicted > 0
        assert status.pending == 3000 - evicted
        keys = list(server.scan_iter(match=store.namespace + "*"))
        used = sum(server.memory_usage(key, samples=0) or 0 for key in keys)
        assert MIN_MEMORY_BOUND * 0.8 < used <= MIN_MEMORY_BOUND
        assert int(server.hget(store.namespace + "meta", "evicted") or 0) == evicted
        kept = store.claim(10_000, max_bytes=BIG)
        assert kept[-1] == batches[-1][-1]  # the oldest went

    def test_the_dead_letter_keeps_its_newest_rows(
        self, make_store: Callable[..., RedisStorage], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(redis_storage, "MAX_DEAD_LETTERS", 5)
        store = make_store()
        assert store.dead_letter([make_letter(f"d{i}") for i in range(8)]) == 3
        status = store.status()
        assert (status.dead_letters, status.dead_letters_evicted) == (5, 3)
        assert [row.id for row in store.dead_letters()] == [f"d{i}" for i in range(3, 8)]

    def test_the_dead_letter_keeps_within_its_share_of_the_bytes(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        store = make_store(max_bytes=4000)  # the dead letter keeps 1000 bytes
        letters = [make_letter(f"d{i}", body=b"x" * 300) for i in range(10)]
        evicted = sum(store.dead_letter([letter]) for letter in letters)
        status = store.status()
        assert evicted == status.dead_letters_evicted > 0
        assert status.dead_letter_bytes <= status.dead_letter_max_bytes == 1000
        assert status.dead_letters == 10 - evicted
        assert [row.id for row in store.dead_letters()][-1] == "d9"

    def test_texts_are_cut_and_letters_chosen_by_seq_and_reason(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        store = make_store()
        wordy = dataclasses.replace(
            make_letter("long"), reason="r" * 500, field="f" * 500, message="m" * 5000
        )
        store.dead_letter([make_letter("a"), wordy, make_letter("c", reason="other")])
        rows = list(store.dead_letters())
        cut = rows[1]
        assert (len(cut.reason), len(cut.field or ""), len(cut.message)) == (200, 200, 1000)
        seqs = {row.id: row.seq for row in rows}
        assert store.purge_dead_letters([seqs["a"], seqs["c"]], reason="other") == 1
        assert store.requeue([seqs["a"], seqs["long"], seqs["c"], 10**9]) == 2
        assert ids_of(store.claim(10)) == ["a", "long"]
        assert store.status().dead_letters == 0


class TestErrors:
    """A stopped, slow or refusing Redis: the spool's errors, never the password."""

    def test_a_stopped_server_is_unavailable_first_once_then_back_with_its_rows(
        self, make_store: Callable[..., RedisStorage], locked_redis: RedisServer
    ) -> None:
        password = urlsplit(locked_redis.url).password
        assert password
        store = make_store(url=locked_redis.url)
        store.add([make_op("a")])
        locked_redis.stop()
        errors = []
        for call in (lambda: store.add([make_op("b")]), store.pending, store.status):
            with pytest.raises(SpoolUnavailableError) as info:
                call()
            errors.append(info.value)
        assert [error.first for error in errors] == [True, False, False]
        for shown in (*map(str, errors), repr(store), repr(locked_redis)):
            assert password not in shown
            assert f"127.0.0.1:{locked_redis.port}" in shown
        locked_redis.start()
        assert store.pending() == 1  # kept through the stop (append-only file)
        assert password not in store.status().path
        locked_redis.stop()
        with pytest.raises(SpoolUnavailableError) as info:
            store.pending()
        assert info.value.first  # a new episode

    def test_a_wrong_password_is_refused_without_showing_it(
        self, make_store: Callable[..., RedisStorage], locked_redis: RedisServer
    ) -> None:
        wrong = locked_redis.url.replace(urlsplit(locked_redis.url).password or "", "wrong-pw-77")
        with pytest.raises(SpoolUnavailableError) as info:
            make_store(url=wrong).prepare()
        assert "wrong-pw-77" not in str(info.value)

    def test_a_slow_server_bounds_a_call_with_a_wait_and_a_retry_stays_one_row(
        self, make_store: Callable[..., RedisStorage], server: redis.Redis
    ) -> None:
        store = make_store()
        store.prepare()
        server.execute_command("CLIENT", "PAUSE", 500)
        start = time.monotonic()
        with pytest.raises(SpoolUnavailableError):
            store.add([make_op("a")], lease=True, wait=CALLER_WAIT)
        assert time.monotonic() - start < 0.4
        assert store.pending() in (0, 1)  # after the pause: it may have landed
        store.add([make_op("a")], lease=True, wait=CALLER_WAIT)
        assert store.pending() == 1

    def test_a_call_waits_for_another_threads_then_says_busy(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        gate, inside = threading.Event(), threading.Event()

        def held_clock() -> float:  # read inside a claim, with the object's lock held
            if threading.current_thread().name == "claimer":
                inside.set()
                gate.wait(10)
            return time.time()

        store = make_store(clock=held_clock)
        store.prepare()
        claimer = threading.Thread(target=store.claim, args=(10,), name="claimer")
        claimer.start()
        try:
            assert inside.wait(10)
            with pytest.raises(SpoolBusyError):
                store.add([make_op("a")], wait=CALLER_WAIT)
        finally:
            gate.set()
            claimer.join(10)
        store.add([make_op("a")], wait=CALLER_WAIT)
        assert store.pending() == 1

    def test_a_call_from_inside_a_call_on_the_same_thread_is_refused(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        refused: list[BaseException] = []

        def reentrant_clock() -> float:  # as a signal handler landing inside a claim
            try:
                store.pending()
            except SpoolBusyError as exc:
                refused.append(exc)
            return time.time()

        store = make_store(clock=reentrant_clock)
        store.add([make_op("a")])
        start = time.monotonic()
        assert ids_of(store.claim(10)) == ["a"]
        assert len(refused) == 1  # the claim's: an add reads the clock before its call
        assert time.monotonic() - start < DEFAULT_WAIT / 2  # at once, not after a wait


class TestPlace:
    """One namespace per workspace and API host; keys of another workspace are refused;
    a Redis that may evict is pointed out."""

    def test_two_workspaces_never_see_each_others_rows(
        self, make_store: Callable[..., RedisStorage]
    ) -> None:
        ours, theirs = make_store(), make_store(site_id="another-site")
        ours.add([make_op("a")])
        ours.dead_letter([make_letter("x")])
        assert (theirs.pending(), theirs.claim(10), list(theirs.dead_letters())) == (0, [], [])
        assert theirs.purge() == theirs.purge_dead_letters() == 0
        assert (ours.pending(), ours.status().dead_letters) == (1, 1)

    def test_keys_of_another_workspace_are_refused(
        self, make_store: Callable[..., RedisStorage], server: redis.Redis
    ) -> None:
        store = make_store()
        server.hset(store.namespace + "meta", "site_id", "a-colliding-site")
        with pytest.raises(SpoolUnavailableError, match="another workspace") as info:
            store.prepare()
        assert store.namespace in str(info.value)
        assert not store.is_open

    @pytest.mark.parametrize(
        ("policy", "warned"),
        [("allkeys-lru", True), ("volatile-lru", False), ("noeviction", False)],
    )
    def test_a_redis_that_may_evict_the_backlog_is_pointed_out_once(
        self,
        make_store: Callable[..., RedisStorage],
        server: redis.Redis,
        policy: str,
        warned: bool,
    ) -> None:
        server.config_set("maxmemory-policy", policy)
        problems: list[str] = []
        try:
            store = make_store(on_problem=problems.append)
            store.prepare()
            store.close()
            store.prepare()
        finally:
            server.config_set("maxmemory-policy", "noeviction")
        assert len(problems) == (1 if warned else 0)
        if warned:
            assert policy in problems[0]
            assert "noeviction" in problems[0]
