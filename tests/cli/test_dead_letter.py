"""``dead-letter list|export|requeue|purge``."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

from customerio_logging._storage import DeadLetterRow
from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator

from ..helpers import (
    fill_spool,
    letter_for,
    python_env,
    read_spool,
    replay_args,
    run_python,
    valid_operation,
    wait_until,
)
from .conftest import progress_counts


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
            letter_for(valid_operation(), reason, at=1_700_000_000.0 + i)
            for i, reason in enumerate(reasons)
        ]
        fill_spool(spool_path, letters=rows)
        return read_spool(spool_path)[1]

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
        fill_spool(spool_path, letters=[long])
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
        op = valid_operation("ünïcode")
        fill_spool(spool_path, letters=[letter_for(op), letter_for(None, "invalid_name")])
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
        fill_spool(spool_path, letters=[letter_for(valid_operation())])
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
        fill_spool(
            spool_path, letters=[letter_for(valid_operation()), letter_for(None, "invalid_name")]
        )
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
        op = valid_operation()
        fill_spool(
            spool_path, letters=[letter_for(op, "http_500"), letter_for(None, "invalid_name")]
        )
        assert main(["dead-letter", "requeue", "--spool-path", str(spool_path), "--all"]) == 0
        out = capsys.readouterr().out
        assert "moved 1 dead letter back into the spool" in out
        assert "1 dead letter stayed: invalid events have no operation to send" in out
        assert main(replay_args(emulator, spool_path)) == 0
        assert emulator.accepted_ids() == {op.id: 1}
        pending, letters = read_spool(spool_path)
        assert pending == 0
        assert [letter.reason for letter in letters] == ["invalid_name"]

    def test_seq_picks_rows(self, spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        ops = [valid_operation() for _ in range(3)]
        fill_spool(spool_path, letters=[letter_for(op) for op in ops])
        args = ["dead-letter", "requeue", "--spool-path", str(spool_path)]
        assert main([*args, "--seq", "1", "--seq", "3"]) == 0
        assert "moved 2 dead letters back" in capsys.readouterr().out
        pending, letters = read_spool(spool_path)
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
        fill_spool(
            spool_path, letters=[letter_for(valid_operation()), letter_for(None, "invalid_name")]
        )
        args = ["dead-letter", "purge", "--spool-path", str(spool_path), "--reason", "invalid_name"]
        assert main(args) == 1
        assert "refusing without --yes: this would delete 1 dead letter" in capsys.readouterr().err
        assert len(read_spool(spool_path)[1]) == 2
        assert main([*args, "--yes"]) == 0
        assert "deleted 1 dead letter" in capsys.readouterr().out
        assert [letter.reason for letter in read_spool(spool_path)[1]] == ["http_400"]


REQUEUED = 3000
"""Dead letters in a long requeue: six batches of 500."""


def _requeue_command(path: Path) -> list[str]:
    """What follows the interpreter in a child that requeues every dead letter."""
    return ["-m", "customerio_logging", "dead-letter", "requeue", "--all", f"--spool-path={path}"]


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe whose reading end is ``fd``."""
    count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    return count


class TestDeadLetterRequeueProgress:
    """A long requeue as a person, or a log, sees it; and Ctrl-C. In processes of their own."""

    @pytest.fixture(autouse=True)
    def _letters(self, spool_path: Path) -> None:
        fill_spool(spool_path, letters=[letter_for(valid_operation()) for _ in range(REQUEUED)])

    def test_in_a_pipe_plain_lines_now_and_then(self, spool_path: Path) -> None:
        result = run_python(*_requeue_command(spool_path), timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"moved 3000 dead letters back into the spool at {spool_path}"
        )
        header, *lines, summary = result.stderr.splitlines()
        assert header == "requeueing 3000 dead letters"
        status = r"requeue: (\d+)/3000 \(\d+%\), \d+/s, \d+ left(, ETA \S+ s)?"
        done = progress_counts(status, lines)
        assert {1000, 2000, 3000} <= set(done)
        assert len(done) < 6  # never a line per batch
        assert re.fullmatch(r"requeue: 3000 dead letters in \S+ s \(\d+/s\)", summary)
        assert "\r" not in result.stderr + result.stdout
        assert read_spool(spool_path) == (REQUEUED, [])

    def test_on_a_terminal_one_line_redrawn_then_a_summary(
        self, spool_path: Path, on_a_terminal: Callable[[list[str]], tuple[int, str]]
    ) -> None:
        code, shown = on_a_terminal(_requeue_command(spool_path)[2:])
        assert code == 0, shown
        header, progress, verdict, *_ = shown.split("\n")
        assert header == "requeueing 3000 dead letters"
        _, *drawn, erased, summary = progress.split("\r")
        assert drawn[0].startswith("requeue [###-----------------] 500/3000 (16%), ")
        assert erased == " " * len(drawn[-1])
        assert re.fullmatch(r"requeue: 3000 dead letters in \S+ s \(\d+/s\)", summary)
        assert verdict.startswith("moved 3000 dead letters back into the spool")

    def test_ctrl_c_stops_between_two_batches_and_says_what_was_done(
        self, spool_path: Path
    ) -> None:
        # stderr is a pipe this test keeps full but for the header: the command stops
        # there, at the latest when writing its first progress line (1000 dead letters),
        # until Ctrl-C has come.
        header = b"requeueing 3000 dead letters\n"
        reader, writer = os.pipe()
        capacity = fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
        os.write(writer, b"x" * (capacity - len(header)))
        command = [sys.executable, *_requeue_command(spool_path)]
        with (
            os.fdopen(reader, "rb") as stderr,
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=writer, text=True, env=python_env()
            ) as requeue,
        ):
            os.close(writer)
            try:
                # The header is in: the command is past setting up its Ctrl-C handling.
                assert wait_until(lambda: _unread(reader) == capacity, 30)
                requeue.send_signal(signal.SIGINT)
                err = stderr.read()[capacity - len(header) :].decode()
                out, _ = requeue.communicate(timeout=30)
            finally:
                requeue.kill()  # a no-op once it has ended
        assert requeue.returncode == 1, err
        match = re.match(r"moved (\d+) dead letters", out)
        assert match is not None, out
        moved = int(match[1])
        assert moved in (0, 500, 1000)  # whole batches, and none after Ctrl-C
        left = REQUEUED - moved
        assert f"NOT DONE: interrupted (Ctrl-C)\n{left} dead letters still to move" in out
        assert "stopping after this batch (Ctrl-C again to stop at once)" in err
        assert re.search(rf"requeue: {moved} of 3000 dead letters in \S+ s", err)
        pending, letters = read_spool(spool_path)
        assert (pending, len(letters)) == (moved, REQUEUED - moved)
