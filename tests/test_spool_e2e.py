"""The spool end to end, in separate processes: an outage, SIGKILL, two drainers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .conftest import PROGRAMS, spool_pending

TIMEOUT = 90.0
DOWN = FaultPlan(failure_rate=1.0, failure_statuses=(503,))


def _env(emulator: TrackAPIEmulator, spool: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CUSTOMERIO_SITE_ID": emulator.site_id,
        "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
        "CUSTOMERIO_TRACK_URL": emulator.url,
        "CUSTOMERIO_SPOOL_PATH": str(spool),
    }


def _run(emulator: TrackAPIEmulator, spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROGRAMS / "spool_app.py"), *args],
        env=_env(emulator, spool),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _replay(emulator: TrackAPIEmulator, spool: Path) -> dict[str, Any]:
    result = _run(emulator, spool, "replay", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    stats: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return stats


def _users(prefix: str, n: int) -> set[str]:
    return {f"{prefix}{i}" for i in range(n)}


def _assert_each_once(emulator: TrackAPIEmulator, users: set[str]) -> None:
    ids = emulator.accepted_ids()
    assert [i for i, n in ids.items() if n > 1] == [], "an operation id was accepted twice"
    people = {op["identifiers"]["id"] for op in emulator.operations}
    assert people == users
    assert len(ids) == len(users)


class TestOutage:
    def test_events_logged_while_the_api_is_down_are_delivered_by_a_later_process(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        emulator.set_faults(DOWN)
        result = _run(emulator, spool, "log", "3000")
        assert result.returncode == 0, result.stderr
        assert emulator.operations == []
        assert spool_pending(spool) == 3000
        # The file is the owner's alone, and holds no API key.
        for path in spool.parent.iterdir():
            if path.name.startswith(spool.name) and path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                assert emulator.api_key.encode() not in path.read_bytes(), path

        emulator.set_faults(None)
        stats = _replay(emulator, spool)
        _assert_each_once(emulator, _users("u", 3000))
        assert stats["replayed"] == 3000
        assert spool_pending(spool) == 0


class TestDiskDurability:
    @pytest.mark.parametrize("api", ["down", "up"])
    def test_sigkill_after_logging_loses_none_of_the_events(
        self, emulator: TrackAPIEmulator, tmp_path: Path, api: str
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        if api == "down":
            emulator.set_faults(DOWN)
        app = subprocess.Popen(
            [
                sys.executable,
                str(PROGRAMS / "spool_app.py"),
                "log",
                "1000",
                "--durability",
                "disk",
                "--end",
                "wait",
            ],
            env=_env(emulator, spool),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None
            assert app.stdout.readline().strip() == "logged"
            app.send_signal(signal.SIGKILL)
            assert app.wait(TIMEOUT) == -signal.SIGKILL
        finally:
            if app.poll() is None:
                app.kill()
                app.wait(TIMEOUT)
        emulator.set_faults(None)
        _replay(emulator, spool)
        delivered = {op["identifiers"]["id"] for op in emulator.operations}
        assert delivered == _users("u", 1000)  # none lost
        if api == "down":
            _assert_each_once(emulator, _users("u", 1000))
        assert spool_pending(spool) == 0


class TestTwoDrainers:
    def test_two_processes_draining_one_spool_send_no_row_twice(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        spool = tmp_path / "spool.sqlite3"
        emulator.set_faults(DOWN)
        result = _run(emulator, spool, "log", "4000")
        assert result.returncode == 0, result.stderr
        assert spool_pending(spool) == 4000
        emulator.set_faults(None)
        drainers = [
            subprocess.Popen(
                [sys.executable, str(PROGRAMS / "spool_app.py"), "replay", "--timeout", "60"],
                env=_env(emulator, spool),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [d.communicate(timeout=TIMEOUT) for d in drainers]
        for drainer, (_, err) in zip(drainers, outputs, strict=True):
            assert drainer.returncode == 0, err
        replayed = [json.loads(out.splitlines()[-1])["replayed"] for out, _ in outputs]
        assert sum(replayed) == 4000
        _assert_each_once(emulator, _users("u", 4000))


class TestShortLivedProcess:
    def test_a_process_too_short_for_background_replay_still_sends_the_backlog(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        # A cron job: before, a process that lived under a second never replayed (the
        # background replay starts a second after the bridge), so a backlog never left.
        spool = tmp_path / "spool.sqlite3"
        emulator.set_faults(DOWN)
        assert _run(emulator, spool, "log", "300").returncode == 0
        assert spool_pending(spool) == 300
        emulator.set_faults(None)
        started = time.monotonic()
        result = _run(emulator, spool, "log", "1", "--prefix", "late")
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        _assert_each_once(emulator, _users("u", 300) | {"late0"})
        assert spool_pending(spool) == 0
        assert took < 2.0 + 5.0, took  # shutdown_timeout, plus the interpreter's start
