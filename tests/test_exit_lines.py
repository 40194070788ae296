"""At exit, one line says how many events are pending and how long the exit waits for
them, and one how many could not be delivered; on_error hears of those too. Each case is
a separate process (tests/programs/exit_lines_app.py) that really ends: exit, SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import program, run_python, unreachable_api

TIMEOUT = 60.0
PENDING = re.compile(r"(\d+) events? pending, waiting up to ([0-9.]+) s")
UNDELIVERED = re.compile(r"(\d+) events? not delivered: (.*)")


def _run(
    *args: object, emulator: TrackAPIEmulator | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python(program("exit_lines_app"), *args, emulator=emulator, env=env, timeout=TIMEOUT)


def _lines(result: subprocess.CompletedProcess[str], pattern: re.Pattern[str]) -> list[Any]:
    return [match.groups() for match in map(pattern.search, result.stderr.splitlines()) if match]


def _reports(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("report "))
        for line in result.stdout.splitlines()
        if line.startswith("report ")
    ]


class TestExitLines:
    def test_a_slow_api_is_waited_for_once_and_everything_arrives(self) -> None:
        with TrackAPIEmulator() as emulator:
            emulator.set_faults(FaultPlan(delay=0.3))
            result = _run("--count", 5, emulator=emulator)
            delivered = len(emulator.operations)
        assert result.returncode == 0, result.stderr
        assert _lines(result, PENDING) == [("5", "5")], result.stderr
        assert _lines(result, UNDELIVERED) == [], result.stderr
        assert delivered == 5
        assert _reports(result) == []

    def test_only_the_events_still_queued_at_exit_are_counted(self) -> None:
        with TrackAPIEmulator() as emulator:
            emulator.set_faults(FaultPlan(delay=0.1))
            result = _run("--count", 5, "--flush", "--after", 2, emulator=emulator)
            delivered = len(emulator.operations)
        assert result.returncode == 0, result.stderr
        assert "flushed True" in result.stdout
        assert _lines(result, PENDING) == [("2", "5")], result.stderr
        assert _lines(result, UNDELIVERED) == [], result.stderr
        assert delivered == 7

    @pytest.mark.parametrize("end", ["exit", "sigterm"])
    def test_an_unreachable_api_without_a_spool_says_what_was_lost(self, end: str) -> None:
        result = _run(
            *("--count", 5, "--shutdown-timeout", 1, "--no-spool", "--end", end),
            env=unreachable_api(),
        )
        assert result.returncode == (0 if end == "exit" else -15), result.stderr
        assert _lines(result, PENDING) == [("5", "1")], result.stderr
        ((total, parts),) = _lines(result, UNDELIVERED)
        assert total == "5", result.stderr
        # Given up on at the deadline, or failed after the retries ran out.
        assert parts in ("5 dropped", "5 failed (the spool is off or unusable)"), parts
        reports = _reports(result)
        assert sum(r["total"] for r in reports) == 5, reports
        assert {r["kind"] for r in reports} <= {"dropped", "failed"}, reports
        assert {r["thread"] for r in reports} == {"customerio-on-error"}, reports

    @pytest.mark.parametrize("end", ["exit", "sigterm"])
    def test_a_hanging_api_leaves_the_events_spooled_and_says_so(
        self, hanging_api: str, end: str
    ) -> None:
        env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_TRACK_API_KEY": "k"}
        env["CUSTOMERIO_TRACK_URL"] = hanging_api
        result = _run("--count", 3, "--shutdown-timeout", 1, "--end", end, env=env)
        assert result.returncode == (0 if end == "exit" else -15), result.stderr
        assert _lines(result, PENDING) == [("3", "1")], result.stderr
        assert _lines(result, UNDELIVERED) == [("3", "3 spooled (sent later, by replay)")]
        assert _reports(result) == []  # spooled is not lost

    def test_a_hanging_api_without_a_spool_reports_the_failure_before_the_exit_ends(
        self, hanging_api: str
    ) -> None:
        env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_TRACK_API_KEY": "k"}
        env["CUSTOMERIO_TRACK_URL"] = hanging_api
        result = _run("--count", 3, "--shutdown-timeout", 1, "--no-spool", env=env)
        assert result.returncode == 0, result.stderr
        # The deadline cut the request: the exit waited for its batch to be settled.
        assert _lines(result, UNDELIVERED) == [("3", "3 failed (the spool is off or unusable)")]
        # And for on_error to be told, before the process ended.
        (report,) = _reports(result)
        assert (report["kind"], report["total"], report["reason"]) == ("failed", 3, "network_error")
        assert report["thread"] == "customerio-on-error"

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(("--end", "shutdown"), id="the-app-shut-down-first"),
            pytest.param(("--close-logging",), id="logging-shut-down-first"),
            pytest.param(("--end", "sigterm-in-emit"), id="sigterm-inside-a-handler"),
        ],
    )
    def test_the_lines_are_said_once_and_never_hang_the_exit(self, args: tuple[str, ...]) -> None:
        result = _run(
            *("--count", 2, "--shutdown-timeout", 1, "--no-spool", *args),
            env=unreachable_api(),
        )
        expected = -15 if "sigterm-in-emit" in args else 0
        assert result.returncode == expected, result.stderr
        assert _lines(result, PENDING) == [("2", "1")], result.stderr
        assert len(_lines(result, UNDELIVERED)) == 1, result.stderr
        assert "Traceback" not in result.stderr
