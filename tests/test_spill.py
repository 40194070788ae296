"""An outage costs a log call little and loses nothing: what the full queue does not take
goes to the spill buffer, written to the spool off the app's thread a group per
transaction; durability="disk" calls made at the same moment share one transaction."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging._capture import Snapshot
from customerio_logging._group_commit import GroupCommit
from customerio_logging._shutdown import EXIT_MARGIN
from customerio_logging._spill import SPILL_CAPACITY, SPILL_GROUP, THREAD_NAME, SpillBuffer
from customerio_logging._storage import CALLER_WAIT
from customerio_logging._wire import Operation, Response
from customerio_logging.testing import MockTransport

from .helpers import (
    GatedTransport,
    balanced,
    program,
    run_python,
    snapshot,
    spool_pending,
    unreachable_api,
    wait_until,
)

WAIT = 10.0
QUEUE = 10
HELD = QUEUE + 1  # what a full queue holds, with the batch of one held at the gate


class SpoolSpy:
    """Wraps a bridge's spool ``add``: records who wrote what (once written), and holds
    the spill writer at its next write while ``hold`` is clear, or every write for
    ``slow`` seconds."""

    def __init__(self, bridge: cio.Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
        spool = bridge.spool
        assert spool is not None
        self.writes: list[tuple[threading.Thread, bool, list[str]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.held = threading.Event()
        self.slow = 0.0
        real = spool.add

        def add(
            ops: Sequence[Operation],
            *,
            lease: bool = False,
            wait: float | None = None,
            open_file: bool | None = None,
        ) -> int:
            thread = threading.current_thread()
            if thread.name == THREAD_NAME and not self.hold.is_set():
                self.held.set()
                self.hold.wait(WAIT)
            if self.slow:
                time.sleep(self.slow)  # a slow disk
            evicted = real(ops, lease=lease, wait=wait, open_file=open_file)
            self.writes.append((thread, lease, [op.id for op in ops]))
            return evicted

        monkeypatch.setattr(spool, "add", add)

    def by(self, name: str, *, lease: bool = False) -> list[list[str]]:
        """The ids of each write made by threads named ``name``."""
        return [
            ids for thread, leased, ids in self.writes if thread.name == name and leased == lease
        ]

    def written(self) -> set[str]:
        return {i for _, _, ids in self.writes for i in ids}


@pytest.fixture
def spooled(settings: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """configure() keywords: the emulator, a spool in tmp_path, one quick retry."""
    return {
        **settings,
        "spool_path": str(tmp_path / "spool.sqlite3"),
        "max_retries": 1,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.02,
        "retry_budget": 0.2,
    }


@pytest.fixture
def gated() -> Iterator[GatedTransport]:
    """A transport that holds the first batch until the test ends: the queue stays full."""
    transport = GatedTransport(Response(200))
    yield transport
    transport.gate.set()


def _full_queue(spooled: dict[str, Any], transport: GatedTransport) -> cio.Bridge:
    bridge = cio.configure(**spooled, batch_size=1, max_queue_size=QUEUE, transport=transport)
    bridge.open_spool()  # a log call never opens it (the dispatch thread would, later)
    bridge.submit(snapshot(-1))
    assert transport.entered.wait(WAIT)  # one batch held at the gate
    return bridge


def _settled(bridge: cio.Bridge) -> bool:
    """The spill buffer is empty: only what the full queue holds still waits."""
    return bridge.stats().queue_depth <= HELD


def _writer_held(
    spooled: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[cio.Bridge, SpoolSpy]:
    """200 events spilled while the API fails at once (no retry: the queue is spooled
    quickly), the spill writer held at the spool with its first group."""
    down = MockTransport(Response(503))
    bridge = cio.configure(
        **{**spooled, "max_retries": 0}, batch_size=1, max_queue_size=QUEUE, transport=down
    )
    spy = SpoolSpy(bridge, monkeypatch)
    spy.hold.clear()
    for i in range(200):
        bridge.submit(snapshot(i))
    assert spy.held.wait(WAIT)
    return bridge, spy


class TestSpillBuffer:
    def test_spilled_events_are_written_off_the_apps_thread_in_groups(
        self, spooled: dict[str, Any], gated: GatedTransport, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge = _full_queue(spooled, gated)
        spy = SpoolSpy(bridge, monkeypatch)
        assert all(bridge.submit(snapshot(i)) for i in range(500))
        assert wait_until(lambda: _settled(bridge), WAIT)
        stats = bridge.stats()
        assert (stats.dropped, stats.spooled) == (0, 501 - HELD), stats
        assert balanced(stats), stats
        # Never on the app's thread: by the writer, a named daemon, a group at a time.
        threads = {thread for thread, _, _ in spy.writes}
        assert [t.name for t in threads] == [THREAD_NAME], threads
        assert all(t.daemon for t in threads)
        groups = spy.by(THREAD_NAME)
        assert sum(map(len, groups)) == stats.spooled
        assert len(groups) < stats.spooled / 10, [len(g) for g in groups]
        assert spool_pending(Path(spooled["spool_path"])) == stats.spooled

    def test_flush_is_true_only_once_the_spill_buffer_is_written(
        self, spooled: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The queue is spooled quickly: only the spill buffer can keep a flush waiting.
        bridge, spy = _writer_held(spooled, monkeypatch)
        assert bridge.flush(0.3) is False
        stats = bridge.stats()
        assert stats.queue_depth > 0, stats
        assert (stats.dropped, stats.failed) == (0, 0), stats
        assert balanced(stats), stats
        spy.hold.set()
        assert bridge.flush(WAIT)
        stats = bridge.stats()
        assert (stats.spooled, stats.queue_depth, stats.dropped) == (200, 0, 0), stats
        assert spool_pending(Path(spooled["spool_path"])) == 200

    def test_flush_after_shutdown_is_false_while_the_spill_writer_holds_a_group(
        self, spooled: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge, spy = _writer_held(spooled, monkeypatch)
        bridge.shutdown(0.1)  # the writer's group outlives it (a stalled disk)
        assert bridge.stats().queue_depth > 0
        assert bridge.flush(0) is False
        spy.hold.set()
        assert wait_until(lambda: bridge.stats().queue_depth == 0, WAIT)
        assert bridge.flush(0) is True
        stats = bridge.stats()
        assert (stats.spooled, stats.dropped) == (200, 0), stats
        assert balanced(stats), stats

    def test_a_full_spill_buffer_has_the_call_write_its_own_event(
        self, spooled: dict[str, Any], gated: GatedTransport, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge = _full_queue(spooled, gated)
        spy = SpoolSpy(bridge, monkeypatch)
        spy.hold.clear()
        # The writer holds its first group (up to SPILL_GROUP) at the spy; the buffer
        # fills behind it; the calls after that write their own events, synchronously.
        count = QUEUE + SPILL_GROUP + SPILL_CAPACITY + 50
        assert all(bridge.submit(snapshot(i)) for i in range(count))
        own = spy.by(threading.current_thread().name)
        assert len(own) >= 50, len(own)
        assert all(len(ids) == 1 for ids in own), own
        spy.hold.set()
        assert wait_until(lambda: _settled(bridge), WAIT)
        stats = bridge.stats()
        assert (stats.dropped, stats.spooled) == (0, count + 1 - HELD), stats
        assert balanced(stats), stats

    def test_invalid_events_and_direct_calls_settle_as_they_did_on_the_apps_thread(
        self, spooled: dict[str, Any], gated: GatedTransport, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge = _full_queue(spooled, gated)
        for i in range(QUEUE):
            bridge.submit(snapshot(i))
        spy = SpoolSpy(bridge, monkeypatch)
        spy.hold.clear()
        receipt = bridge.track("u1", "plan_changed", plan="pro")
        bridge.submit(Snapshot(True, "no_person", {"plan": "pro"}, 1.0))
        assert spy.held.wait(WAIT)
        assert not receipt.done()  # in memory: not on disk yet
        spy.hold.set()
        assert receipt.result(WAIT) == cio.Outcome("spooled")
        assert wait_until(lambda: _settled(bridge), WAIT)
        stats = bridge.stats()
        assert (stats.invalid, stats.spooled, stats.dropped) == (1, 1, 0), stats
        assert balanced(stats), stats
        letter = bridge.dead_letters()[-1]
        assert (letter.name, letter.reason) == ("no_person", "missing_identifier")
        bridge.shutdown(1.0)
        spool = bridge.spool
        assert spool is not None
        assert [row.reason for row in spool.dead_letters()] == ["missing_identifier"]

    def test_an_unusable_spool_drops_what_spills_with_why(
        self, spooled: dict[str, Any], gated: GatedTransport, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the spool's folder should be")
        spooled = {**spooled, "spool_path": str(blocker / "spool.sqlite3")}
        bridge = _full_queue(spooled, gated)
        for i in range(QUEUE):
            bridge.submit(snapshot(i))
        receipt = bridge.track("u1", "plan_changed")
        for i in range(20):
            bridge.submit(snapshot(i))
        assert receipt.result(WAIT).status == "dropped"
        assert wait_until(lambda: _settled(bridge), WAIT)
        stats = bridge.stats()
        assert (stats.dropped, stats.spooled) == (21, 0), stats
        assert balanced(stats), stats
        why = f"the queue is full (max_queue_size={QUEUE}) and the spool is unusable"
        assert why in (stats.last_error or ""), stats.last_error
        outcome = receipt.result(0)
        assert (outcome.reason, why in (outcome.message or "")) == ("queue", True), outcome

    def test_a_put_in_the_middle_of_the_writers_start_starts_no_second_writer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A signal handler that logs, landing while the first spill starts the writer:
        # the start's lock is reentrant, so the handler's put went in and started one of
        # its own, and the interrupted start then a second (two writers, one joined).
        written: list[str] = []
        buffer: SpillBuffer[str] = SpillBuffer(
            lambda items, _wait: written.extend(items), idle=lambda: None, wait=1.0
        )
        started: list[threading.Thread] = []
        real_start = threading.Thread.start

        def start(thread: threading.Thread) -> None:
            if thread.name == THREAD_NAME:
                started.append(thread)
                if len(started) == 1:
                    assert buffer.put("from the handler")
            real_start(thread)

        monkeypatch.setattr(threading.Thread, "start", start)
        assert buffer.put("interrupted")
        assert buffer.flush(WAIT)
        assert len(started) == 1, started
        assert sorted(written) == ["from the handler", "interrupted"]
        buffer.stop(WAIT)
        assert buffer.join(WAIT)


class TestGroupCommit:
    def test_calls_from_several_threads_share_transactions_and_return_on_disk(
        self, spooled: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge = cio.configure(**spooled, durability="disk")
        spy = SpoolSpy(bridge, monkeypatch)
        spy.slow = 0.005
        late: list[str] = []

        def calls(thread: int) -> None:
            for i in range(25):
                receipt = bridge.track(f"t{thread}-{i}", "plan_changed")
                if receipt.id not in spy.written():
                    late.append(receipt.id)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(calls, range(4)))
        assert late == []  # each on disk before its call returned
        reservations = [ids for _, lease, ids in spy.writes if lease]
        assert sum(map(len, reservations)) == 100
        # One transaction per call before; now callers that meet share one.
        assert len(reservations) < 80, [len(ids) for ids in reservations]
        assert bridge.flush(WAIT)
        assert bridge.stats().sent == 100

    def test_a_call_waits_for_another_ones_write_at_most_the_callers_wait(
        self, spooled: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bridge = cio.configure(**spooled, durability="disk")
        spy = SpoolSpy(bridge, monkeypatch)
        entered, release = threading.Event(), threading.Event()
        real = bridge.spool.add  # type: ignore[union-attr]

        def stuck_once(ops: Sequence[Operation], **options: Any) -> int:
            if not entered.is_set():  # the first write hangs (a stalled disk)
                entered.set()
                release.wait(WAIT)
            return real(ops, **options)

        monkeypatch.setattr(bridge.spool, "add", stuck_once)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(bridge.track, "u1", "plan_changed")
            assert entered.wait(WAIT)
            started = time.monotonic()
            second = bridge.track("u2", "plan_changed")
            took = time.monotonic() - started
            assert second.id in spy.written()  # on disk, written alone
            release.set()
            assert first.result(WAIT).id in spy.written()
        assert took < CALLER_WAIT + 0.5, took
        stats = bridge.stats()
        assert (stats.dropped, stats.failed) == (0, 0), stats

    def test_a_call_whose_item_a_leader_holds_returns_only_once_it_is_written(self) -> None:
        # A leader took this call's item into its group, and its commit is slow (a
        # stalled disk): the call must not return, True, before its item is on disk.
        wait = 0.25
        written: list[str] = []
        alone_in, alone_go, group_in, group_go = (threading.Event() for _ in range(4))

        def write(items: list[str], _wait: float) -> bool:
            if items == ["a"]:
                alone_in.set()
                alone_go.wait(WAIT)
            else:
                group_in.set()
                group_go.wait(WAIT)
            written.extend(items)
            return True

        commit: GroupCommit[str] = GroupCommit(write, wait=wait)
        returned: dict[str, tuple[bool, bool]] = {}  # item: (result, written by then)

        def call(item: str) -> None:
            kept = commit.write(item)
            returned[item] = (kept, item in written)

        first = threading.Thread(target=call, args=("a",))
        first.start()
        assert alone_in.wait(WAIT)  # "a" writes alone, holding the turn
        callers = [threading.Thread(target=call, args=(item,)) for item in ("b", "c")]
        for thread in callers:
            thread.start()
        assert wait_until(lambda: len(commit._waiting) == 2, WAIT)
        alone_go.set()  # one of "b", "c" leads a group of both; its commit hangs
        assert group_in.wait(WAIT)
        for thread in callers:
            thread.join(3 * wait)  # past both of a caller's waits for the turn
        assert [t.is_alive() for t in callers] == [True, True], returned
        group_go.set()
        for thread in (first, *callers):
            thread.join(WAIT)
        assert returned == {item: (True, True) for item in "abc"}, returned


def _spill_app(spool: Path, *args: object, status: int = 0) -> list[dict[str, Any]]:
    """Run tests/programs/spill_app.py (its API unreachable); the JSON lines it printed."""
    env = {**unreachable_api(), "CUSTOMERIO_SPOOL_PATH": str(spool)}
    result = run_python(program("spill_app"), *args, env=env, timeout=60)
    assert result.returncode == status, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class TestSpillAtExitAndFork:
    def test_the_writer_starts_with_the_first_spill_and_the_exit_writes_what_it_holds(
        self, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        (report,) = _spill_app(spool, "exit", 5000)
        assert report == {"at_configure": False, "after": True}
        assert spool_pending(spool) == 5000

    def test_the_exit_writes_the_buffer_itself_when_the_writer_is_stuck(
        self, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        _, report = _spill_app(spool, "stuck", 5000)
        ((held,), stats) = report["stuck"], report["stats"]
        assert spool_pending(spool) == 5000 - held, report
        assert (stats["spooled"], stats["queue_depth"]) == (5000 - held, held), stats
        # shutdown_timeout=2.0, and the margin the exit may take to write to disk
        assert report["exit_seconds"] < 2.0 + EXIT_MARGIN + 0.5, report

    def test_sigterm_writes_what_the_buffer_holds_before_the_process_dies(
        self, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        (report,) = _spill_app(spool, "sigterm", 5000, status=-15)
        assert report == {"after": True}
        assert spool_pending(spool) == 5000

    def test_an_exit_hook_that_spills_writes_on_its_own_thread(self, tmp_path: Path) -> None:
        spool = tmp_path / "spool.sqlite3"
        (report,) = _spill_app(spool, "atexit", 300)
        assert report["in_hook"] is False, report  # no thread started at exit
        assert report["stats"]["spooled"] > 0, report
        assert spool_pending(spool) == 305

    def test_a_forked_child_drops_its_copy_and_writes_its_own_with_a_new_writer(
        self, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        start, child, parent = _spill_app(spool, "fork", 200)
        assert start["child_start"]["queue_depth"] == 0, start
        assert start["child_start"]["enqueued"] == 0, start
        assert child["child_flushed"] is True, child
        # The child wrote its own events only; the parent's, once, by the parent.
        assert sorted(child["child_users"]) == sorted(f"c{i}" for i in range(200)), child
        assert sorted(parent["parent_users"]) == sorted(f"p{i}" for i in range(200))
        assert (parent["parent_flushed"], parent["child_exit"]) == (True, 0), parent
        assert spool_pending(spool) == 400
