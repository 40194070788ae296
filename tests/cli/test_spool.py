"""``spool status|replay|purge``."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._storage.sqlite_path import default_spool_path
from customerio_logging.cli import main
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from ..helpers import (
    BIG,
    WRONG_KEY,
    closed_port_url,
    credentials,
    fill_spool,
    letter_for,
    read_spool,
    replay_args,
    valid_operation,
)

MIB_100 = 100 * 1024 * 1024


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
        # stderr is no terminal here: a plain line every tenth or so, and the last one.
        progress = [line for line in err.splitlines() if line.startswith("replay: ")]
        assert 5 <= len(progress) <= 11
        assert progress[-1] == "replay: 1200/1200 sent (100%)"
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

    def test_a_terminal_sees_one_bar_redrawn(
        self,
        emulator: TrackAPIEmulator,
        spool_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fill_spool(spool_path, [valid_operation() for _ in range(3)])
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(replay_args(emulator, spool_path, "--batch-size", "1")) == 0
        shown = terminal.getvalue()
        assert "\r[######--------------]  1/3 sent" in shown
        assert "\r[#############-------]  2/3 sent" in shown
        assert shown.endswith("\r[####################]  3/3 sent\n")
        assert "replay: " not in shown

    def test_a_missing_spool_exits_0_and_is_not_created(
        self, emulator: TrackAPIEmulator, spool_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(replay_args(emulator, spool_path)) == 0
        assert f"no spool at {spool_path}: nothing waits" in capsys.readouterr().out
        assert not spool_path.parent.exists()


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
