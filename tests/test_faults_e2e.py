"""Issue 3's acceptance run: a whole app against a faulty Track API delivers everything."""

from __future__ import annotations

import re

import pytest

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import program, run_python


@pytest.fixture
def faulty() -> TrackAPIEmulator:
    plan = FaultPlan(
        seed=7,
        failure_rate=0.3,
        failure_statuses=(500, 503),
        drop_rate=0.03,
        drop_after_accept_rate=0.02,
        rate_limit=20,
        retry_after=1,
    )
    with TrackAPIEmulator(faults=plan) as emu:
        yield emu


def test_every_event_arrives_through_failures_and_dropped_connections(
    faulty: TrackAPIEmulator,
) -> None:
    result = run_python(program("faulty_app"), "5000", emulator=faulty, timeout=180)
    assert result.returncode == 0, result.stderr
    accepted = faulty.accepted_ids()
    ops = faulty.operations
    by_user = {op["identifiers"]["id"] for op in ops}
    # None missing.
    assert by_user == {f"u{i}" for i in range(5000)}
    assert len(accepted) == 5000
    # Duplicates only where a connection dropped after the server accepted the batch.
    duplicated = sum(n - 1 for n in accepted.values())
    faults = [r.fault for r in faulty.requests]
    after_accept = [r for r in faulty.requests if r.fault == "drop_after_accept"]
    assert duplicated <= sum(r.op_count for r in after_accept)
    # The faults really happened.
    assert faults.count("failure_rate") > 0
    assert faults.count("drop") + len(after_accept) > 0
    # The app's thread never waited on the network (a wait would be >= a Retry-After).
    (slowest,) = re.findall(r"slowest log call: ([0-9.]+)s", result.stdout)
    assert float(slowest) < 0.5


class TestRateLimit:
    def test_429s_pause_the_pipeline_and_every_event_still_arrives(self) -> None:
        with TrackAPIEmulator(faults=FaultPlan(rate_limit=20, retry_after=1)) as emu:
            result = run_python(
                program("faulty_app"), "1000", "200", "10", emulator=emu, timeout=120
            )
            assert result.returncode == 0, result.stderr
            assert [r.fault for r in emu.requests].count("rate_limit") > 0
            assert set(emu.accepted_ids().values()) == {1}
            assert len(emu.accepted_ids()) == 1000

    def test_our_own_rate_limit_keeps_under_the_apis(self) -> None:
        with TrackAPIEmulator(faults=FaultPlan(rate_limit=20, retry_after=1)) as emu:
            result = run_python(program("faulty_app"), "200", "10", "10", emulator=emu, timeout=120)
            assert result.returncode == 0, result.stderr
            assert [r.fault for r in emu.requests].count("rate_limit") == 0
            assert len(emu.accepted_ids()) == 200
