"""The command line: check, emulator, send, spool and dead-letter, and the exit codes
their help promises."""

from __future__ import annotations

import http.server
import io
import json
import os
import queue
import re
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from customerio_logging.__main__ import main
from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._storage.sqlite_path import default_spool_path
from customerio_logging._wire import Operation, new_ulid
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .conftest import closed_port_url

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


_SPOOL_COMMANDS = [
    ["spool", "status"],
    ["spool", "replay"],
    ["spool", "purge"],
    ["dead-letter", "list"],
    ["dead-letter", "export"],
    ["dead-letter", "requeue"],
    ["dead-letter", "purge"],
]


class TestHelp:
    @pytest.mark.parametrize(
        "command",
        [[], ["check"], ["emulator"], ["send"], ["spool"], ["dead-letter"], *_SPOOL_COMMANDS],
    )
    def test_help_exits_0_and_explains_the_exit_codes(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out
        assert "  2  usage or configuration error" in out

    @pytest.mark.parametrize("command", [["check"], ["emulator"], ["send"], *_SPOOL_COMMANDS])
    def test_each_command_help_shows_an_example(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        main([*command, "--help"])
        assert f"python -m customerio_logging {' '.join(command)}" in capsys.readouterr().out

    def test_a_usage_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["send", "signed_up"]) == 2  # no --user-id, --email or --anonymous-id
        assert "--user-id" in capsys.readouterr().err

    def test_no_command_prints_the_help_and_exits_2(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([]) == 2
        assert "exit codes:" in capsys.readouterr().err

    @pytest.mark.parametrize("group", ["spool", "dead-letter"])
    def test_a_group_without_its_subcommand_prints_its_help_and_exits_2(
        self, group: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([group]) == 2
        assert f"usage: python -m customerio_logging {group} " in capsys.readouterr().err


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

    def test_the_servers_region_is_printed_short_and_without_control_characters(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        answer = json.dumps({"data_center": "\x1b[2J" + "us " * 1_000_000}).encode()

        class Region(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Region)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            args = ["check", "--site-id", "s", "--api-key", "k", "--track-url", url]
            assert main(args) == 0
        finally:
            server.shutdown()
            server.server_close()
        out = capsys.readouterr().out
        assert re.search(r"the workspace is in region \S*us us us[ us]*…\n", out), out
        assert len(out) < 2_000
        assert "\x1b" not in out

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
        url = closed_port_url()
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
    def test_a_timeout_beyond_an_hour_is_taken(self, emulator: TrackAPIEmulator) -> None:
        # The settings it feeds take an hour at most; the CLI's own wait takes more.
        assert (
            main(["send", "ping", "--user-id", "u1", "--timeout", "7200", *_credentials(emulator)])
            == 0
        )
        assert [op["name"] for op in emulator.operations] == ["ping"]

    @pytest.mark.parametrize("command", [["send", "ping", "--user-id", "u1"], ["spool", "replay"]])
    def test_a_timeout_under_a_hundredth_of_a_second_is_a_usage_error(
        self, emulator: TrackAPIEmulator, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([*command, "--timeout", "0.001", *_credentials(emulator)]) == 2
        assert "at least 0.01 seconds" in capsys.readouterr().err

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
        url = closed_port_url()
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


# -- spool and dead-letter ------------------------------------------------------------------

BIG = 100_000_000  # a spool bound that never evicts
MIB_100 = 100 * 1024 * 1024


def _operation(name: str = "replayed") -> Operation:
    """A valid batch operation, as the bridge spools it."""
    op_id = new_ulid(time.time())
    body = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": name,
        "id": op_id,
        "timestamp": 1700000000,
    }
    return Operation(op_id, "event", name, json.dumps(body, separators=(",", ":")).encode())


def _letter(
    op: Operation | None, reason: str = "http_400", *, at: float = 1_700_000_000.0
) -> DeadLetterRow:
    """A dead-letter row for ``op``; None makes an invalid event's (no operation)."""
    if op is None:
        return DeadLetterRow(
            0, None, "event", "bad", reason, "name", "name must be a string", at, None
        )
    return DeadLetterRow(
        0, op.id, op.action, op.name, reason, "attributes.plan", "refused by the test", at, op.body
    )


def _fill(
    path: Path,
    ops: list[Operation] | None = None,
    letters: list[DeadLetterRow] | None = None,
    *,
    site_id: str | None = None,
    track_url: str | None = None,
) -> None:
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=site_id, track_url=track_url)
    try:
        spool.add(ops or [])
        spool.dead_letter(letters or [])
    finally:
        spool.close()


def _read(path: Path) -> tuple[int, list[DeadLetterRow]]:
    """What waits, and the dead letter, read as any workspace."""
    spool = SQLiteSpool(path, max_bytes=BIG)
    try:
        return spool.pending(), list(spool.dead_letters())
    finally:
        spool.close()


def _replay(emulator: TrackAPIEmulator, path: Path, *extra: str) -> list[str]:
    return ["spool", "replay", "--spool-path", str(path), *_credentials(emulator), *extra]


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "events.sqlite3"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestSpoolStatus:
    def test_a_missing_file_is_reported_not_created(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["spool", "status", "--spool-path", str(spool_path)]) == 0
        out = capsys.readouterr().out
        assert f"no spool at {spool_path}: nothing waits" in out
        assert "waiting:       0 operations" in out
        assert main(["spool", "status", "--spool-path", str(spool_path), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["exists"] is False
        assert (shown["pending"], shown["dead_letters"]) == (0, 0)
        assert not spool_path.parent.exists()

    def test_it_shows_counts_ages_and_the_workspace(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)], [_letter(None)] * 2, site_id="ws-1")
        sender = SQLiteSpool(spool_path, max_bytes=BIG)
        try:
            sender.claim(1)  # one being sent right now
            assert main(["spool", "status", "--spool-path", str(spool_path)]) == 0
        finally:
            sender.close()
        out = capsys.readouterr().out
        assert f"spool:         {spool_path}" in out
        assert "workspace:     ws-1" in out
        assert "waiting:       3 operations (1 being sent right now)" in out
        assert "of 100.0 MiB" in out
        assert "s ago)" in out  # oldest and newest, with their ages
        assert "Z (" in out  # as ISO UTC
        assert "dead letters:  2 (see: python -m customerio_logging dead-letter list)" in out

    def test_it_shows_the_dead_letters_size_bound_and_evictions(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        body = json.dumps({"pad": "x" * 20_000}).encode()
        spool = SQLiteSpool(spool_path, max_bytes=4 * 1024 * 1024)  # a 1 MiB dead letter
        try:
            for i in range(60):
                row = DeadLetterRow(0, f"id{i}", "event", "n", "http_400", None, "no", 1.0, body)
                spool.dead_letter([row])
        finally:
            spool.close()
        assert main(["spool", "status", "--spool-path", str(spool_path)]) == 0
        out = capsys.readouterr().out
        # The bound shown is the command's own (default max_spool_bytes): 100 MiB / 4.
        shown_bound = r"\n {15}\S+ \S+ of 25\.0 MiB; \d+ older ones evicted to stay within it\n"
        assert re.search(shown_bound, out), out
        assert main(["spool", "status", "--spool-path", str(spool_path), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["dead_letters_evicted"] == 60 - shown["dead_letters"] > 0
        assert shown["dead_letter_bytes"] <= 1024 * 1024

    def test_json_is_one_object(self, spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        _fill(spool_path, [_operation() for _ in range(3)], [_letter(None)], site_id="ws-1")
        assert main(["spool", "status", "--spool-path", str(spool_path), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["path"] == str(spool_path)
        assert shown["exists"] is True
        assert (shown["pending"], shown["leased"], shown["dead_letters"]) == (3, 0, 1)
        assert shown["max_bytes"] == MIB_100
        assert shown["site_id"] == "ws-1"
        assert shown["oldest"] <= shown["newest"] <= time.time()

    def test_the_default_file_is_found_from_the_settings(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", "ws-1")
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", WRONG_KEY)
        # conftest points XDG_STATE_HOME at this test's own folder.
        path = default_spool_path("ws-1", "https://track.customer.io")
        _fill(path, [_operation(), _operation()])
        assert main(["spool", "status", "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["path"] == str(path)
        assert json.loads(out)["pending"] == 2
        assert WRONG_KEY not in out + err

    def test_without_a_path_or_credentials_it_is_a_configuration_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["spool", "status"]) == 2
        err = capsys.readouterr().err
        assert "configuration error: site_id is not set" in err
        assert "--spool-path" in err

    @pytest.mark.parametrize("kind", ["text", "sqlite"])
    def test_a_file_that_is_not_a_spool_is_left_as_it_is(
        self, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "app.db"
        if kind == "text":
            path.write_text("not a spool, but something that matters\n")
        else:
            with closing(sqlite3.connect(path)) as conn:
                conn.execute("CREATE TABLE users (id INTEGER)")
                conn.commit()
        before = path.read_bytes()
        assert main(["spool", "status", "--spool-path", str(path)]) == 2
        assert "is not a customerio-logging spool" in capsys.readouterr().err
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # nothing moved aside


class TestSpoolReplay:
    def test_everything_waiting_is_delivered_once(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = [_operation() for _ in range(1200)]
        _fill(spool_path, ops, site_id=emulator.site_id, track_url=emulator.url)
        assert main(_replay(emulator, spool_path, "--batch-size", "100")) == 0
        assert emulator.accepted_ids() == {op.id: 1 for op in ops}
        assert _read(spool_path) == (0, [])
        out, err = capsys.readouterr()
        assert "sent:          1200" in out
        assert "refused:       0" in out
        assert "still waiting: 0" in out
        # stderr is no terminal here: a plain line every tenth or so, and the last one.
        progress = [line for line in err.splitlines() if line.startswith("replay: ")]
        assert 5 <= len(progress) <= 11
        assert progress[-1] == "replay: 1200/1200 sent (100%)"
        assert emulator.api_key not in out + err

    def test_an_unreachable_api_exits_1_and_the_operations_wait_again(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = [_operation() for _ in range(5)]
        _fill(spool_path, ops)
        args = ["spool", "replay", "--spool-path", str(spool_path), "--timeout", "0.5"]
        args += ["--site-id", "s", "--api-key", WRONG_KEY, "--track-url", closed_port_url()]
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert "NOT SENT: the --timeout of 0.5 s ran out" in out
        assert "5 operations still wait; run again later" in out
        assert WRONG_KEY not in out + err
        # Given back, not left leased: another sender can take them at once.
        spool = SQLiteSpool(spool_path, max_bytes=BIG)
        try:
            assert sorted(op.id for op in spool.claim(10)) == sorted(op.id for op in ops)
        finally:
            spool.close()

    def test_refused_credentials_exit_1_at_once(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)])
        args = ["spool", "replay", "--spool-path", str(spool_path)]
        args += _credentials(emulator, api_key=WRONG_KEY)
        started = time.monotonic()
        assert main(args) == 1
        assert time.monotonic() - started < 10  # the library's own pause would be 30 s
        out, err = capsys.readouterr()
        assert "NOT SENT: HTTP 401: the Track API refused the credentials" in out
        assert "3 operations still wait" in out
        assert WRONG_KEY not in out + err
        assert _read(spool_path)[0] == 3

    def test_an_operation_the_api_refuses_goes_to_the_dead_letter(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = [_operation() for _ in range(10)]
        refused = ops[4]
        emulator.set_faults(
            FaultPlan(reject_ops=lambda op: "blocked_by_test" if op["id"] == refused.id else None)
        )
        _fill(spool_path, ops)
        assert main(_replay(emulator, spool_path)) == 0
        assert emulator.accepted_ids() == {op.id: 1 for op in ops if op is not refused}
        pending, letters = _read(spool_path)
        assert pending == 0
        [letter] = letters
        assert (letter.id, letter.reason, letter.field) == (
            refused.id,
            "blocked_by_test",
            "operation",
        )
        assert letter.body == refused.body  # kept for a requeue
        out = capsys.readouterr().out
        assert "sent:          9" in out
        assert "refused:       1 (1 blocked_by_test): moved to the dead letter" in out
        assert "dead-letter list" in out

    def test_a_huge_reason_is_kept_short_and_never_reaches_the_terminal_raw(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A terminal title escape, then 900,000 characters: in the 207's reason and message
        # (two of each: the whole answer stays within the 4 MiB a client reads).
        huge = "\x1b]0;owned\x07" + "x" * 900_000
        ops = [_operation() for _ in range(2)]
        emulator.set_faults(FaultPlan(reject_ops=lambda op: huge))
        _fill(spool_path, ops)
        assert main(_replay(emulator, spool_path)) == 0
        _, letters = _read(spool_path)
        assert len(letters) == 2
        assert all(len(r.reason) <= 100 and len(r.message) <= 700 for r in letters)
        assert main(["dead-letter", "list", "--spool-path", str(spool_path)]) == 0
        out, err = capsys.readouterr()
        assert len(out + err) < 5_000
        assert "\x1b" not in out + err

    def test_another_workspaces_file_is_refused_and_left_as_it_is(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)], site_id="other-site")
        assert main(_replay(emulator, spool_path)) == 1
        assert "holds events for another workspace" in capsys.readouterr().err
        assert emulator.requests == []
        assert _read(spool_path)[0] == 3
        spool = SQLiteSpool(spool_path, max_bytes=BIG)
        try:
            assert spool.status().site_id == "other-site"
            assert len(spool.claim(10)) == 3  # none left leased
        finally:
            spool.close()

    def test_a_terminal_sees_one_bar_redrawn(
        self,
        emulator: TrackAPIEmulator,
        spool_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)])
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(_replay(emulator, spool_path, "--batch-size", "1")) == 0
        shown = terminal.getvalue()
        assert "\r[######--------------]  1/3 sent" in shown
        assert "\r[#############-------]  2/3 sent" in shown
        assert shown.endswith("\r[####################]  3/3 sent\n")
        assert "replay: " not in shown

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(_replay(emulator, spool_path)) == 0
        assert f"no spool at {spool_path}: nothing waits" in capsys.readouterr().out
        assert not spool_path.parent.exists()


class TestSpoolPurge:
    def test_without_yes_it_refuses_and_deletes_nothing(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)])
        assert main(["spool", "purge", "--spool-path", str(spool_path)]) == 1
        err = capsys.readouterr().err
        assert "refusing without --yes: this would delete 3 operations" in err
        assert _read(spool_path)[0] == 3

    def test_with_yes_it_deletes_what_waits_and_keeps_the_dead_letter(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, [_operation() for _ in range(3)], [_letter(None)])
        assert main(["spool", "purge", "--spool-path", str(spool_path), "--yes"]) == 0
        assert f"deleted 3 waiting operations from {spool_path}" in capsys.readouterr().out
        pending, letters = _read(spool_path)
        assert (pending, len(letters)) == (0, 1)

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["spool", "purge", "--spool-path", str(spool_path), "--yes"]) == 0
        assert "nothing to delete" in capsys.readouterr().out
        assert not spool_path.parent.exists()


def _table_seqs(out: str) -> list[int]:
    """The seq column of a dead-letter table."""
    rows = [line.split() for line in out.splitlines()]
    return [int(row[0]) for row in rows if len(row) > 1 and row[1].endswith("Z")]


class TestDeadLetterList:
    @pytest.fixture
    def letters(self, spool_path: Path) -> list[DeadLetterRow]:
        """Five dead letters, seq 1 to 5, reasons alternating."""
        reasons = ["http_400", "invalid_name", "http_400", "invalid_name", "http_400"]
        rows = [
            _letter(_operation(), reason, at=1_700_000_000.0 + i)
            for i, reason in enumerate(reasons)
        ]
        _fill(spool_path, letters=rows)
        return _read(spool_path)[1]

    def test_it_shows_the_newest_rows_as_a_table(
        self,
        spool_path: Path,
        letters: list[DeadLetterRow],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("COLUMNS", "150")
        assert main(["dead-letter", "list", "--spool-path", str(spool_path), "--limit", "2"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("SEQ  WHEN ")
        assert _table_seqs(out) == [4, 5]
        assert "2023-11-14T22:13:24Z" in out  # seq 5's time, ISO UTC
        assert str(letters[4].id) in out
        assert "the newest 2 of 5 dead letters (--all for every one)" in out
        assert all(len(line) <= 150 for line in out.splitlines())

    def test_all_and_reason(
        self, spool_path: Path, letters: list[DeadLetterRow], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["dead-letter", "list", "--spool-path", str(spool_path), "--all"]) == 0
        assert _table_seqs(capsys.readouterr().out) == [1, 2, 3, 4, 5]
        args = ["dead-letter", "list", "--spool-path", str(spool_path), "--reason", "invalid_name"]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert _table_seqs(out) == [2, 4]
        assert "2 dead letters with reason invalid_name" in out

    def test_a_long_message_is_shortened_to_the_line(
        self, spool_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        long = DeadLetterRow(0, "id-1", "event", "x", "http_400", None, "why " * 100, 1.0, None)
        _fill(spool_path, letters=[long])
        monkeypatch.setenv("COLUMNS", "120")
        assert main(["dead-letter", "list", "--spool-path", str(spool_path)]) == 0
        [row] = [line for line in capsys.readouterr().out.splitlines() if "id-1" in line]
        assert len(row) <= 120
        assert row.endswith("why…")

    def test_json_lines(
        self, spool_path: Path, letters: list[DeadLetterRow], capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["dead-letter", "list", "--spool-path", str(spool_path), "--json", "--limit", "3"]
        assert main(args) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["seq"] for r in records] == [3, 4, 5]
        assert records[0]["operation"] == json.loads(letters[2].body or b"")

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["dead-letter", "list", "--spool-path", str(spool_path)]) == 0
        assert f"no spool at {spool_path}: no dead letters" in capsys.readouterr().out
        assert not spool_path.parent.exists()


class TestDeadLetterExport:
    def test_a_file_of_json_lines_readable_by_its_owner_only(
        self, spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        op = _operation("ünïcode")
        _fill(spool_path, letters=[_letter(op), _letter(None, "invalid_name")])
        output = tmp_path / "refused.jsonl"
        args = ["dead-letter", "export", "--spool-path", str(spool_path), "--output", str(output)]
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert f"exported 2 dead letters to {output}" in err
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        text = output.read_text(encoding="utf-8")
        assert "ünïcode" in text  # as written, not \u-escaped
        first, second = (json.loads(line) for line in text.splitlines())
        assert (first["id"], first["reason"]) == (op.id, "http_400")
        assert first["operation"] == json.loads(op.body)
        assert (second["reason"], second["operation"]) == ("invalid_name", None)

    def test_an_existing_file_is_replaced_and_made_private(
        self, spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, letters=[_letter(_operation())])
        output = tmp_path / "refused.jsonl"
        output.write_text("old\nlines\nhere\n")
        output.chmod(0o644)
        args = ["dead-letter", "export", "--spool-path", str(spool_path), "--output", str(output)]
        assert main(args) == 0
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        assert len(output.read_text().splitlines()) == 1

    def test_to_stdout_with_a_reason(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, letters=[_letter(_operation()), _letter(None, "invalid_name")])
        args = ["dead-letter", "export", "--spool-path", str(spool_path), "--reason", "http_400"]
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert [json.loads(line)["reason"] for line in out.splitlines()] == ["http_400"]
        assert "exported 1 dead letter to stdout" in err

    def test_a_path_that_is_not_a_spool_leaves_no_output(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "notes.txt").write_text("hello")
        output = tmp_path / "refused.jsonl"
        args = ["dead-letter", "export", "--spool-path", str(tmp_path / "notes.txt")]
        assert main([*args, "--output", str(output)]) == 2
        assert not output.exists()


class TestDeadLetterRequeue:
    def test_requeued_operations_are_sent_by_the_next_replay(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        op = _operation()
        _fill(spool_path, letters=[_letter(op, "http_500"), _letter(None, "invalid_name")])
        assert main(["dead-letter", "requeue", "--spool-path", str(spool_path), "--all"]) == 0
        out = capsys.readouterr().out
        assert "moved 1 dead letter back into the spool" in out
        assert "1 dead letter stayed: invalid events have no operation to send" in out
        assert main(_replay(emulator, spool_path)) == 0
        assert emulator.accepted_ids() == {op.id: 1}
        pending, letters = _read(spool_path)
        assert pending == 0
        assert [letter.reason for letter in letters] == ["invalid_name"]

    def test_seq_picks_rows(self, spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        ops = [_operation() for _ in range(3)]
        _fill(spool_path, letters=[_letter(op) for op in ops])
        args = ["dead-letter", "requeue", "--spool-path", str(spool_path)]
        assert main([*args, "--seq", "1", "--seq", "3"]) == 0
        assert "moved 2 dead letters back" in capsys.readouterr().out
        pending, letters = _read(spool_path)
        assert pending == 2
        assert [letter.id for letter in letters] == [ops[1].id]

    def test_which_rows_must_be_said(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["dead-letter", "requeue", "--spool-path", str(spool_path)]) == 2
        assert "one of the arguments --seq --reason --all is required" in capsys.readouterr().err

    def test_purge_needs_yes_and_deletes_only_the_chosen_rows(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _fill(spool_path, letters=[_letter(_operation()), _letter(None, "invalid_name")])
        args = ["dead-letter", "purge", "--spool-path", str(spool_path), "--reason", "invalid_name"]
        assert main(args) == 1
        assert "refusing without --yes: this would delete 1 dead letter" in capsys.readouterr().err
        assert len(_read(spool_path)[1]) == 2
        assert main([*args, "--yes"]) == 0
        assert "deleted 1 dead letter" in capsys.readouterr().out
        assert [letter.reason for letter in _read(spool_path)[1]] == ["http_400"]


class TestSpoolCommandsKeepTheKeySecret:
    @pytest.mark.parametrize(
        ("command", "code"),
        [
            (["spool", "status"], 0),
            (["spool", "status", "--json"], 0),
            (["spool", "purge"], 1),  # refused without --yes
            (["dead-letter", "list"], 0),
            (["dead-letter", "list", "--json"], 0),
            (["dead-letter", "export"], 0),
            (["dead-letter", "requeue", "--all"], 0),
            (["dead-letter", "purge", "--all"], 1),  # refused without --yes
            (["spool", "replay"], 0),
            (["spool", "purge", "--yes"], 0),
        ],
        ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
    )
    def test_no_output_shows_the_api_key(
        self,
        emulator: TrackAPIEmulator,
        command: list[str],
        code: int,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # The file the settings name, found from the credentials as the app finds it.
        path = default_spool_path(emulator.site_id, emulator.url)
        _fill(path, [_operation()], [_letter(_operation()), _letter(None)])
        assert main([*command, *_credentials(emulator)]) == code
        out, err = capsys.readouterr()
        assert out + err
        assert emulator.api_key not in out + err


class TestUnsafeSpoolPath:
    """A path the app refuses as unsafe, every spool command refuses too (exit 1)."""

    @pytest.mark.parametrize(
        "command",
        [
            ["spool", "status"],
            ["spool", "status", "--json"],
            ["spool", "replay"],
            ["spool", "purge", "--yes"],
            ["dead-letter", "list"],
            ["dead-letter", "export"],
            ["dead-letter", "requeue", "--all"],
            ["dead-letter", "purge", "--all", "--yes"],
        ],
        ids=" ".join,
    )
    @pytest.mark.parametrize("dangling", [False, True], ids=["link-to-a-spool", "dangling-link"])
    def test_a_symbolic_link_is_refused_and_its_target_left_alone(
        self,
        emulator: TrackAPIEmulator,
        tmp_path: Path,
        command: list[str],
        dangling: bool,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        target = tmp_path / "elsewhere.sqlite3"
        if not dangling:
            _fill(target, [_operation()], [_letter(_operation()), _letter(None)])
        before = None if dangling else target.read_bytes()
        files = sorted(p.name for p in tmp_path.iterdir())
        link = tmp_path / "spool.sqlite3"
        link.symlink_to(target)
        args = [*command, "--spool-path", str(link)]
        if command[1] == "replay":
            args += _credentials(emulator)
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"FAILED: the spool at {link} is a symbolic link" in err
        assert emulator.requests == []
        if before is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "spool.sqlite3"])
