"""``spool status|replay|purge``."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._storage.sqlite_path import default_spool_path
from customerio_logging._wire import Operation
from customerio_logging.cli import main
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from ..helpers import (
    BIG,
    WRONG_KEY,
    children,
    closed_port_url,
    credentials,
    fill_spool,
    letter_for,
    read_spool,
    replay_args,
    run_python,
    valid_operation,
    wait_until,
)
from .conftest import TERMINAL_COLUMNS, FakeTerminal, progress_counts

MIB_100 = 100 * 1024 * 1024


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
        fill_spool(
            spool_path,
            [valid_operation() for _ in range(3)],
            [letter_for(None)] * 2,
            site_id="ws-1",
        )
        sender = SQLiteSpool(spool_path, max_bytes=BIG)
        try:
            sender.claim(1)  # one being sent right now
            assert main(["spool", "status", "--spool-path", str(spool_path)]) == 0
        finally:
            sender.close()
        out = capsys.readouterr().out
        assert f"spool:         {spool_path}" in out
        assert "workspace:     ws-1" in out
        assert re.search(
            r"waiting:       3 operations, \d+ B of JSON \(1 being sent right now\)", out
        )
        # The size is the file's on disk, which the bound is about, not the bodies'.
        size = re.search(r"size:          ([\d.]+) KiB of 100\.0 MiB", out)
        assert size is not None
        assert float(size.group(1)) * 1024 >= spool_path.stat().st_size
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
        fill_spool(
            spool_path, [valid_operation() for _ in range(3)], [letter_for(None)], site_id="ws-1"
        )
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
        fill_spool(path, [valid_operation(), valid_operation()])
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
        ops = [valid_operation() for _ in range(1200)]
        fill_spool(spool_path, ops, site_id=emulator.site_id, track_url=emulator.url)
        assert main(replay_args(emulator, spool_path, "--batch-size", "100")) == 0
        assert emulator.accepted_ids() == {op.id: 1 for op in ops}
        assert read_spool(spool_path) == (0, [])
        out, err = capsys.readouterr()
        assert "sent:          1200" in out
        assert "refused:       0" in out
        assert "still waiting: 0" in out
        # stderr is no terminal here: a plain line at 1000 operations, then the summary.
        *lines, summary = [line for line in err.splitlines() if line.startswith("replay: ")]
        assert len(lines) == 1
        status = r"replay: 1000/1200 \(83%\), \d+/s, 200 left, ETA \S+ s"
        assert re.fullmatch(status, lines[0])
        assert re.fullmatch(r"replay: 1200 operations in \S+ s \(\d+/s\)", summary)
        assert "\r" not in err
        assert emulator.api_key not in out + err

    def test_an_unreachable_api_exits_1_and_the_operations_wait_again(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = [valid_operation() for _ in range(5)]
        fill_spool(spool_path, ops)
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
        fill_spool(spool_path, [valid_operation() for _ in range(3)])
        args = ["spool", "replay", "--spool-path", str(spool_path)]
        args += credentials(emulator, api_key=WRONG_KEY)
        started = time.monotonic()
        assert main(args) == 1
        assert time.monotonic() - started < 10  # the library's own pause would be 30 s
        out, err = capsys.readouterr()
        assert "NOT SENT: HTTP 401: the Track API refused the credentials" in out
        assert "3 operations still wait" in out
        assert WRONG_KEY not in out + err
        assert read_spool(spool_path)[0] == 3

    def test_an_operation_the_api_refuses_goes_to_the_dead_letter(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = [valid_operation() for _ in range(10)]
        refused = ops[4]
        emulator.set_faults(
            FaultPlan(reject_ops=lambda op: "blocked_by_test" if op["id"] == refused.id else None)
        )
        fill_spool(spool_path, ops)
        assert main(replay_args(emulator, spool_path)) == 0
        assert emulator.accepted_ids() == {op.id: 1 for op in ops if op is not refused}
        pending, letters = read_spool(spool_path)
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
        ops = [valid_operation() for _ in range(2)]
        emulator.set_faults(FaultPlan(reject_ops=lambda op: huge))
        fill_spool(spool_path, ops)
        assert main(replay_args(emulator, spool_path)) == 0
        _, letters = read_spool(spool_path)
        assert len(letters) == 2
        assert all(len(r.reason) <= 100 and len(r.message) <= 700 for r in letters)
        assert main(["dead-letter", "list", "--spool-path", str(spool_path)]) == 0
        out, err = capsys.readouterr()
        assert len(out + err) < 5_000
        assert "\x1b" not in out + err

    def test_another_workspaces_file_is_refused_and_left_as_it_is(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fill_spool(spool_path, [valid_operation() for _ in range(3)], site_id="other-site")
        assert main(replay_args(emulator, spool_path)) == 1
        assert "holds events for another workspace" in capsys.readouterr().err
        assert emulator.requests == []
        assert read_spool(spool_path)[0] == 3
        spool = SQLiteSpool(spool_path, max_bytes=BIG)
        try:
            assert spool.status().site_id == "other-site"
            assert len(spool.claim(10)) == 3  # none left leased
        finally:
            spool.close()

    def test_a_terminal_sees_one_line_redrawn_then_a_summary(
        self,
        emulator: TrackAPIEmulator,
        spool_path: Path,
        fake_terminal: FakeTerminal,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fill_spool(spool_path, [valid_operation() for _ in range(3)])
        monkeypatch.setattr(sys, "stderr", fake_terminal)
        assert main(replay_args(emulator, spool_path, "--batch-size", "1")) == 0
        header, shown = fake_terminal.getvalue().split("\n", 1)
        assert header.startswith("replaying 3 operations from")
        # Drawn at once (the first batch), maybe again; erased before the summary.
        drawn, erased, summary = shown.rsplit("\r", 2)
        assert drawn.startswith("\rreplay [######--------------] 1/3 (33%), ")
        assert "\n" not in drawn
        assert erased.strip() == ""
        assert re.fullmatch(r"replay: 3 operations in \S+ s \(\d+/s\)\n", summary)
        assert "sent:          3" in capsys.readouterr().out

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(replay_args(emulator, spool_path)) == 0
        assert f"no spool at {spool_path}: nothing waits" in capsys.readouterr().out
        assert not spool_path.parent.exists()


REPLAYED = 3000
"""Operations in a long replay's spool: 30 requests of 100."""


