"""The connection to the spool file: busy is not broken, re-entry is refused, a forked
child gets a connection of its own (or none, when the fork caught SQLite mid-call), and
other processes see this one's locks held and its failures in plain words."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from customerio_logging._storage import SpoolBusyError, SpoolUnavailableError, sqlite_connection
from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import CHILD_TIMEOUT, foreign_bytes, ids_of, in_fork, make_op, program, run_python


class TestBusy:
    """Another holder of the write lock means busy, not broken; re-entry is refused."""

    def test_a_write_held_elsewhere_is_busy_and_writes_nothing(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([make_op("a")])
        with contextlib.closing(sqlite3.connect(spool_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SpoolBusyError):
                spool.add([make_op("b")])  # after SQLite's busy timeout
            other.execute("ROLLBACK")
        assert spool.pending() == 1
        spool.add([make_op("b")])
        assert ids_of(spool.claim(10)) == ["a", "b"]

    def test_a_write_held_elsewhere_at_first_open_is_busy_not_unavailable(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        make_spool().add([make_op("a")])
        spool = make_spool()
        with contextlib.closing(sqlite3.connect(spool_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SpoolBusyError):
                spool.add([make_op("b")])
            other.execute("ROLLBACK")
        spool.add([make_op("b")])
        assert spool.pending() == 2

    def test_a_call_from_inside_a_call_on_the_same_thread_is_refused(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        # A notice runs inside the spool's transaction, as a signal handler could.
        foreign_bytes(spool_path)
        refused: list[BaseException] = []

        def notice(message: str) -> None:
            try:
                spool.pending()
            except SpoolBusyError as exc:
                refused.append(exc)

        spool = make_spool(on_problem=notice)
        spool.add([make_op("a")])
        assert len(refused) == 1
        assert ids_of(spool.claim(10)) == ["a"]


class TestFork:
    """A forked child uses its parent's SQLiteSpool object through its own connection."""

    def test_a_child_adds_and_claims_and_the_parent_goes_on(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        spool = make_spool()
        spool.add([make_op("a"), make_op("b"), make_op("c")])
        assert ids_of(spool.claim(1)) == ["a"]  # the parent's connection is open

        def child() -> object:
            spool.add([make_op("d")])
            return {"claimed": ids_of(spool.claim(10)), "pending": spool.pending()}

        code, result = in_fork(child, timeout=CHILD_TIMEOUT)
        assert code == 0, result
        assert result == {"claimed": ["b", "c", "d"], "pending": 4}  # a: the parent's lease
        spool.ack(["a"])
        assert ids_of(spool.claim(10)) == ["b", "c", "d"]  # the child is gone: at once
        assert spool.pending() == 3

    def test_reset_after_fork_lets_a_child_close_and_reopen(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        spool = make_spool()
        spool.add([make_op("a")])
        spool.reset_after_fork()  # in the parent: nothing to do
        assert spool.pending() == 1

        def child() -> object:
            spool.reset_after_fork()  # what the bridge's fork hook does
            spool.close()
            spool.add([make_op("b")])
            return spool.pending()

        assert in_fork(child, timeout=CHILD_TIMEOUT) == (0, 2)
        spool.add([make_op("c")])
        assert ids_of(spool.claim(10)) == ["a", "b", "c"]

    def test_a_child_warns_of_an_unusable_spool_file_itself(
        self, make_spool: Callable[..., SQLiteSpool], tmp_path: Path
    ) -> None:
        # Each process says once that its spool cannot be used: the parent having said
        # it does not silence the child.
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        spool = make_spool(path=blocker / "spool.sqlite3")
        for first in (True, False):
            with pytest.raises(SpoolUnavailableError) as refused:
                spool.pending()
            assert refused.value.first is first

        def child() -> object:
            try:
                spool.pending()
            except SpoolUnavailableError as exc:
                return exc.first
            return None

        assert in_fork(child, timeout=CHILD_TIMEOUT) == (0, True)

    def test_a_fork_while_another_thread_opens_the_spool_does_not_hang_the_child(
        self,
        make_spool: Callable[..., SQLiteSpool],
        spool_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # os.fork waits (a bounded time) for the call in progress; past that, the child
        # cannot trust SQLite's locks and runs without the spool rather than hang.
        monkeypatch.setattr(sqlite_connection, "_FORK_WAIT", 0.2)
        foreign_bytes(spool_path)  # so that opening tells the notice, which holds it there
        inside, proceed = threading.Event(), threading.Event()

        def notice(message: str) -> None:
            inside.set()
            proceed.wait(CHILD_TIMEOUT)

        spool = make_spool(on_problem=notice)
        opener = threading.Thread(target=spool.pending, name="spool-opener")
        opener.start()
        try:
            assert inside.wait(CHILD_TIMEOUT)
            code, result = in_fork(_pending_or_error(spool), timeout=2.0, in_parent=proceed.set)
        finally:
            proceed.set()
            opener.join(CHILD_TIMEOUT)
        assert (code, result) == (0, "SpoolUnavailableError")
        assert spool.pending() == 0  # the parent's spool works on


def _pending_or_error(spool: SQLiteSpool) -> Callable[[], object]:
    def run() -> object:
        try:
            return spool.pending()
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            return type(exc).__name__

    return run


ALL_HELD = {"shm": "held", "database": "held"}


def _locks_seen_from_another_process(spool_path: Path) -> object:
    """Which of the spool's SQLite locks another process finds held (spool_locks.py)."""
    result = run_python(program("spool_locks"), spool_path, timeout=CHILD_TIMEOUT, check=True)
    return json.loads(result.stdout)


class TestSeenFromOtherProcesses:
    """While open, this process holds its SQLite locks; a full disk is said in plain words."""

    def test_opening_keeps_the_sqlite_locks_this_process_holds(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        # POSIX locks are the process's: closing any descriptor on a file drops them all,
        # SQLite's too. Another process could then take the file for unused, and
        # checkpoint or reset its -wal and -shm under the open connection.
        first = make_spool()
        first.add([make_op("a")])
        assert _locks_seen_from_another_process(spool_path) == ALL_HELD
        second = make_spool()  # in this same process, as a CLI view or a test helper is
        assert second.pending() == 1
        assert _locks_seen_from_another_process(spool_path) == ALL_HELD
        first.close()
        assert second.pending() == 1
        assert _locks_seen_from_another_process(spool_path) == ALL_HELD

    def test_a_full_disk_is_unavailable_in_plain_words_and_keeps_what_was_written(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        report = json.loads(
            run_python(
                program("spool_full_disk"), spool_path, 300_000, timeout=CHILD_TIMEOUT, check=True
            ).stdout
        )
        print(report["message"])
        assert report["error"] == "SpoolUnavailableError"
        assert report["first"] is True
        assert report["again_first"] is False
        message: str = report["message"]
        assert str(spool_path) in message
        assert "\n" not in message
        assert "Traceback" not in message
        assert re.search(r"full|too large|disk I/O error", message), message
        assert report["added"] > 0
        notices: list[str] = []
        assert make_spool(on_problem=notices.append).pending() == report["added"]
        assert notices == []
