"""The spool file: private to its user, bound to one workspace, moved aside when damaged,
refused when sound but not ours; the check for a path given by hand."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from freezegun import freeze_time

from customerio_logging._storage import (
    NotASpoolError,
    SpoolUnavailableError,
    check_spool_file,
)
from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import (
    BIG,
    CHILD_TIMEOUT,
    SITE,
    URL,
    app_database,
    assert_a_working_spool,
    foreign_bytes,
    foreign_database,
    ids_of,
    make_op,
    mode_of,
    moved_aside,
    program,
    run_python,
    sibling_of,
    state_of,
)


def half_header(path: Path) -> None:
    path.write_bytes(b"SQLite fo")


def truncated_spool(path: Path) -> None:
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=SITE)
    spool.add([make_op(f"o{i:04d}", 2000) for i in range(1000)])  # about 2 MB
    spool.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    assert size > 1_500_000
    os.truncate(path, size // 2)


class TestFile:
    """Private to its user, bound to one workspace, holding no secret."""

    def test_the_directory_and_files_are_private_whatever_the_umask(
        self, tmp_path: Path, open_umask: None
    ) -> None:
        path = tmp_path / "state" / "customerio-logging" / "spool.sqlite3"
        spool = SQLiteSpool(path, max_bytes=BIG, site_id=SITE)
        try:
            spool.add([make_op("a")])
            assert mode_of(path.parent) == 0o700
            for suffix in ("", "-wal", "-shm", ".lock"):
                assert mode_of(sibling_of(path, suffix)) == 0o600, suffix
        finally:
            spool.close()

    def test_a_process_killed_while_making_the_file_leaves_no_half_made_spool(
        self, spool_path: Path
    ) -> None:
        result = run_python(program("spool_killed_while_made"), spool_path, timeout=CHILD_TIMEOUT)
        assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
        # Before the fix the file was marked ours, with no tables: half made. Now the
        # marks and the tables come in one transaction, and the kill undid it all.
        conn = sqlite3.connect(spool_path)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
        assert (app_id, tables) == (0, 0)
        # And the next process makes it a whole spool.
        assert_a_working_spool(spool_path)

    def test_a_readable_file_is_made_private_again(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([make_op("a")])
        spool.close()
        spool_path.chmod(0o644)
        assert make_spool().pending() == 1
        assert mode_of(spool_path) == 0o600

    def test_the_file_holds_the_workspace_and_nothing_secret(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool(track_url=URL)
        spool.add([make_op("a")])
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {
            "site_id": SITE,
            "track_url": URL,
            "spool_bytes": 40,
            "dead_letter_bytes": 0,
            "dead_letters_evicted": 0,
        }

    @pytest.mark.parametrize(
        ("site_id", "track_url"),
        [("other-site", URL), (SITE, "https://track-eu.example.test")],
        ids=["site", "track-url"],
    )
    def test_another_workspaces_file_is_refused_and_left_alone(
        self,
        make_spool: Callable[..., SQLiteSpool],
        spool_path: Path,
        site_id: str,
        track_url: str,
    ) -> None:
        owner = make_spool(track_url=URL)
        owner.add([make_op("kept")])
        owner.close()
        before = spool_path.read_bytes()
        notices: list[str] = []
        other = make_spool(site_id=site_id, track_url=track_url, on_problem=notices.append)
        with pytest.raises(SpoolUnavailableError, match="another workspace") as caught:
            other.add([make_op("mine")])
        assert caught.value.first
        other.close()
        assert notices == []
        assert moved_aside(spool_path) == []
        assert spool_path.read_bytes() == before
        assert ids_of(make_spool(track_url=URL).claim(10)) == ["kept"]

    def test_no_site_id_opens_any_workspaces_file_without_claiming_it(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        make_spool(site_id="a-site", track_url=URL).add([make_op("kept")])
        viewer = make_spool(site_id=None)
        assert viewer.status().site_id == "a-site"
        assert ids_of(viewer.claim(10)) == ["kept"]

    def test_a_fresh_file_opened_without_site_id_is_claimed_by_the_first_site(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        assert make_spool(site_id=None).pending() == 0
        make_spool(site_id="first", track_url=URL).add([make_op("a")])
        with pytest.raises(SpoolUnavailableError):
            make_spool(site_id="second", track_url=URL).pending()

    def test_a_file_written_without_track_url_accepts_the_same_site_with_one(
        self, make_spool: Callable[..., SQLiteSpool]
    ) -> None:
        make_spool(track_url=None).add([make_op("a")])
        assert ids_of(make_spool(track_url=URL).claim(10)) == ["a"]


class TestCorruption:
    """A damaged or foreign file is moved aside, once, with a notice; a newer one is refused."""

    @pytest.mark.parametrize(
        "spoil",
        [foreign_bytes, half_header, foreign_database, truncated_spool],
        ids=["foreign-bytes", "half-header", "foreign-database", "truncated-spool"],
    )
    def test_it_is_moved_aside_and_a_fresh_spool_works(
        self,
        make_spool: Callable[..., SQLiteSpool],
        spool_path: Path,
        spoil: Callable[[Path], None],
    ) -> None:
        spoil(spool_path)
        original = spool_path.read_bytes()
        notices: list[str] = []
        spool = make_spool(on_problem=notices.append)
        assert spool.pending() == 0
        (moved,) = moved_aside(spool_path)
        assert moved.read_bytes() == original
        assert len(notices) == 1
        assert str(spool_path) in notices[0]
        assert moved.name in notices[0]
        spool.add([make_op("a")])
        assert ids_of(spool.claim(10)) == ["a"]
        make_spool(on_problem=notices.append).status()  # another opener finds it sound
        assert len(notices) == 1

    def test_a_file_from_a_newer_version_is_refused_and_left_alone(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([make_op("kept")])
        spool.close()
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            conn.execute("PRAGMA user_version = 99")
        notices: list[str] = []
        with pytest.raises(SpoolUnavailableError, match="newer") as caught:
            make_spool(on_problem=notices.append).pending()
        assert caught.value.first
        assert notices == []
        assert moved_aside(spool_path) == []
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (99,)
            assert conn.execute("SELECT id FROM spool").fetchall() == [("kept",)]

    def test_two_bad_files_in_one_second_are_both_kept(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        with freeze_time("2030-01-01 00:00:00"):
            for spoil in (foreign_bytes, half_header):
                spoil(spool_path)
                spool = make_spool()
                spool.pending()
                spool.close()
        assert len(moved_aside(spool_path)) == 2


class TestUnusablePath:
    """A path that cannot hold a spool fails with words, once, then fast."""

    @pytest.mark.parametrize(
        "layout", ["parent-is-a-file", "grandparent-is-a-file", "path-is-a-directory"]
    )
    def test_it_fails_fast_after_the_first_error(self, tmp_path: Path, layout: str) -> None:
        blocker = tmp_path / "blocker"
        if layout == "path-is-a-directory":
            blocker.mkdir()
            path = blocker
        else:
            blocker.write_text("a file")
            path = blocker / "spool.sqlite3"
            if layout == "grandparent-is-a-file":
                path = blocker / "state" / "spool.sqlite3"
        spool = SQLiteSpool(path, max_bytes=BIG, site_id=SITE)
        with pytest.raises(SpoolUnavailableError) as first:
            spool.add([make_op("a")])
        message = str(first.value)
        assert first.value.first
        assert str(path) in message
        assert "directory" in message.lower()
        assert "\n" not in message
        # Even with the obstacle gone, the next call does not touch the disk: no retry
        # storm from a logging call per event.
        if blocker.is_dir():
            blocker.rmdir()
        else:
            blocker.unlink()
        with pytest.raises(SpoolUnavailableError) as second:
            spool.pending()
        assert not second.value.first
        assert str(second.value) == message
        assert not blocker.exists()


class TestCheckSpoolFile:
    """A path given by hand: refused, and left as it is, unless it is (or may become) a spool."""

    @pytest.mark.parametrize(
        "spoil",
        [foreign_bytes, half_header, foreign_database],
        ids=["foreign-bytes", "half-header", "foreign-database"],
    )
    def test_a_file_that_is_not_a_spool_is_refused_untouched(
        self, spool_path: Path, spoil: Callable[[Path], None]
    ) -> None:
        spoil(spool_path)
        before = state_of(spool_path)
        with pytest.raises(NotASpoolError, match="is not a customerio-logging spool") as caught:
            check_spool_file(spool_path)
        assert str(spool_path) in str(caught.value)
        assert state_of(spool_path) == before
        assert os.listdir(spool_path.parent) == [spool_path.name]

    def test_a_spool_or_an_empty_file_passes(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        spool_path.touch(mode=0o600)
        check_spool_file(spool_path)
        spool = make_spool()
        spool.add([make_op("a")])
        spool.close()  # the stamp reaches the file itself at the checkpoint
        check_spool_file(spool_path)

    def test_a_fresh_spool_still_open_passes(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        # Its stamp is still in the write-ahead log (no checkpoint yet): not on disk.
        spool = make_spool()
        spool.add([make_op("a")])
        with spool_path.open("rb") as file:
            assert file.read(72)[68:] == bytes(4)
        check_spool_file(spool_path)
        spool.close()
        check_spool_file(spool_path)  # and once the log is checkpointed into the file

    def test_a_foreign_database_with_a_write_ahead_log_is_refused(self, tmp_path: Path) -> None:
        other = tmp_path / "app.db"
        conn = sqlite3.connect(other)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()  # still open: the log holds the data
        try:
            with pytest.raises(NotASpoolError):
                check_spool_file(other)
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        finally:
            conn.close()

    def test_a_missing_file_cannot_be_read(self, spool_path: Path) -> None:
        with pytest.raises(SpoolUnavailableError, match="cannot be read") as caught:
            check_spool_file(spool_path)
        assert not isinstance(caught.value, NotASpoolError)
        assert not spool_path.exists()

    def test_an_unsafe_place_is_refused_as_the_spool_would(self, tmp_path: Path) -> None:
        victim = tmp_path / "victim.db"
        app_database(victim)
        link = tmp_path / "spool.sqlite3"
        link.symlink_to(victim)
        with pytest.raises(SpoolUnavailableError, match="symbolic link") as caught:
            check_spool_file(link)
        assert not isinstance(caught.value, NotASpoolError)
