"""Where the spool file may live: a link, another user's file or folder, a folder others
can write without the sticky bit, all refused and left as they are; the default place."""

from __future__ import annotations

import contextlib
import grp
import os
import re
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from customerio_logging._storage import SpoolUnavailableError, sqlite_connection
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._storage.sqlite_path import default_spool_path

from ..helpers import (
    BIG,
    SITE,
    URL,
    app_database,
    assert_a_working_spool,
    foreign_database,
    make_op,
    mode_of,
    moved_aside,
    sibling_of,
    state_of,
)

OTHER_UID = 65534  # "nobody": a user other than this one
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="making a file another user's (chown) needs root",
)


def _shared_group() -> int:
    """A group other than this user's own: one others can be in."""
    for name in ("users", "nogroup", "staff"):
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(name).gr_gid
            if gid != os.getegid():
                return gid
    pytest.skip("no shared group on this machine")


def _refusal(spool: SQLiteSpool) -> SpoolUnavailableError:
    """The error the first use of ``spool`` raises (it must raise one, and at once)."""
    outcome: list[object] = []

    def use() -> None:
        try:
            outcome.append(spool.pending())
        except Exception as exc:  # handed to the test to judge
            outcome.append(exc)

    worker = threading.Thread(target=use, name="spool-test-opener", daemon=True)
    worker.start()
    worker.join(10.0)
    if worker.is_alive():
        pytest.fail("opening the spool hung (on a FIFO?)")
    (result,) = outcome
    if not isinstance(result, SpoolUnavailableError):
        pytest.fail(f"the spool was used, or failed otherwise: {result!r}")
    return result


class TestUnsafePlace:
    """A link, another user's file or folder, a folder others can write: refused, left alone."""

    @pytest.mark.parametrize(
        "target",
        [
            pytest.param(lambda p: (p.write_bytes(b""), p.chmod(0o644)), id="empty-file"),
            pytest.param(app_database, id="another-apps-database"),
            pytest.param(None, id="dangling"),
        ],
    )
    def test_a_symbolic_link_is_refused_and_its_target_left_alone(
        self, tmp_path: Path, target: Callable[[Path], object] | None
    ) -> None:
        victim = tmp_path / "elsewhere" / "victim.db"
        victim.parent.mkdir()
        if target is not None:
            target(victim)
        before = state_of(victim) if target is not None else None
        folder = tmp_path / "spool"
        folder.mkdir(mode=0o700)
        link = folder / "spool.sqlite3"
        link.symlink_to(victim)
        spool = SQLiteSpool(link, max_bytes=BIG, site_id=SITE)
        refused = _refusal(spool)
        assert refused.first
        assert str(link) in str(refused)
        assert "symbolic link" in str(refused)
        if before is None:
            assert not victim.exists()  # not made through the link
        else:
            assert state_of(victim) == before
        assert os.listdir(victim.parent) == ([] if before is None else ["victim.db"])
        assert os.listdir(folder) == ["spool.sqlite3"]  # nothing made beside it, nothing moved
        assert link.is_symlink()

    @pytest.mark.parametrize(
        ("mode", "usable"),
        [(0o700, True), (0o755, True), (0o1777, True), (0o777, False), (0o770, False)],
    )
    def test_a_folder_others_can_write_needs_the_sticky_bit(
        self, tmp_path: Path, mode: int, usable: bool
    ) -> None:
        folder = tmp_path / "shared"
        folder.mkdir()
        if mode & 0o020:
            # Group-writable: by a group others are in (a shared one), not this user's own.
            if os.geteuid() != 0:
                pytest.skip("giving a folder to another group needs root")
            os.chown(folder, -1, _shared_group())
        folder.chmod(mode)
        spool = SQLiteSpool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE)
        try:
            if usable:
                spool.add([make_op("a")])
                assert mode_of(folder / "spool.sqlite3") == 0o600
                return
            refused = _refusal(spool)
            assert "other users can write" in str(refused)
            assert f"{mode:04o}" in str(refused)
            assert os.listdir(folder) == []
        finally:
            spool.close()

    @pytest.mark.skipif(os.geteuid() != 0, reason="root's own group is a private one")
    def test_a_folder_writable_by_this_users_own_private_group_is_fine(
        self, tmp_path: Path
    ) -> None:
        # A umask of 002 with user private groups makes folders 0775: the group is the
        # user alone (here root, whose group has no other member).
        folder = tmp_path / "mine"
        folder.mkdir()
        folder.chmod(0o775)
        assert folder.stat().st_gid == os.getegid()
        spool = SQLiteSpool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE)
        try:
            spool.add([make_op("a")])
            assert spool.pending() == 1
        finally:
            spool.close()

    def test_a_hard_linked_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "spool.sqlite3"
        foreign_database(path)
        os.link(path, tmp_path / "another-name")
        before = state_of(path)
        refused = _refusal(SQLiteSpool(path, max_bytes=BIG, site_id=SITE))
        assert "hard link" in str(refused)
        assert state_of(path) == before
        assert moved_aside(path) == []

    def test_a_fifo_is_refused_without_hanging(self, tmp_path: Path) -> None:
        path = tmp_path / "spool.sqlite3"
        os.mkfifo(path)
        try:
            refused = _refusal(SQLiteSpool(path, max_bytes=BIG, site_id=SITE))
        finally:
            # Let a reader stuck in open() go, should there be one.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert "not a regular file" in str(refused)

    def test_a_file_swapped_for_a_link_while_sqlite_opens_it_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "spool.sqlite3"
        victim = tmp_path / "victim.db"
        app_database(victim)
        before = state_of(victim)
        connect = sqlite3.connect

        def swap_then_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            # Between the spool's checks and SQLite's own open: a link in its place.
            swapped = tmp_path / "swap"
            swapped.symlink_to(victim)
            os.replace(swapped, path)
            return connect(*args, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", swap_then_connect)
        refused = _refusal(SQLiteSpool(path, max_bytes=BIG, site_id=SITE))
        assert "replaced" in str(refused)
        assert state_of(victim) == before

    @needs_root
    @pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal", ".lock"])
    def test_another_users_file_in_a_sticky_folder_is_refused_and_left_alone(
        self, tmp_path: Path, suffix: str
    ) -> None:
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o1777)
        path = folder / "spool.sqlite3"
        theirs = sibling_of(path, suffix)
        theirs.write_bytes(b"")
        theirs.chmod(0o666)
        os.chown(theirs, OTHER_UID, OTHER_UID)
        before = state_of(theirs)
        refused = _refusal(SQLiteSpool(path, max_bytes=BIG, site_id=SITE))
        assert "another user" in str(refused)
        assert state_of(theirs) == before
        assert os.listdir(folder) == [theirs.name]

    @needs_root
    def test_a_folder_owned_by_another_user_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "theirs"
        folder.mkdir(mode=0o700)
        os.chown(folder, OTHER_UID, OTHER_UID)
        refused = _refusal(SQLiteSpool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE))
        assert "owned by another user" in str(refused)
        assert os.listdir(folder) == []

    @pytest.mark.parametrize("problem", ["symbolic-link", "another-workspace"])
    def test_a_refusal_is_tried_again_quietly_and_the_fixed_path_is_used(
        self,
        make_spool: Callable[..., SQLiteSpool],
        spool_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        problem: str,
    ) -> None:
        monkeypatch.setattr(sqlite_connection, "_RETRY_OPEN_AFTER", 0.0)  # try again on every call
        if problem == "symbolic-link":
            spool_path.symlink_to(spool_path.with_name("elsewhere"))
        else:
            make_spool(site_id="another-site").add([make_op("theirs")])
        spool = make_spool()
        first = _refusal(spool)
        assert first.first
        for _ in range(3):  # each one opens again, and fails the same way: no new warning
            with pytest.raises(SpoolUnavailableError) as again:
                spool.add([make_op("a")])
            assert not again.value.first
            assert str(again.value) == str(first)
        spool_path.unlink()
        spool.add([make_op("a")])
        assert spool.pending() == 1


