"""SIGTERM, and the other ends of a process while a batch hangs, each in a subprocess.

Every subprocess has a hard timeout: a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging._capture import Snapshot
from customerio_logging._wire import Response
from customerio_logging.testing import TrackAPIEmulator

from .helpers import (
    GatedTransport,
    assert_each_once,
    program,
    run_python,
    start_python,
    users,
)

MARGIN = 2.5  # seconds a process may take beyond its deadline: start-up, scheduling
HARD_TIMEOUT = 30.0  # no subprocess lives longer, whatever happens


class _App:
    """A program running in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, emulator: TrackAPIEmulator, *args: str, track_url: str | None) -> None:
        """Start tests/programs/sigterm_app.py with ``args``, sending to ``emulator`` (or
        to ``track_url`` with its credentials)."""
        env = {"CUSTOMERIO_TRACK_URL": track_url} if track_url else {}
        self.process = start_python(
            program("sigterm_app"), *args, emulator=emulator, env=env, stdin=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def line(self, timeout: float = HARD_TIMEOUT) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from the program within {timeout}s: {self._stderr_now()}")

    def ready(self) -> dict[str, Any]:
        """The program's readiness line: its pid and whether configure() took SIGTERM."""
        info: dict[str, Any] = json.loads(self.line())
        return info

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def terminate(self) -> float:
        """Send SIGTERM; returns when it was sent (monotonic)."""
        sent = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        return sent

    def wait(self, timeout: float = HARD_TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"the program did not end within {timeout}s: {self._stderr_now()}")
        self._reader.join(5)
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()
        return code

    def rest(self) -> list[str]:
        """The lines printed and not yet read (call after wait)."""
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get_nowait())
        return lines

    def _stderr_now(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()[-2000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def _running(
    emulator: TrackAPIEmulator, *args: str, track_url: str | None = None
) -> Iterator[_App]:
    app = _App(emulator, *args, track_url=track_url)
    try:
        yield app
    finally:
        app.close()


class TestSigterm:
    def test_queued_events_are_delivered_and_the_process_dies_by_the_signal(
        self, emulator: TrackAPIEmulator
    ) -> None:
        with _running(emulator, "300") as app:
            info = app.ready()
            assert info["replaced"] is True
            assert emulator.operations == [], "flush_interval is 60 s: nothing went yet"
            sent = app.terminate()
            code = app.wait()
            elapsed = time.monotonic() - sent
        assert code == -signal.SIGTERM, app.stderr
        assert elapsed < 5.0 + MARGIN  # shutdown_timeout is 5 s
        assert_each_once(emulator, users("u", 300))

    def test_the_exit_stays_within_shutdown_timeout_when_the_api_hangs(
        self, emulator: TrackAPIEmulator, hanging_api: str
    ) -> None:
        args = ("50", "--shutdown-timeout", "1", "--request-timeout", "30")
        with _running(emulator, *args, track_url=hanging_api) as app:
            app.ready()
            sent = app.terminate()
            code = app.wait()
            elapsed = time.monotonic() - sent
        assert code == -signal.SIGTERM, app.stderr
        assert elapsed < 1.0 + MARGIN

    def test_a_previous_python_handler_runs_after_the_flush(
        self, emulator: TrackAPIEmulator
    ) -> None:
        with _running(emulator, "100", "--previous", "python") as app:
            assert app.ready()["replaced"] is True
            app.terminate()
            code = app.wait()
        assert code == 3, app.stderr  # the exit status the app's handler chose
        # When it ran, everything queued was already delivered.
        assert app.rest() == ["previous handler ran: signum=15 sent=100"]
        assert_each_once(emulator, users("u", 100))

    def test_a_previously_ignored_sigterm_is_still_ignored_after_the_flush(
        self, emulator: TrackAPIEmulator
    ) -> None:
        with _running(emulator, "40", "--previous", "ignore") as app:
            app.ready()
            app.terminate()
            assert emulator.wait_for_operations(40, timeout=10.0)
            # Still running, and the bridge still delivers: it was flushed, not stopped.
            app.send("more")
            assert app.line() == "more flushed=True sent=80"
            assert app.process.poll() is None
        assert_each_once(emulator, users("u", 40) | users("m", 40))

    @pytest.mark.parametrize(
        ("previous", "expected_code", "expected_lines", "delivered"),
        [
            # The app's own handler runs alone; the exit it chooses still runs the exit
            # hook, which delivers.
            ("python", 3, ["previous handler ran: signum=15 sent=0"], 60),
            # Nothing handles SIGTERM: the process dies at once, with what it queued.
            ("default", -signal.SIGTERM, [], 0),
        ],
    )
    def test_opting_out_leaves_the_previous_handler_alone(
        self,
        emulator: TrackAPIEmulator,
        previous: str,
        expected_code: int,
        expected_lines: list[str],
        delivered: int,
    ) -> None:
        args = ("60", "--previous", previous, "--opt-out")
        with _running(emulator, *args) as app:
            assert app.ready()["replaced"] is False
            app.terminate()
            code = app.wait()
        assert code == expected_code, app.stderr
        assert app.rest() == expected_lines
        assert len(emulator.operations) == delivered

    def test_configuring_twice_installs_one_handler_that_chains_once(
        self, emulator: TrackAPIEmulator
    ) -> None:
        args = ("30", "--previous", "python", "--configure-twice")
        with _running(emulator, *args) as app:
            app.ready()  # the program asserts the second configure kept the handler
            app.terminate()
            code = app.wait()
        assert code == 3, app.stderr
        assert app.rest() == ["previous handler ran: signum=15 sent=30"]
        assert_each_once(emulator, users("u", 30))

    @pytest.mark.parametrize("lock", ["counters", "markers", "wake", "shutdown", "receipts"])
    def test_the_handler_never_deadlocks_on_a_lock_the_main_thread_holds(
        self, emulator: TrackAPIEmulator, lock: str
    ) -> None:
        # The program signals itself inside `with lock:`: the handler runs on the same
        # thread while that lock is held. The flush may not finish (the dispatch thread
        # may need the lock), but the handler must return within shutdown_timeout; then
        # the shutdown counts what is left (four batches of five: some are left).
        started = time.monotonic()
        result = run_python(
            program("sigterm_app"),
            "20",
            "--hold",
            lock,
            "--batch-size",
            "5",
            "--shutdown-timeout",
            "1",
            emulator=emulator,
            timeout=HARD_TIMEOUT,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == -signal.SIGTERM, result.stderr
        assert "survived" not in result.stdout
        assert elapsed < 1.0 + 2 * MARGIN
        if lock == "shutdown":
            assert_each_once(emulator, users("u", 20))

    def test_sigterm_during_the_exit_hook_lets_the_exit_finish(
        self, emulator: TrackAPIEmulator
    ) -> None:
        # The exit hook is already delivering within its deadline: the signal must not
        # cut it short (its delivery is the one in flight when the signal lands).
        result = run_python(
            program("sigterm_app"),
            "30",
            "--term-during-exit",
            emulator=emulator,
            timeout=HARD_TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert_each_once(emulator, users("u", 30))

    def test_as_pid_1_of_a_container_it_still_exits_after_the_flush(
        self, emulator: TrackAPIEmulator
    ) -> None:
        # PID 1 of a PID namespace never dies of a signal it does not handle: re-sending
        # SIGTERM after the flush would leave it running until the grace period's
        # SIGKILL. It exits with 143 instead, as a shell reports death by SIGTERM.
        unshare = shutil.which("unshare")
        probe = [unshare, "--fork", "--pid", "true"] if unshare else None
        if probe is None or subprocess.run(probe, capture_output=True, timeout=10).returncode:
            pytest.skip("needs unshare --pid (root or user namespaces)")
        assert unshare is not None
        result = run_python(
            program("sigterm_app"),
            *("40", "--self-term"),
            emulator=emulator,
            timeout=HARD_TIMEOUT,
            launcher=(unshare, "--fork", "--pid"),
        )
        assert json.loads(result.stdout.splitlines()[0])["pid"] == 1
        assert "survived" not in result.stdout
        assert result.returncode == 128 + signal.SIGTERM, result.stderr
        assert_each_once(emulator, users("u", 40))

    def test_a_main_thread_busy_logging_is_ended_within_the_deadline(
        self, emulator: TrackAPIEmulator
    ) -> None:
        args = ("10", "--busy", "--shutdown-timeout", "1")
        with _running(emulator, *args) as app:
            app.ready()
            assert emulator.wait_for_operations(500, timeout=10.0), "no batch went"
            sent = app.terminate()
            code = app.wait()
            elapsed = time.monotonic() - sent
        assert code == -signal.SIGTERM, app.stderr
        assert elapsed < 1.0 + MARGIN


def _a_send_hanging(settings: dict[str, Any]) -> tuple[cio.Bridge, GatedTransport]:
    """The process's bridge, its one event in a send that hangs until the gate opens."""
    transport = GatedTransport(Response(200))
    bridge = cio.configure(**{**settings, "batch_size": 1}, transport=transport)
    bridge.submit(Snapshot(True, "job_done", {"user_id": "u1"}, 1_700_000_000.0))
    assert transport.entered.wait(5.0)
    return bridge, transport


class TestBoundedEnds:
    """Handler close, logging.shutdown(), dictConfig and exit while a batch hangs."""

    def test_handler_close_is_idempotent_and_returns_at_once_while_a_send_hangs(
        self, settings: dict[str, Any]
    ) -> None:
        _, transport = _a_send_hanging(settings)
        handler = cio.CustomerIOHandler()
        started = time.monotonic()
        handler.close()
        handler.close()
        handler.flush()
        assert time.monotonic() - started < 0.5
        transport.gate.set()

    def test_flush_after_shutdown_returns_at_once_while_a_send_hangs(
        self, settings: dict[str, Any]
    ) -> None:
        bridge, transport = _a_send_hanging(settings)
        bridge.shutdown(0.1)
        started = time.monotonic()
        assert bridge.flush(5.0) is False
        assert cio.flush(5.0) is False  # the event in flight is not settled
        cio.CustomerIOHandler().flush()
        assert time.monotonic() - started < 0.5
        transport.gate.set()

    @pytest.mark.parametrize("mode", ["logging-shutdown", "dictconfig", "close"])
    def test_ending_logging_while_a_batch_hangs_stays_within_the_deadline(
        self, emulator: TrackAPIEmulator, hanging_api: str, mode: str
    ) -> None:
        started = time.monotonic()
        result = run_python(
            program("hang_app"),
            mode,
            emulator=emulator,
            env={"CUSTOMERIO_TRACK_URL": hanging_api},
            timeout=HARD_TIMEOUT,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "flushed=False"
        (step,) = [line for line in lines if line.startswith(f"{mode} took ")]
        # Under logging's module lock: must not wait for delivery at all.
        assert float(step.split()[-1].rstrip("s")) < 0.5
        # Start-up, the 0.5 s flush in the program, then the exit hook's 1 s deadline.
        assert elapsed < 0.5 + 1.0 + 2 * MARGIN
        assert "Traceback" not in result.stderr


def test_sigterm_during_the_apps_own_shutdown_lets_it_finish(
    emulator: TrackAPIEmulator,
) -> None:
    from customerio_logging.testing import FaultPlan

    # The first batch gets a 503 asking for 1 s: the shutdown is mid-retry at SIGTERM.
    emulator.set_faults(FaultPlan(script=(503,), retry_after=1))
    result = run_python(program("sigterm_during_shutdown"), emulator=emulator, timeout=30)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert len(emulator.accepted_ids()) == 5
