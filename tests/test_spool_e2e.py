"""The spool end to end, in separate processes: an outage, SIGKILL, two drainers."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import (
    assert_each_once,
    children,
    program,
    read_line,
    run_python,
    spool_pending,
    users,
)

TIMEOUT = 90.0
DOWN = FaultPlan(failure_rate=1.0, failure_statuses=(503,))


def _command(*args: str) -> list[object]:
    return [program("spool_app"), *args]


def _spool_at(spool: Path) -> dict[str, str]:
    return {"CUSTOMERIO_SPOOL_PATH": str(spool)}


def _run(emulator: TrackAPIEmulator, spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/programs/spool_app.py with ``args``, its spool at ``spool``."""
    return run_python(*_command(*args), emulator=emulator, env=_spool_at(spool), timeout=TIMEOUT)


def _replay(emulator: TrackAPIEmulator, spool: Path) -> dict[str, Any]:
    result = _run(emulator, spool, "replay", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    stats: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return stats


def _log_while_down(emulator: TrackAPIEmulator, spool: Path, count: int) -> None:
    """A process logs ``count`` events while the API is down: all wait in the spool."""
    emulator.set_faults(DOWN)
    result = _run(emulator, spool, "log", str(count))
    assert result.returncode == 0, result.stderr
    assert emulator.operations == []
    assert spool_pending(spool) == count


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite3"


class TestOutage:
    def test_events_logged_while_the_api_is_down_are_delivered_by_a_later_process(
        self, emulator: TrackAPIEmulator, spool: Path
    ) -> None:
        _log_while_down(emulator, spool, 3000)
        # The file is the owner's alone, and holds no API key.
        for path in spool.parent.iterdir():
            if path.name.startswith(spool.name) and path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                assert emulator.api_key.encode() not in path.read_bytes(), path

        emulator.set_faults(None)
        stats = _replay(emulator, spool)
        assert_each_once(emulator, users("u", 3000))
        assert stats["replayed"] == 3000
        assert spool_pending(spool) == 0


class TestDiskDurability:
    @pytest.mark.parametrize("api", ["down", "up"])
    def test_sigkill_after_logging_loses_none_of_the_events(
        self, emulator: TrackAPIEmulator, spool: Path, api: str
    ) -> None:
        if api == "down":
            emulator.set_faults(DOWN)
        command = _command("log", "1000", "--durability", "disk", "--end", "wait")
        env = _spool_at(spool)
        with children(command, emulator=emulator, env=env, timeout=TIMEOUT) as (app,):
            assert read_line(app).strip() == "logged"
            app.send_signal(signal.SIGKILL)
            assert app.wait(TIMEOUT) == -signal.SIGKILL
        emulator.set_faults(None)
        _replay(emulator, spool)
        delivered = {op["identifiers"]["id"] for op in emulator.operations}
        assert delivered == users("u", 1000)  # none lost
        if api == "down":
            assert_each_once(emulator, users("u", 1000))
        assert spool_pending(spool) == 0


class TestTwoDrainers:
    def test_two_processes_draining_one_spool_send_no_row_twice(
        self, emulator: TrackAPIEmulator, spool: Path
    ) -> None:
        _log_while_down(emulator, spool, 4000)
        emulator.set_faults(None)
        replay = _command("replay", "--timeout", "60")
        env = _spool_at(spool)
        with children(replay, replay, emulator=emulator, env=env, timeout=TIMEOUT) as drainers:
            outputs = [d.communicate(timeout=TIMEOUT) for d in drainers]
        for drainer, (_, err) in zip(drainers, outputs, strict=True):
            assert drainer.returncode == 0, err
        replayed = [json.loads(out.splitlines()[-1])["replayed"] for out, _ in outputs]
        assert sum(replayed) == 4000
        assert_each_once(emulator, users("u", 4000))


class TestShortLivedProcess:
    def test_a_process_too_short_for_background_replay_still_sends_the_backlog(
        self, emulator: TrackAPIEmulator, spool: Path
    ) -> None:
        # A cron job: before, a process that lived under a second never replayed (the
        # background replay starts a second after the bridge), so a backlog never left.
        _log_while_down(emulator, spool, 300)
        emulator.set_faults(None)
        started = time.monotonic()
        result = _run(emulator, spool, "log", "1", "--prefix", "late")
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert_each_once(emulator, users("u", 300) | {"late0"})
        assert spool_pending(spool) == 0
        assert took < 2.0 + 5.0, took  # shutdown_timeout, plus the interpreter's start
