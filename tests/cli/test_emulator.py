"""``emulator``: served until a signal or ``--duration``, on loopback only."""

from __future__ import annotations

import queue
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator

from ..helpers import batch_op, run_python, start_python


def _read_lines(stream: Iterator[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)  # end of output


class TestEmulator:
    @pytest.fixture
    def process(self) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None]]]:
        """``emulator --duration 30`` in a subprocess, and the lines of its stdout."""
        proc = start_python("-m", "customerio_logging", "emulator", "--duration", "30", clean=True)
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        # A thread reads, so that every wait for output below can have a deadline.
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            yield proc, lines
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            reader.join(timeout=10)
            proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()

    @staticmethod
    def _exports(lines: queue.Queue[str | None]) -> dict[str, str]:
        """The variables of the printed ``export`` line, waiting at most 10 s for it."""
        while True:
            line = lines.get(timeout=10)
            assert line is not None, "the emulator exited before printing its settings"
            if line.startswith("export "):
                return dict(word.split("=", 1) for word in shlex.split(line)[1:])

    @staticmethod
    def _rest(lines: queue.Queue[str | None]) -> str:
        """The rest of the output, up to its end, waiting at most 10 s for each line."""
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        return "".join(rest)

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
    def test_it_serves_until_a_signal_then_reports_what_it_accepted(
        self, process: tuple[subprocess.Popen[str], queue.Queue[str | None]], signum: int
    ) -> None:
        proc, lines = process
        env = self._exports(lines)
        batch = {"batch": [batch_op("x", timestamp=1700000000)]}
        reply = requests.post(
            env["CUSTOMERIO_TRACK_URL"] + "/api/v2/batch",
            json=batch,
            auth=(env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_TRACK_API_KEY"]),
            timeout=10,
        )
        assert reply.status_code == 200
        proc.send_signal(signum)
        rest = self._rest(lines)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        assert "Stopped: accepted 1 operation in 1 request." in rest

    def test_it_stops_by_itself_after_the_duration(self) -> None:
        result = run_python("-m", "customerio_logging", "emulator", "--duration", "0.1", timeout=20)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Track API emulator listening on http://127.0.0.1:")
        assert "accepted 0 operations in 0 requests" in result.stdout

    def test_a_taken_port_exits_1(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        port = str(urlsplit(emulator.url).port)
        assert main(["emulator", "--port", port, "--duration", "0.1"]) == 1
        assert f"FAILED: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

    def test_a_host_other_than_loopback_is_a_configuration_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--host", "0.0.0.0", "--duration", "0.1"]) == 2
        assert "--host must be a loopback address" in capsys.readouterr().err

    def test_ipv6_loopback_is_refused_the_server_being_ipv4_only(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--host", "::1", "--duration", "0.1"]) == 2
        assert "--host must be a loopback address" in capsys.readouterr().err

    @pytest.mark.parametrize("host", ["localhost", "LOCALHOST"])
    def test_localhost_in_any_case_is_loopback_as_for_track_url(
        self, host: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--host", host, "--duration", "0.1"]) == 0
        assert f"Track API emulator listening on http://{host}:" in capsys.readouterr().out