def _spool_of_many(emulator: TrackAPIEmulator, path: Path) -> list[Operation]:
    ops = [valid_operation() for _ in range(REPLAYED)]
    fill_spool(path, ops, site_id=emulator.site_id, track_url=emulator.url)
    return ops


def _replay_command(emulator: TrackAPIEmulator, path: Path) -> list[str]:
    """What follows the interpreter in a child that replays the spool, 100 a request."""
    return ["-m", "customerio_logging", *replay_args(emulator, path, "--batch-size", "100")]


def _claimable(path: Path) -> set[str]:
    """The ids another sender can claim from the spool at ``path`` right now."""
    spool = SQLiteSpool(path, max_bytes=BIG)
    try:
        return {op.id for op in spool.claim(2 * REPLAYED)}
    finally:
        spool.close()


class TestSpoolReplayProgress:
    """A long replay as a person, or a log, sees it; and Ctrl-C. In processes of their own."""

    def test_in_a_pipe_plain_lines_now_and_then(
        self, emulator: TrackAPIEmulator, spool_path: Path
    ) -> None:
        ops = _spool_of_many(emulator, spool_path)
        result = run_python(*_replay_command(emulator, spool_path), timeout=120)
        assert result.returncode == 0, result.stderr
        assert emulator.accepted_ids() == {op.id: 1 for op in ops}
        header, *lines, summary = result.stderr.splitlines()
        assert header.startswith(f"replaying 3000 operations from {spool_path} to 127.0.0.1:")
        status = r"replay: (\d+)/3000 \(\d+%\), \d+/s, \d+ left(, ETA \S+ s)?"
        done = progress_counts(status, lines)
        # A line each 1000 (a slow machine may add one every 10 s): never one per batch.
        assert {1000, 2000, 3000} <= set(done)
        assert done == sorted(done)
        assert len(done) < 10
        assert re.fullmatch(r"replay: 3000 operations in \S+ s \(\d+/s\)", summary)
        assert "\r" not in result.stderr + result.stdout
        assert result.stdout.startswith("sent:          3000\n")  # stdout: the result alone

    def test_on_a_terminal_one_line_redrawn_then_a_summary(
        self,
        emulator: TrackAPIEmulator,
        spool_path: Path,
        on_a_terminal: Callable[[list[str]], tuple[int, str]],
    ) -> None:
        _spool_of_many(emulator, spool_path)
        emulator.set_faults(FaultPlan(delay=0.05))  # 30 requests: 1.5 s, a few redraws
        code, shown = on_a_terminal(replay_args(emulator, spool_path, "--batch-size", "100"))
        assert code == 0, shown
        header, progress, *verdict = shown.split("\n")
        assert header.startswith("replaying 3000 operations from")
        # One line, drawn over and over after a carriage return, erased, then the summary.
        _, *drawn, erased, summary = progress.split("\r")
        assert len(drawn) >= 2
        bar = r"replay \[[#-]{20}\] (\d+)/3000 \(\d+%\), \d+/s, \d+ left(, ETA \S+ s)? *"
        done = progress_counts(bar, drawn)
        assert done == sorted(done)
        assert all(len(line) < TERMINAL_COLUMNS for line in drawn)
        assert erased == " " * len(drawn[-1])
        assert re.fullmatch(r"replay: 3000 operations in \S+ s \(\d+/s\)", summary)
        assert verdict[:3] == ["sent:          3000", "refused:       0", "still waiting: 0"]

    def test_ctrl_c_stops_after_the_request_in_flight_and_says_what_was_done(
        self, emulator: TrackAPIEmulator, spool_path: Path
    ) -> None:
        ops = _spool_of_many(emulator, spool_path)
        emulator.set_faults(FaultPlan(delay=0.3))
        with children(_replay_command(emulator, spool_path)) as [replay]:
            assert wait_until(lambda: len(emulator.accepted_ids()) >= 200, 30)
            replay.send_signal(signal.SIGINT)
            out, err = replay.communicate(timeout=30)
        assert replay.returncode == 1, err
        accepted = emulator.accepted_ids()
        assert set(accepted.values()) == {1}
        # The request in flight ended, and its operations were settled: what the API
        # accepted is gone from the spool, and nothing is left claimed.
        sent = len(accepted)
        assert f"sent:          {sent}\n" in out
        assert f"still waiting: {REPLAYED - sent}\n" in out
        assert "NOT SENT: interrupted (Ctrl-C) after the batch in flight" in out
        assert "stopping after the request in flight (Ctrl-C again to stop at once)" in err
        assert re.search(rf"replay: {sent} of 3000 operations in \S+ s", err)
        assert _claimable(spool_path) == {op.id for op in ops} - set(accepted)

    def test_ctrl_c_ends_the_retries_at_once(
        self, emulator: TrackAPIEmulator, spool_path: Path
    ) -> None:
        ops = _spool_of_many(emulator, spool_path)
        # Every request fails: the retries alone would wait 0.5 + 1 + 2 + 4 + 8 s or so.
        emulator.set_faults(FaultPlan(failure_rate=1.0, failure_statuses=(500,)))
        with children(_replay_command(emulator, spool_path)) as [replay]:
            assert wait_until(lambda: len(emulator.requests) >= 2, 30)  # retrying
            replay.send_signal(signal.SIGINT)
            asked = time.monotonic()
            out, err = replay.communicate(timeout=30)
        assert time.monotonic() - asked < 4.0
        assert replay.returncode == 1, err
        assert "NOT SENT: interrupted (Ctrl-C) after the batch in flight" in out
        assert "sent:          0\n" in out
        assert f"still waiting: {REPLAYED}\n" in out
        assert _claimable(spool_path) == {op.id for op in ops}

    def test_a_second_ctrl_c_stops_at_once_and_the_batch_waits_again(
        self, emulator: TrackAPIEmulator, spool_path: Path
    ) -> None:
        ops = _spool_of_many(emulator, spool_path)
        emulator.set_faults(FaultPlan(delay=3.0))  # the first answer is late
        with children(_replay_command(emulator, spool_path)) as [replay]:
            assert wait_until(emulator.accepted_ids, 30)  # the first request is in flight
            replay.send_signal(signal.SIGINT)
            assert replay.stderr is not None
            notice = "stopping after the request in flight"
            assert any(notice in line for line in iter(replay.stderr.readline, ""))
            replay.send_signal(signal.SIGINT)
            out, err = replay.communicate(timeout=30)
        assert replay.returncode == 1, err
        assert "sent:          0\n" in out
        assert "still waiting: 3000 (100 claimed by a sender right now)" in out
        assert "NOT SENT: interrupted (Ctrl-C twice) in the middle of a batch" in out
        # Once the command has ended, the batch it was sending is free for the next one.
        assert _claimable(spool_path) == {op.id for op in ops}


class TestSpoolPurge:
    def test_without_yes_it_refuses_and_deletes_nothing(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fill_spool(spool_path, [valid_operation() for _ in range(3)])
        assert main(["spool", "purge", "--spool-path", str(spool_path)]) == 1
        err = capsys.readouterr().err
        assert "refusing without --yes: this would delete 3 operations" in err
        assert read_spool(spool_path)[0] == 3

    def test_with_yes_it_deletes_what_waits_and_keeps_the_dead_letter(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fill_spool(spool_path, [valid_operation() for _ in range(3)], [letter_for(None)])
        assert main(["spool", "purge", "--spool-path", str(spool_path), "--yes"]) == 0
        assert f"deleted 3 waiting operations from {spool_path}" in capsys.readouterr().out
        pending, letters = read_spool(spool_path)
        assert (pending, len(letters)) == (0, 1)

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["spool", "purge", "--spool-path", str(spool_path), "--yes"]) == 0
        assert "nothing to delete" in capsys.readouterr().out
        assert not spool_path.parent.exists()