class TestDefaultSpoolPath:
    """One file per user, workspace and API host, under the XDG state directory."""

    pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="XDG paths: not macOS")

    def test_it_honours_xdg_state_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        path = default_spool_path(SITE, URL)
        assert path.parent == tmp_path / "state" / "customerio-logging"
        assert re.fullmatch(r"spool-[0-9a-f]{16}\.sqlite3", path.name)

    @pytest.mark.parametrize("value", [None, "", "  ", "relative/state"])
    def test_without_a_usable_xdg_state_home_it_is_under_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        monkeypatch.setenv("HOME", str(tmp_path))
        if value is None:
            monkeypatch.delenv("XDG_STATE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_STATE_HOME", value)
        path = default_spool_path(SITE, URL)
        assert path.parent == tmp_path / ".local" / "state" / "customerio-logging"

    def test_it_differs_per_site_and_per_host_and_is_stable(self) -> None:
        paths = {
            default_spool_path(SITE, URL),
            default_spool_path("other-site", URL),
            default_spool_path(SITE, "https://track-eu.example.test"),
        }
        assert len(paths) == 3
        assert default_spool_path(SITE, URL) == default_spool_path(SITE, URL)

    def test_without_a_home_it_is_a_private_folder_in_the_shared_temp_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shared = _homeless(tmp_path, monkeypatch)
        path = default_spool_path(SITE, URL)
        assert path.parent == shared / f"customerio-logging-{os.getuid()}"
        assert_a_working_spool(path)
        assert mode_of(path.parent) == 0o700
        assert mode_of(path) == 0o600

    @needs_root
    def test_a_folder_another_user_made_there_first_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shared = _homeless(tmp_path, monkeypatch)
        theirs = shared / f"customerio-logging-{os.getuid()}"
        theirs.mkdir()
        theirs.chmod(0o777)
        os.chown(theirs, OTHER_UID, OTHER_UID)
        refused = _refusal(SQLiteSpool(default_spool_path(SITE, URL), max_bytes=BIG, site_id=SITE))
        assert "owned by another user" in str(refused)
        assert os.listdir(theirs) == []


def _homeless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No XDG_STATE_HOME, no home: the temp dir, a sticky shared folder like /tmp, is used."""

    def no_home(cls: type[Path]) -> Path:
        raise RuntimeError("Could not determine home directory.")

    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared
