"""The fleet's backlog in Redis, end to end, in separate processes standing for hosts:
a backlog drained by another host, a killed process's claim taken over after its lease,
and Redis down (the local spool, then the move to Redis).

Each "host" has a state directory of its own (``XDG_STATE_HOME``), so no two share a
spool file: what one leaves, another can only find in Redis.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging._shutdown import EXIT_MARGIN
from customerio_logging._storage import Storage
from customerio_logging._storage.fleet import FleetStorage
from customerio_logging._storage.redis import RedisStorage
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging.testing import FaultPlan, TrackAPIEmulator
from customerio_logging.testing._redis import RedisServer

from .helpers import (
    BIG,
    assert_each_once,
    make_op,
    program,
    read_line,
    run_python,
    say,
    spool_pending,
    start_python,
    unreachable_api,
    users,
    wait_until,
)

TIMEOUT = 90.0
DOWN = FaultPlan(failure_rate=1.0, failure_statuses=(503,))
LEASE = 3.0  # seconds: the replay lease of the processes that stand for other hosts


@pytest.fixture
def emulator() -> Iterator[TrackAPIEmulator]:
    with TrackAPIEmulator() as running:
        yield running


@pytest.fixture
def backlog(emulator: TrackAPIEmulator, redis_server: RedisServer) -> Iterator[RedisStorage]:
    """The fleet's backlog as the test sees it (the emulator's workspace, in Redis)."""
    storage = RedisStorage(
        redis_server.url, max_bytes=BIG, site_id=emulator.site_id, track_url=emulator.url
    )
    yield storage
    storage.close()


def host(tmp_path: Path, name: str, redis_url: str) -> dict[str, str]:
    """The environment of a process on host ``name``: its own state directory."""
    return {
        "CUSTOMERIO_REDIS_URL": redis_url,
        "XDG_STATE_HOME": str(tmp_path / name),
        "CUSTOMERIO_SPOOL_PATH": "",  # the default: the host's state directory
    }


def local_pending(tmp_path: Path, name: str) -> int:
    """Operations waiting in host ``name``'s own spool file (0 when it has none)."""
    files = list((tmp_path / name).rglob("spool-*.sqlite3"))
    assert len(files) <= 1, files
    return spool_pending(files[0]) if files else 0


