"""Whole programs in subprocesses: exit without flush, dictConfig, re-configuration."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter

from ulid import ULID

from customerio_logging.testing import TrackAPIEmulator

from .conftest import run_program


class TestExitWithoutFlush:
    def test_every_tagged_event_arrives_exactly_once_in_multi_op_batches(
        self, emulator: TrackAPIEmulator
    ) -> None:
        started = time.time()
        result = run_program("exit_without_flush", emulator, "2000")
        assert result.returncode == 0, result.stderr
        ops = emulator.operations
        assert len(ops) == 4000
        ids = Counter(op["id"] for op in ops)
        assert len(ids) == 4000, "an event arrived twice"
        people = Counter(op["identifiers"]["id"] for op in ops)
        assert set(people) == {f"s{i}" for i in range(2000)} | {f"l{i}" for i in range(2000)}
        for op in ops:
            assert op["type"] == "person"
            assert op["action"] == "event"
            assert op["name"] == "plan_changed"
            assert op["attributes"]["from"] == "free"
            assert op["attributes"]["to"] == "pro"
            assert "from_" not in op["attributes"]
            assert isinstance(op["timestamp"], int)
            assert started - 1 <= op["timestamp"] <= time.time() + 1
            assert ULID.from_str(op["id"]).timestamp >= started - 1
        batch_sizes = [r.op_count for r in emulator.requests if r.path == "/api/v2/batch"]
        assert all(r.status == 200 for r in emulator.requests)
        assert max(batch_sizes) > 1
        assert len(batch_sizes) < 100

    def test_the_exit_respects_shutdown_timeout_when_the_api_hangs(self) -> None:
        import socket

        # A listener that accepts connections and never answers.
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(64)
            port = server.getsockname()[1]
            code = (
                "import logging, customerio_logging as cio\n"
                f"cio.configure(site_id='s', api_key='k', track_url='http://127.0.0.1:{port}',"
                " shutdown_timeout=1.0, request_timeout=30.0)\n"
                "log = logging.getLogger('a'); log.addHandler(cio.CustomerIOHandler())\n"
                "log.warning('e', extra={'cio_event': True, 'user_id': 'u'})\n"
            )
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
            )
            elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 10, f"exit took {elapsed:.1f}s with shutdown_timeout=1.0"


class TestDictConfig:
    def test_a_dictconfig_only_app_delivers_from_environment_settings(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_program("dictconfig_app", emulator, "100")
        assert result.returncode == 0, result.stderr
        ops = emulator.operations
        assert len(ops) == 100
        assert {op["identifiers"]["email"] for op in ops} == {
            f"c{i}@example.com" for i in range(100)
        }
        assert ops[0]["attributes"] == {"total": 0}

    def test_reconfiguring_logging_does_not_deadlock_or_lose_events(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_program("dictconfig_app", emulator, "300", "reconfigure", timeout=30)
        assert result.returncode == 0, result.stderr
        assert len(emulator.operations) == 300

    def test_missing_settings_are_reported_clearly_not_crashing_the_app(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_program("dictconfig_app", emulator, "5", env={"CUSTOMERIO_TRACK_API_KEY": ""})
        assert result.returncode == 0, result.stderr
        assert emulator.operations == []
        warnings = re.findall(r"not configured.*CUSTOMERIO_TRACK_API_KEY", result.stderr)
        assert len(warnings) == 1, result.stderr
        assert "Traceback" not in result.stderr
