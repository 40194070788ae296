"""``flush_after``: a Lambda-style handler delivers or spools before it returns, bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from customerio_logging.integrations.aws_lambda import DEFAULT_TIMEOUT, SAFETY_MARGIN, _bound
from customerio_logging.testing import TrackAPIEmulator

from .helpers import program, run_python, spool_pending, unreachable_api


def _invoke(
    api: TrackAPIEmulator | None,
    spool: Path,
    *,
    invocations: int,
    events: int,
    remaining: int = 30_000,
) -> dict[str, Any]:
    """Run the handler program against ``api`` (None: an API that cannot be reached)."""
    env = {"CUSTOMERIO_SPOOL_PATH": str(spool), **(unreachable_api() if api is None else {})}
    argv = (invocations, events, remaining)
    result = run_python(program("lambda_app"), *argv, emulator=api, env=env, check=True)
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


class TestFlushAfter:
    def test_with_the_api_down_each_invocation_is_bounded_and_its_events_are_on_disk(
        self, tmp_path: Path
    ) -> None:
        # Before: flush() waited shutdown_timeout (5 s) per invocation with the API down,
        # and without it the events logged before the sandbox froze were lost.
        spool = tmp_path / "spool.sqlite3"
        report = _invoke(None, spool, invocations=3, events=4)
        assert max(report["took"]) < DEFAULT_TIMEOUT + 0.5, report["took"]
        # The process ended with os._exit right after the last invocation returned.
        assert spool_pending(spool) == 12
        assert report["spooled"] == 12
        assert report["dropped"] == report["failed"] == 0

    def test_with_the_api_up_events_are_delivered_before_the_handler_returns(
        self, tmp_path: Path, emulator: TrackAPIEmulator
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        report = _invoke(emulator, spool, invocations=3, events=4)
        assert report["sent"] == 12
        people = sorted(op["identifiers"]["id"] for op in emulator.operations)
        assert people == sorted(f"u{n}-{i}" for n in range(3) for i in range(4))
        assert all(n == 1 for n in emulator.accepted_ids().values())
        assert max(report["took"]) < DEFAULT_TIMEOUT, report["took"]
        assert spool_pending(spool) == 0

    def test_the_bound_never_reaches_into_the_invocations_last_half_second(
        self, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        report = _invoke(None, spool, invocations=1, events=2, remaining=700)
        assert report["took"][0] < 0.2 + 0.5, report["took"]
        assert spool_pending(spool) == 2


class TestBound:
    @pytest.mark.parametrize(
        ("timeout", "remaining_ms", "expected"),
        [
            (None, None, DEFAULT_TIMEOUT),
            (None, 30_000, DEFAULT_TIMEOUT),
            (3.0, 30_000, 3.0),
            (3.0, 1_500, 1.5 - SAFETY_MARGIN),
            (None, 200, 0.0),
        ],
    )
    def test_the_timeout_within_the_remaining_time(
        self, timeout: float | None, remaining_ms: int | None, expected: float
    ) -> None:
        class Context:
            def get_remaining_time_in_millis(self) -> int:
                assert remaining_ms is not None
                return remaining_ms

        context = None if remaining_ms is None else Context()
        assert _bound(timeout, context) == pytest.approx(expected)