def run_app(
    emulator: TrackAPIEmulator, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    result = run_python(program("spool_app"), *args, emulator=emulator, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


def replayed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return stats


class TestSharedBacklog:
    def test_what_three_processes_left_is_drained_by_a_fourth_on_another_host(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        backlog: RedisStorage,
        tmp_path: Path,
    ) -> None:
        emulator.set_faults(DOWN)
        for i in range(3):
            env = host(tmp_path, f"host{i}", redis_server.url)
            run_app(emulator, env, "log", "1000", "--prefix", f"h{i}-")
        assert emulator.operations == []
        assert backlog.pending() == 3000
        assert [local_pending(tmp_path, f"host{i}") for i in range(3)] == [0, 0, 0]

        emulator.set_faults(None)
        env = host(tmp_path, "host3", redis_server.url)
        stats = replayed(run_app(emulator, env, "replay", "--timeout", "60"))
        assert_each_once(emulator, users("h0-", 1000) | users("h1-", 1000) | users("h2-", 1000))
        assert stats["replayed"] == 3000
        assert backlog.pending() == 0


class TestTakeover:
    def test_rows_a_killed_process_held_are_delivered_by_another_after_the_lease(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        backlog: RedisStorage,
        tmp_path: Path,
    ) -> None:
        emulator.set_faults(DOWN)
        run_app(emulator, host(tmp_path, "host0", redis_server.url), "log", "150")
        assert backlog.pending() == 150
        # The API hangs on its answer: the holder claims a batch and waits, rows leased.
        emulator.set_faults(FaultPlan(failure_rate=1.0, failure_statuses=(503,), delay=60))
        command = [program("other_host_app"), "pod-a", LEASE, "replay", "--timeout", "60"]
        holder = start_python(
            *command, emulator=emulator, env=host(tmp_path, "host1", redis_server.url)
        )
        try:
            assert wait_until(lambda: backlog.status().leased == 150, 30), holder.stderr
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.communicate(timeout=TIMEOUT)
        # Nobody here can tell that pod-a is gone: its rows wait for their lease.
        assert backlog.claim(1000) == []
        assert wait_until(lambda: backlog.status().leased == 0, 4 * LEASE)

        emulator.set_faults(None)
        taker = host(tmp_path, "host2", redis_server.url)
        command = [program("other_host_app"), "pod-b", LEASE, "replay", "--timeout", "60"]
        result = run_python(*command, emulator=emulator, env=taker, timeout=TIMEOUT, check=True)
        stats = replayed(result)
        assert_each_once(emulator, users("u", 150))
        assert stats["replayed"] == 150
        assert backlog.pending() == 0


class TestRedisDown:
    def test_events_wait_in_the_local_spool_and_reach_redis_and_the_api_later(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        backlog: RedisStorage,
        tmp_path: Path,
    ) -> None:
        redis_server.stop()
        emulator.set_faults(DOWN)
        env = host(tmp_path, "host0", redis_server.url)
        result = run_app(emulator, env, "log", "1000")
        assert local_pending(tmp_path, "host0") == 1000
        warnings = [line for line in result.stderr.splitlines() if "local spool" in line]
        assert len(warnings) == 1, result.stderr
        assert "127.0.0.1" in warnings[0]

        redis_server.start()
        emulator.set_faults(None)
        stats = replayed(run_app(emulator, env, "replay", "--timeout", "60"))
        assert_each_once(emulator, users("u", 1000))
        assert stats["replayed"] == 1000
        assert local_pending(tmp_path, "host0") == 0
        assert backlog.pending() == 0


class TestMoveEvicts:
    def test_what_redis_evicts_to_take_the_local_rows_is_counted(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        tmp_path: Path,
    ) -> None:
        bound = 1024 * 1024
        bridge = cio.Bridge(
            cio.Settings(
                site_id=emulator.site_id,
                api_key=emulator.api_key,
                track_url=emulator.url,
                redis_url=redis_server.url,
                spool_path=tmp_path / "spool.sqlite3",
                max_spool_bytes=bound,
            )
        )
        spool = bridge.spool
        assert isinstance(spool, FleetStorage)
        assert spool.local is not None
        try:
            spool.remote.add([make_op(f"r{i:04d}", 1000) for i in range(650)])  # near full
            spool.local.add([make_op(f"a{i:04d}", 1000) for i in range(300)])  # an outage's
            spool.claim(1)
            assert spool.local.pending() == 0
            assert bridge.stats().evicted == 950 - spool.remote.pending() > 0
        finally:
            bridge.shutdown(1.0)


def user_ids(storage: Storage) -> set[str]:
    """The users of the events waiting in ``storage``."""
    return {json.loads(op.body)["identifiers"]["id"] for op in storage.claim(10**6, max_bytes=BIG)}


class TestRedisHangsAtExit:
    def test_the_batch_being_spooled_is_not_lost(
        self, redis_server: RedisServer, tmp_path: Path
    ) -> None:
        # The API cannot be reached, and Redis stops answering just before the exit: the
        # dispatch thread's write of its failed batch must give up on Redis in time to
        # put the batch in the local file before the process ends.
        env = {**unreachable_api(), **host(tmp_path, "host0", redis_server.url)}
        app = start_python(program("redis_hangs_at_exit"), 2000, env=env, stdin=True)
        try:
            assert read_line(app).strip() == "logged"
            redis_server.pause()
            try:
                say(app, "go\n")
                out, err = app.communicate(timeout=TIMEOUT)
            finally:
                redis_server.resume()
        finally:
            if app.poll() is None:
                app.kill()
                app.communicate()
        assert app.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["took"] < 1.0 + EXIT_MARGIN + 0.5
        place = {"site_id": env["CUSTOMERIO_SITE_ID"], "track_url": env["CUSTOMERIO_TRACK_URL"]}
        remote = RedisStorage(redis_server.url, max_bytes=BIG, **place)
        files = list((tmp_path / "host0").rglob("spool-*.sqlite3"))
        local = SQLiteSpool(files[0], max_bytes=BIG, **place)
        try:
            assert user_ids(remote) | user_ids(local) == users("u", 2000), err
        finally:
            remote.close()
            local.close()
