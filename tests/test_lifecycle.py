"""Whole programs in subprocesses: exit without flush, dictConfig, re-configuration."""

from __future__ import annotations

import ast
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from ulid import ULID

from customerio_logging import _lifecycle
from customerio_logging.testing import TrackAPIEmulator

from .helpers import program, run_python


class TestExitWithoutFlush:
    def test_every_tagged_event_arrives_exactly_once_in_multi_op_batches(
        self, emulator: TrackAPIEmulator
    ) -> None:
        started = time.time()
        result = run_python(program("exit_without_flush"), "2000", emulator=emulator)
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

    def test_the_exit_respects_shutdown_timeout_when_the_api_hangs(self, hanging_api: str) -> None:
        # Three handlers: logging.shutdown() flushes each after the exit hook ran out
        # of time; none may start the deadline again.
        code = (
            "import logging, customerio_logging as cio\n"
            f"cio.configure(site_id='s', api_key='k', track_url='{hanging_api}',"
            " shutdown_timeout=1.0, request_timeout=30.0)\n"
            "log = logging.getLogger('a')\n"
            "for _ in range(3): log.addHandler(cio.CustomerIOHandler())\n"
            "log.warning('e', extra={'cio_event': True, 'user_id': 'u'})\n"
            "import time; started = time.monotonic()\n"
            "import atexit\n"
            "atexit.register(lambda: print(f'exit:{time.monotonic() - started:.2f}'))\n"
        )
        started = time.monotonic()
        result = run_python("-c", code, timeout=30)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 10, f"the process took {elapsed:.1f}s"
        # From the script's end to the last atexit hook: the one 1 s deadline, once.
        (exit_seconds,) = re.findall(r"exit:([0-9.]+)", result.stdout)
        assert float(exit_seconds) < 2.5, result.stdout


class TestDictConfig:
    def test_a_dictconfig_only_app_delivers_from_environment_settings(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_python(program("dictconfig_app"), "100", emulator=emulator)
        assert result.returncode == 0, result.stderr
        ops = emulator.operations
        assert len(ops) == 100
        assert {op["identifiers"]["email"] for op in ops} == {
            f"c{i}@example.com" for i in range(100)
        }
        assert ops[0]["attributes"] == {"total": 0}

    def test_reconfiguring_logging_does_not_stall_or_lose_events(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_python(
            program("dictconfig_app"), "300", "reconfigure", emulator=emulator, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert len(emulator.operations) == 300
        (seconds,) = re.findall(r"reconfigure took ([0-9.]+)s", result.stderr)
        # dictConfig flushes the old handlers under logging's lock: that must not wait
        # for delivery (shutdown_timeout is 5 s).
        assert float(seconds) < 1.0

    def test_events_logged_by_the_apps_own_exit_hooks_are_delivered(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_python(program("exit_hook_app"), emulator=emulator)
        assert result.returncode == 0, result.stderr
        assert sorted(op["name"] for op in emulator.operations) == ["app_started", "app_stopped"]

    def test_missing_settings_are_reported_clearly_not_crashing_the_app(
        self, emulator: TrackAPIEmulator
    ) -> None:
        result = run_python(
            program("dictconfig_app"), "5", emulator=emulator, env={"CUSTOMERIO_TRACK_API_KEY": ""}
        )
        assert result.returncode == 0, result.stderr
        assert emulator.operations == []
        warnings = re.findall(r"not configured.*CUSTOMERIO_TRACK_API_KEY", result.stderr)
        assert len(warnings) == 1, result.stderr
        assert "Traceback" not in result.stderr


class TestReentrantLogCalls:
    def test_a_tagged_call_from_a_signal_handler_during_the_first_build_never_deadlocks(
        self, emulator: TrackAPIEmulator
    ) -> None:
        # Before the fix the handler's call waited forever for the lock its own thread
        # held while building the bridge: the program hung until the timeout.
        result = run_python(program("reentrant_app"), "first", emulator=emulator, timeout=30)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.splitlines()[-1])
        assert report["fired"] >= 1
        assert report["delivered"] is True
        assert report["sent"] == report["enqueued"] == report["fired"] + 1
        names = [op["name"] for op in emulator.operations]
        assert names.count("first") == 1
        assert names.count("from_signal") == report["fired"]


class TestForkHooks:
    def test_a_hook_that_raises_is_reported_and_the_next_still_runs(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ran: list[str] = []

        def broken() -> None:
            ran.append("broken")
            raise RuntimeError("boom")

        _lifecycle._run_each([broken, lambda: ran.append("next")])
        assert ran == ["broken", "next"]
        err = capsys.readouterr().err
        assert "fork hook" in err
        assert "broken" in err
        assert "RuntimeError: boom" in err

    def test_only_the_lifecycle_registers_process_hooks(self) -> None:
        # Every exit and fork hook goes through _lifecycle, called from one place
        # (_global), so their order is written down once.
        registering = set()
        for path in Path(_lifecycle.__file__).parent.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Attribute):
                    continue
                owner = node.value
                if (
                    node.attr in ("register_at_fork", "register")
                    and isinstance(owner, ast.Name)
                    and owner.id in ("os", "atexit")
                ):
                    registering.add(path.name)
        assert registering == {"_lifecycle.py"}
        calls = [
            path.name
            for path in Path(_lifecycle.__file__).parent.rglob("*.py")
            if "install_fork_hooks(" in path.read_text() and path.name != "_lifecycle.py"
        ]
        assert calls == ["_global.py"]
