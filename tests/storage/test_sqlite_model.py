"""The SQLite store against a model: any sequence of add, claim, ack, release and time
passing keeps every row that should wait, once, within its byte bound."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from customerio_logging._storage.leases import FRESH_LEASE, REPLAY_LEASE
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation, batch_body

from ..helpers import FakeClock, ids_of, make_op

_MODEL_IDS = [f"op{i:02d}" for i in range(16)]


def _model_size(op_id: str) -> int:
    return 20 + (int(op_id[2:]) * 53) % 240  # one size per id: an id is one operation


def _model_op(op_id: str) -> Operation:
    return make_op(op_id, _model_size(op_id))


class _SpoolModel(RuleBasedStateMachine):
    """Any sequence of add/claim/ack/release/time against a model of what is waiting.

    Invariants: a claim never returns an id that an outstanding claim holds; nothing is
    lost but what was acked or evicted (evictions take the oldest, and only past the
    bound); the byte count is exact and within max_bytes.
    """

    MAX_BYTES = 1500

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory(prefix="spool-model-")
        self.clock = FakeClock()
        self.spool = SQLiteSpool(
            Path(self.directory.name) / "s.sqlite3", max_bytes=self.MAX_BYTES, clock=self.clock
        )
        self.order: list[str] = []  # waiting ids, oldest first
        self.lease_until: dict[str, float | None] = {}
        self.claimed: set[str] = set()  # outstanding claims

    def teardown(self) -> None:
        self.spool.close()
        self.directory.cleanup()

    def _forget(self, ids: list[str]) -> None:
        for op_id in ids:
            self.order.remove(op_id)
            del self.lease_until[op_id]
            self.claimed.discard(op_id)

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), min_size=1, max_size=6), lease=st.booleans())
    def add(self, ids: list[str], lease: bool) -> None:
        evicted = self.spool.add([_model_op(i) for i in ids], lease=lease)
        for op_id in ids:
            if op_id not in self.lease_until:
                self.order.append(op_id)
            elif lease:
                # A reservation never takes back a row already there (spooled, or
                # claimed by replay): it stays as it is.
                continue
            # New, or added again without a lease: released, any claim on it over.
            self.lease_until[op_id] = self.clock.now + FRESH_LEASE if lease else None
            self.claimed.discard(op_id)
        used = sum(map(_model_size, self.order))
        assert (evicted > 0) == (used > self.MAX_BYTES)
        self._forget(self.order[:evicted])

    @rule(limit=st.integers(0, 8), max_bytes=st.integers(0, 800))
    def claim(self, limit: int, max_bytes: int) -> None:
        got = self.spool.claim(limit, max_bytes=max_bytes)
        ids = ids_of(got)
        assert not set(ids) & self.claimed, "an id was claimed twice"
        now = self.clock.now
        free = [i for i in self.order if (self.lease_until[i] or 0.0) <= now]
        assert ids == free[: len(ids)], "not the oldest free rows, in order"
        assert got == [_model_op(i) for i in ids]
        assert len(ids) <= limit
        assert len(ids) <= 1 or len(batch_body(got)) <= max_bytes
        if len(ids) < min(limit, len(free)):
            assert len(batch_body([*got, _model_op(free[len(ids)])])) > max_bytes
        for op_id in ids:
            self.lease_until[op_id] = now + REPLAY_LEASE
        self.claimed.update(ids)

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def ack_claimed(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.claimed)), unique=True))
        self.spool.ack(ids)
        self._forget(ids)

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), unique=True))
    def ack_any(self, ids: list[str]) -> None:
        self.spool.ack(ids)
        self._forget([i for i in ids if i in self.lease_until])

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), unique=True))
    def release(self, ids: list[str]) -> None:
        self.spool.release(ids)
        for op_id in ids:
            if op_id in self.lease_until:
                self.lease_until[op_id] = None
                self.claimed.discard(op_id)

    @rule(seconds=st.sampled_from([1.0, REPLAY_LEASE, FRESH_LEASE]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.claimed = {i for i in self.claimed if (self.lease_until[i] or 0.0) > self.clock.now}

    @invariant()
    def nothing_is_lost_and_bytes_are_exact(self) -> None:
        status = self.spool.status()
        assert status.pending == len(self.order)
        assert status.bytes == sum(map(_model_size, self.order)) <= self.MAX_BYTES
        leased = [i for i in self.order if (self.lease_until[i] or 0.0) > self.clock.now]
        assert status.leased == len(leased)


TestSpoolModel = _SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
