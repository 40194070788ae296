"""The command line: check, emulator and send, and the exit codes their help promises."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from customerio_logging.__main__ import main
from customerio_logging.testing import TrackAPIEmulator

WRONG_KEY = "wrong-key-5f3a9c"


def _credentials(emulator: TrackAPIEmulator, *, api_key: str | None = None) -> list[str]:
    return [
        "--site-id",
        emulator.site_id,
        "--api-key",
        api_key or emulator.api_key,
        "--track-url",
        emulator.url,
    ]


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class TestHelp:
    @pytest.mark.parametrize("command", [[], ["check"], ["emulator"], ["send"]])
    def test_help_exits_0_and_explains_the_exit_codes(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out
        assert "  2  usage or configuration error" in out

    @pytest.mark.parametrize("command", [["check"], ["emulator"], ["send"]])
    def test_each_command_help_shows_an_example(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        main([*command, "--help"])
        assert f"python -m customerio_logging {command[0]}" in capsys.readouterr().out

    def test_a_usage_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["send", "signed_up"]) == 2  # no --user-id, --email or --anonymous-id
        assert "--user-id" in capsys.readouterr().err

    def test_no_command_prints_the_help_and_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([]) == 2
        assert "exit codes:" in capsys.readouterr().err


class TestCheck:
    def test_accepted_credentials_exit_0_and_show_the_settings_without_the_key(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", *_credentials(emulator)]) == 0
        out = capsys.readouterr().out
        host = urlsplit(emulator.url).netloc
        assert f"OK: credentials accepted by {host}; the workspace is in region us" in out
        assert f"site id:   {emulator.site_id}" in out
        assert f"track url: {emulator.url}" in out
        assert "region:    us" in out
        assert "spool:" in out
        assert emulator.api_key not in out

    def test_settings_come_from_the_environment(
        self,
        emulator: TrackAPIEmulator,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", emulator.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", emulator.api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", emulator.url)
        assert main(["check"]) == 0
        assert "OK: credentials accepted" in capsys.readouterr().out

    def test_refused_credentials_exit_1_and_never_print_the_key(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", *_credentials(emulator, api_key=WRONG_KEY)]) == 1
        out, err = capsys.readouterr()
        assert "REFUSED:" in out
        assert "CUSTOMERIO_SITE_ID and CUSTOMERIO_TRACK_API_KEY" in out
        assert WRONG_KEY not in out + err

    def test_an_unreachable_host_exits_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        url = _closed_port_url()
        args = ["check", "--site-id", "s", "--api-key", WRONG_KEY, "--track-url", url]
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert f"UNREACHABLE: could not connect to {urlsplit(url).netloc}: ConnectionError" in out
        assert WRONG_KEY not in out + err

    def test_another_status_exits_1_and_names_it(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A path the emulator does not serve: it answers 404 to valid credentials.
        args = ["check", *_credentials(emulator), "--track-url", f"{emulator.url}/elsewhere"]
        assert main(args) == 1
        assert "UNEXPECTED: " in (out := capsys.readouterr().out)
        assert "answered HTTP 404 Not Found, not 200" in out

    def test_a_region_the_workspace_is_not_in_exits_1_and_says_what_to_set(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The emulator's workspace is in "us"; an explicit track_url keeps region "eu" legal.
        assert main(["check", *_credentials(emulator), "--region", "eu"]) == 1
        out = capsys.readouterr().out
        assert "MISMATCH:" in out
        assert "set CUSTOMERIO_REGION=us (or pass --region us)" in out

    def test_a_missing_site_id_is_a_configuration_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", "--api-key", WRONG_KEY]) == 2
        out, err = capsys.readouterr()
        assert "configuration error: site_id is not set" in err
        assert "CUSTOMERIO_SITE_ID" in err
        assert out == ""  # nothing checked, no settings shown
        assert WRONG_KEY not in err


class TestSend:
    def test_one_event_reaches_the_api_with_its_data(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = [
            "send",
            "plan_changed",
            "--user-id",
            "u1",
            *("--data", "to=pro", "--data", "seats=3", "--data", "trial=false"),
            *("--data", 'tags=["a", 1]', "--data", "note=NaN", "--data", "blank="),
            # Reserved by logging (name), by the handler (email) or by the underscore rule.
            *("--data", "name=Ann", "--data", "email=a@example.com", "--data", "from_=x"),
            *_credentials(emulator),
        ]
        assert main(args) == 0
        [op] = emulator.operations
        assert op["name"] == "plan_changed"
        assert op["identifiers"] == {"id": "u1"}
        assert op["attributes"] == {
            "to": "pro",
            "seats": 3,
            "trial": False,
            "tags": ["a", 1],
            "note": "NaN",
            "blank": "",
            "name": "Ann",
            "email": "a@example.com",
            "from_": "x",
        }
        out = capsys.readouterr().out
        assert f"SENT: event plan_changed (id {op['id']}) accepted by" in out

    @pytest.mark.parametrize(
        ("flag", "identifiers"),
        [("--email", {"email": "a@example.com"}), ("--anonymous-id", {"anonymous_id": "a1"})],
    )
    def test_a_person_can_be_named_by_email_or_anonymous_id(
        self, emulator: TrackAPIEmulator, flag: str, identifiers: dict[str, str]
    ) -> None:
        (value,) = identifiers.values()
        assert main(["send", "visited", flag, value, *_credentials(emulator)]) == 0
        [op] = emulator.operations
        assert op["identifiers"] == identifiers

    def test_an_unreachable_api_exits_1_quickly_with_the_reason(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = _closed_port_url()
        args = ["send", "signed_up", "--user-id", "u1", "--timeout", "1"]
        args += ["--site-id", "s", "--api-key", WRONG_KEY, "--track-url", url]
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert f"NOT SENT: no response from {urlsplit(url).netloc}: ConnectionError" in out
        assert WRONG_KEY not in out + err

    def test_refused_credentials_exit_1_and_never_print_the_key(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["send", "signed_up", "--user-id", "u1", "--timeout", "0.5"]
        assert main([*args, *_credentials(emulator, api_key=WRONG_KEY)]) == 1
        out, err = capsys.readouterr()
        assert "NOT SENT: HTTP 401" in out
        assert WRONG_KEY not in out + err
        assert emulator.operations == []

    def test_a_configuration_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        args = ["send", "signed_up", "--user-id", "u1", "--site-id", "s", "--api-key", "k"]
        assert main([*args, "--track-url", "http://example.com"]) == 2
        assert "configuration error: track_url uses http://" in capsys.readouterr().err

    @pytest.mark.parametrize("data", ["no-equals-sign", "=value"])
    def test_data_without_a_key_is_a_usage_error(
        self, data: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["send", "signed_up", "--user-id", "u1", "--data", data]) == 2
        assert "expected KEY=VALUE" in capsys.readouterr().err


def _read_lines(stream: Iterator[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)  # end of output


class TestEmulator:
    @pytest.fixture
    def process(self) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None]]]:
        """``emulator --duration 30`` in a subprocess, and the lines of its stdout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "customerio_logging", "emulator", "--duration", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
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
        batch = {
            "batch": [
                {
                    "type": "person",
                    "identifiers": {"id": "u1"},
                    "action": "event",
                    "name": "x",
                    "timestamp": 1700000000,
                }
            ]
        }
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
        result = subprocess.run(
            [sys.executable, "-m", "customerio_logging", "emulator", "--duration", "0.1"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
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
