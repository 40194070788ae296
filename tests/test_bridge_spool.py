"""The bridge with its spool: what cannot be sent now waits on disk and is replayed."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging import _dispatch, _replay
from customerio_logging._capture import Snapshot
from customerio_logging._storage import sqlite_connection
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation, Response, new_ulid
from customerio_logging.testing import FaultPlan, MockTransport, TrackAPIEmulator

from .helpers import GatedTransport, balanced, snapshot, spool_pending, wait_until

DOWN = FaultPlan(failure_rate=1.0, failure_statuses=(503,))
WAIT = 10.0


@pytest.fixture(autouse=True)
def _quick_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Replay's pauses are seconds to minutes in production: make them short here.
    monkeypatch.setattr(_dispatch, "IDLE_START_DELAY", 0.0)
    monkeypatch.setattr(_replay, "MIN_BACKOFF", 0.05)
    monkeypatch.setattr(_replay, "POLL_INTERVAL", 0.05)


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite3"


@pytest.fixture
def spooled(settings: dict[str, Any], spool_path: Path) -> dict[str, Any]:
    """configure() keywords: the emulator, a spool in tmp_path, one quick retry."""
    return {
        **settings,
        "spool_path": str(spool_path),
        "max_retries": 1,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.02,
        "retry_budget": 0.2,
    }


def _people(emulator: TrackAPIEmulator) -> list[str]:
    return sorted(op["identifiers"]["id"] for op in emulator.operations)


class TestOutage:
    def test_failed_batches_wait_on_disk_and_replay_delivers_them_once(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        emulator.set_faults(DOWN)
        bridge = cio.configure(**spooled)
        for i in range(20):
            bridge.submit(snapshot(i))
        assert bridge.flush(WAIT)  # delivered or spooled: spooled
        stats = bridge.stats()
        assert (stats.sent, stats.failed, stats.spooled) == (0, 0, 20)
        assert balanced(stats)
        assert spool_pending(spool_path) == 20

        emulator.set_faults(None)
        assert wait_until(lambda: bridge.stats().replayed == 20, WAIT)
        assert _people(emulator) == sorted(f"u{i}" for i in range(20))
        assert all(n == 1 for n in emulator.accepted_ids().values())
        assert spool_pending(spool_path) == 0

    def test_replay_sends_fresh_events_first(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        waiting = SQLiteSpool(spool_path, max_bytes=1 << 30)
        ops = [
            Operation(
                op_id := new_ulid(1_700_000_000.0),
                "event",
                "old",
                json.dumps(
                    {
                        "type": "person",
                        "identifiers": {"id": f"old{i}"},
                        "action": "event",
                        "name": "old",
                        "id": op_id,
                        "timestamp": 1_700_000_000,
                    }
                ).encode(),
            )
            for i in range(3000)
        ]
        waiting.add(ops)
        waiting.close()
        bridge = cio.configure(**{**spooled, "batch_size": 100})
        assert wait_until(lambda: bridge.stats().replayed > 0, WAIT)
        bridge.submit(snapshot(1))
        assert bridge.flush(WAIT)
        names = [op["name"] for op in emulator.operations]
        # The fresh event went in the next request, not after the 3,000 old ones.
        assert "plan_changed" in names
        assert names.index("plan_changed") < 1500
        assert wait_until(lambda: bridge.stats().replayed == 3000, WAIT)


class TestQueueFull:
    def test_a_full_queue_spills_to_the_spool_instead_of_dropping(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(
            **{**spooled, "batch_size": 1, "max_queue_size": 10}, transport=transport
        )
        results = [bridge.submit(snapshot(i)) for i in range(100)]
        assert all(results)
        # The spill buffer's writer spools them off the app's thread: wait until all
        # but the queue's (10, and the one held at the gate) are settled.
        assert wait_until(lambda: bridge.stats().queue_depth <= 11, WAIT)
        stats = bridge.stats()
        assert stats.dropped == 0
        assert stats.spooled >= 80
        assert spool_pending(spool_path) == stats.spooled
        assert balanced(stats)
        transport.gate.set()
        assert bridge.flush(WAIT)
        assert wait_until(lambda: bridge.stats().replayed == stats.spooled, WAIT)
        sent = {json.loads(b)["batch"][0]["identifiers"]["id"] for b in transport.bodies}
        assert sent == {f"u{i}" for i in range(100)}


class TestShutdown:
    def test_what_the_deadline_cuts_off_waits_on_disk(
        self, spooled: dict[str, Any], spool_path: Path
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**{**spooled, "batch_size": 5}, transport=transport)
        for i in range(50):
            bridge.submit(snapshot(i))
        assert transport.entered.wait(WAIT)
        bridge.shutdown(0.2)
        stats = bridge.stats()
        # The 45 queued and the 5 in flight (rescued) are on disk; nothing is dropped.
        assert (stats.dropped, stats.failed, stats.spooled) == (0, 0, 50)
        assert balanced(stats)
        assert spool_pending(spool_path) == 50
        # The stuck send completes after all: its rows leave the spool again.
        transport.gate.set()
        assert wait_until(lambda: bridge.stats().sent == 5, WAIT)
        stats = bridge.stats()
        assert (stats.spooled, stats.queue_depth) == (45, 0)
        assert balanced(stats)
        assert wait_until(lambda: spool_pending(spool_path) == 45, WAIT)

    def test_events_logged_after_shutdown_wait_on_disk(
        self, spooled: dict[str, Any], spool_path: Path
    ) -> None:
        bridge = cio.configure(**spooled)
        bridge.shutdown(1.0)
        assert bridge.submit(snapshot(1)) is True
        assert bridge.stats().spooled == 1
        assert spool_pending(spool_path) == 1

    def test_refused_credentials_at_shutdown_leave_the_events_on_disk(
        self, spooled: dict[str, Any], spool_path: Path
    ) -> None:
        bridge = cio.configure(**{**spooled, "api_key": "wrong-key"})
        for i in range(3):
            bridge.submit(snapshot(i))
        assert bridge.flush(0.3) is False  # held: the credentials are refused
        bridge.shutdown(0.3)
        stats = bridge.stats()
        assert stats.spooled == 3
        assert balanced(stats)
        assert spool_pending(spool_path) == 3


class TestDeadLetter:
    def test_refused_and_invalid_events_are_kept_with_their_reason(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        emulator.set_faults(
            FaultPlan(reject_ops=lambda op: "blocked" if op["identifiers"]["id"] == "u1" else None)
        )
        bridge = cio.configure(**spooled)
        for i in range(3):
            bridge.submit(snapshot(i))
        bridge.submit(Snapshot(True, "no_person", {"plan": "pro"}, 1.0))
        assert bridge.flush(WAIT) is False
        stats = bridge.stats()
        assert (stats.sent, stats.dead_lettered, stats.invalid, stats.spooled) == (2, 1, 1, 0)
        assert balanced(stats)
        rows = list(SQLiteSpool(spool_path, max_bytes=1 << 30).dead_letters())
        by_name = {row.name: row for row in rows}
        refused, invalid = by_name["plan_changed"], by_name["no_person"]
        assert refused.body is not None
        assert json.loads(refused.body)["identifiers"] == {"id": "u1"}
        assert (invalid.reason, invalid.field, invalid.body) == (
            "missing_identifier",
            "identifiers",
            None,
        )
        assert spool_pending(spool_path) == 0  # never retried by itself


class TestDurability:
    def test_disk_durability_writes_before_the_call_returns_and_clears_once_sent(
        self, spooled: dict[str, Any], spool_path: Path
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**spooled, durability="disk", transport=transport)
        for i in range(10):
            bridge.submit(snapshot(i))
        assert spool_pending(spool_path) == 10  # on disk already, while nothing is sent
        transport.gate.set()
        assert bridge.flush(WAIT)
        assert bridge.stats().sent == 10
        assert spool_pending(spool_path) == 0

    def test_invalid_events_are_rejected_on_the_callers_thread(
        self, spooled: dict[str, Any]
    ) -> None:
        bridge = cio.configure(**spooled, durability="disk")
        assert bridge.submit(Snapshot(True, "no_person", {"plan": "pro"}, 1.0)) is False
        stats = bridge.stats()
        assert (stats.enqueued, stats.invalid) == (1, 1)
        assert balanced(stats)


class TestUnusableSpool:
    def test_an_unusable_path_degrades_to_memory_with_one_clear_warning(
        self,
        spooled: dict[str, Any],
        tmp_path: Path,
        emulator: TrackAPIEmulator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the spool's folder should be")
        emulator.set_faults(DOWN)
        bridge = cio.configure(**{**spooled, "spool_path": str(blocker / "spool.sqlite3")})
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(5):
                bridge.submit(snapshot(i))
            assert bridge.flush(WAIT) is False
            for i in range(5, 10):
                bridge.submit(snapshot(i))  # the warning surfaces on the app's thread
            bridge.flush(WAIT)
        warnings = [r.getMessage() for r in caplog.records if "spool" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "not-a-folder" in warnings[0]
        assert "in memory" in warnings[0]
        stats = bridge.stats()
        assert stats.failed == 10
        assert stats.spooled == 0
        assert balanced(stats)

    def test_a_symbolic_link_is_refused_with_one_warning_however_often_it_is_tried(
        self,
        spooled: dict[str, Any],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(sqlite_connection, "_RETRY_OPEN_AFTER", 0.0)  # tried again on every use
        victim = tmp_path / "another-apps-file"
        victim.write_bytes(b"")
        victim.chmod(0o644)
        link = tmp_path / "spool.sqlite3"
        link.symlink_to(victim)
        down = MockTransport(Response(503))
        bridge = cio.configure(**{**spooled, "spool_path": str(link)}, transport=down)
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(10):
                bridge.submit(snapshot(i))
                bridge.flush(WAIT)  # each batch fails, and each tries the spool again
        warnings = [r.getMessage() for r in caplog.records if "spool" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert str(link) in warnings[0]
        assert "symbolic link" in warnings[0]
        assert "in memory" in warnings[0]
        assert (victim.read_bytes(), stat.S_IMODE(victim.stat().st_mode)) == (b"", 0o644)
        stats = bridge.stats()
        assert (stats.failed, stats.spooled) == (10, 0)
        assert balanced(stats)


class TestServerWords:
    def test_a_207_with_a_huge_reason_keeps_a_short_one_in_memory_and_on_disk(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        # 900,000 characters a refusal: a hostile answer (one once had 5,000,000, but an
        # answer is read up to 4 MiB: beyond it, a 207 is unreadable and counted sent).
        huge = "no " * 300_000
        emulator.set_faults(
            FaultPlan(reject_ops=lambda op: None if op["identifiers"]["id"] == "u0" else huge)
        )
        bridge = cio.configure(**spooled)
        for i in range(3):
            bridge.submit(snapshot(i))
        assert bridge.flush(WAIT) is False
        stats = bridge.stats()
        assert (stats.sent, stats.dead_lettered) == (1, 2)
        assert len(stats.last_error or "") <= 700
        in_memory = bridge.dead_letters()
        with contextlib.closing(SQLiteSpool(spool_path, max_bytes=1 << 30)) as spool:
            on_disk = list(spool.dead_letters())
            status = spool.status()
        assert len(in_memory) == len(on_disk) == 2
        for letter in [*in_memory, *on_disk]:
            assert len(letter.reason) <= 100
            assert len(letter.message) <= 700
            assert len(letter.field or "") <= 200
        assert status.dead_letter_bytes < 5_000  # two short rows, not 20 MB
        assert status.file_bytes < 1_000_000


class TestSpoolSize:
    def test_a_large_spilled_group_keeps_the_file_within_max_spool_bytes(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        # The spill writer fell behind (the app logging in a tight loop): it takes a
        # thousand events at once. However large its group, the spool's write-ahead log
        # must not outgrow a small bound.
        emulator.set_faults(DOWN)
        bound = 1024 * 1024
        bridge = cio.configure(
            **{**spooled, "max_spool_bytes": bound, "max_queue_size": 100, "batch_size": 50}
        )
        files = [spool_path.with_name(spool_path.name + s) for s in ("", "-wal", "-shm")]
        peak = 0
        for group in range(4):
            spilled = [snapshot(i) for i in range(group * 1000, (group + 1) * 1000)]
            bridge._overflow._write_spilled(spilled, None)
            peak = max(peak, sum(f.stat().st_size for f in files if f.exists()))
        stats = bridge.stats()
        assert stats.spooled == 4000
        assert stats.evicted > 0
        assert peak <= bound * 1.10

    def test_an_outage_keeps_the_spool_file_within_max_spool_bytes_and_counts_evictions(
        self, spooled: dict[str, Any], spool_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        # The API down, the queue full: every event spills. Twice the bound goes to
        # the spool; the file, its -wal and its -shm stay within it (a tenth for a moment).
        emulator.set_faults(DOWN)
        bound = 1024 * 1024  # the smallest max_spool_bytes allowed
        bridge = cio.configure(
            **{**spooled, "max_spool_bytes": bound, "max_queue_size": 100, "batch_size": 50}
        )
        files = [spool_path.with_name(spool_path.name + s) for s in ("", "-wal", "-shm")]

        def on_disk() -> int:
            return sum(f.stat().st_size for f in files if f.exists())

        peak = 0
        for i in range(6000):
            bridge.submit(snapshot(i))
            peak = max(peak, on_disk())
        bridge.shutdown(WAIT)
        peak = max(peak, on_disk())
        stats = bridge.stats()
        assert peak <= bound * 1.10
        assert (stats.spooled, stats.dropped, stats.failed) == (6000, 0, 0)
        assert stats.evicted > 2000
        assert balanced(stats)
        # Each spooled event still waits, or was counted evicted: none lost uncounted.
        assert spool_pending(spool_path) + stats.evicted == stats.spooled
