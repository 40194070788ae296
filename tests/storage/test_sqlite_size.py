"""The spool file's size on disk: the file, its write-ahead log and the log's index stay
within max_bytes however much is written, the oldest waiting operations evicted and
counted, the newest kept."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import ids_of, make_letter, make_op

BOUND = 1024 * 1024  # the smallest max_spool_bytes the settings allow
LIMIT = BOUND * 1.10  # what the file may reach for a moment: one write or eviction past it
EVERYTHING = 1 << 40  # a claim's byte limit that takes every row


def on_disk(path: Path) -> int:
    """The spool's bytes on disk: the file, its -wal and its -shm."""
    sizes = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
    return sum(os.stat(p).st_size for p in sizes if p.exists())


def op_id(i: int) -> str:
    return f"o{i:06d}"


class TestFileSize:
    """Three times the bound written: the file never passes it by more than a tenth."""

    @pytest.mark.parametrize("per_write", [1, 50, 500], ids=["single", "50", "500"])
    def test_the_file_and_its_log_stay_within_the_bound(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path, per_write: int
    ) -> None:
        spool = make_spool(max_bytes=BOUND)
        total, evicted, peak = 5000, 0, 0
        for start in range(0, total, per_write):
            evicted += spool.add([make_op(op_id(i), 300) for i in range(start, start + per_write)])
            peak = max(peak, on_disk(spool_path))
        assert peak <= LIMIT
        assert evicted > total // 2  # the bound was passed many times over
        status = spool.status()
        assert status.file_bytes == on_disk(spool_path) <= LIMIT
        # Every operation either waits or was counted evicted: the oldest went, in order.
        assert status.pending + evicted == total
        assert ids_of(spool.claim(total, max_bytes=EVERYTHING)) == [
            op_id(i) for i in range(evicted, total)
        ]

    def test_claims_and_releases_meanwhile_keep_it_within_the_bound(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        # An outage: replay claims a batch, cannot send it, gives it back; writes go on.
        spool = make_spool(max_bytes=BOUND)
        evicted, peak = 0, 0
        for start in range(0, 6000, 5):
            evicted += spool.add([make_op(op_id(i), 200) for i in range(start, start + 5)])
            if start % 500 == 0:
                spool.release(ids_of(spool.claim(500)))
            peak = max(peak, on_disk(spool_path))
        assert peak <= LIMIT
        assert spool.pending() + evicted == 6000

    def test_dead_letters_share_the_bound_with_the_waiting_operations(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool(max_bytes=BOUND)
        # The dead letter's own bound: a quarter of max_bytes, filled.
        spool.dead_letter([make_letter(f"d{i}", body=b"x" * 250) for i in range(1100)])
        kept = spool.status().dead_letters
        evicted, peak = 0, 0
        for start in range(0, 6000, 5):
            evicted += spool.add([make_op(op_id(i), 200) for i in range(start, start + 5)])
            peak = max(peak, on_disk(spool_path))
        assert peak <= LIMIT
        status = spool.status()
        assert status.dead_letters == kept  # the waiting operations made room, not them
        assert status.pending + evicted == 6000

    def test_two_handles_on_one_file_keep_it_within_the_bound(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        # As two processes of one app would: each evicts what the file needs.
        first, second = make_spool(max_bytes=BOUND), make_spool(max_bytes=BOUND)
        evicted, peak = 0, 0
        for start in range(0, 6000, 5):
            ops = [make_op(op_id(i), 200) for i in range(start, start + 5)]
            evicted += (first if start % 2 else second).add(ops)
            peak = max(peak, on_disk(spool_path))
        assert peak <= LIMIT
        assert first.pending() + evicted == 6000

    def test_its_status_counts_the_log_and_the_logs_index(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool(max_bytes=BOUND)
        spool.add([make_op("a")])
        shm = spool_path.with_name(spool_path.name + "-shm")
        assert shm.stat().st_size > 0  # kept while the file is open
        assert spool.status().file_bytes == on_disk(spool_path)

    def test_below_a_mebibyte_only_the_operations_bytes_are_bounded(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        # Too small for the file's own pages: the bound is on the waiting bodies alone.
        spool = make_spool(max_bytes=BOUND - 1)
        for start in range(0, 6000, 500):
            spool.add([make_op(op_id(i), 200) for i in range(start, start + 500)])
        status = spool.status()
        assert BOUND // 2 < status.bytes <= BOUND - 1 < status.file_bytes
