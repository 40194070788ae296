"""What every spool and dead-letter command shares: the spool file found from the settings
without showing the key, and an unsafe path refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from customerio_logging._storage.sqlite_path import default_spool_path
from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator

from ..helpers import credentials, fill_spool, letter_for, read_spool, valid_operation


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
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The file the settings name, found from the credentials as the app finds it
        # (not the temporary spool the emulator fixture's environment names).
        monkeypatch.delenv("CUSTOMERIO_SPOOL_PATH")
        path = default_spool_path(emulator.site_id, emulator.url)
        fill_spool(path, [valid_operation()], [letter_for(valid_operation()), letter_for(None)])
        assert main([*command, *credentials(emulator)]) == code
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
            fill_spool(
                target, [valid_operation()], [letter_for(valid_operation()), letter_for(None)]
            )
        before = None if dangling else target.read_bytes()
        files = sorted(p.name for p in tmp_path.iterdir())
        link = tmp_path / "spool.sqlite3"
        link.symlink_to(target)
        args = [*command, "--spool-path", str(link)]
        if command[1] == "replay":
            args += credentials(emulator)
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"FAILED: the spool at {link} is a symbolic link" in err
        assert emulator.requests == []
        if before is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "spool.sqlite3"])


class TestSwitchedOff:
    """CUSTOMERIO_ENABLED=0 turns the app's spool off, not the file an operator names: the
    commands that read or change that file work; the one that sends refuses, as send does."""

    @pytest.fixture
    def spool_in_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        """A spool holding one operation and two dead letters (one requeueable), named by
        CUSTOMERIO_SPOOL_PATH, with the library switched off."""
        path = tmp_path / "switched-off.sqlite3"
        fill_spool(path, [valid_operation()], [letter_for(valid_operation()), letter_for(None)])
        monkeypatch.setenv("CUSTOMERIO_SPOOL_PATH", str(path))
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        return path

    @pytest.mark.parametrize(
        ("command", "code", "shown"),
        [
            (["spool", "status"], 0, "waiting:       1 operation"),
            (["spool", "status", "--json"], 0, '"pending": 1'),
            (["spool", "purge"], 1, "this would delete 1 operation"),
            (["spool", "purge", "--yes"], 0, "deleted 1 waiting operation"),
            (["dead-letter", "list"], 0, "2 dead letters"),
            (["dead-letter", "list", "--json"], 0, '"reason": "http_400"'),
            (["dead-letter", "export"], 0, "exported 2 dead letters to stdout"),
            (["dead-letter", "requeue", "--all"], 0, "moved 1 dead letter back"),
            (["dead-letter", "purge", "--all"], 1, "this would delete 2 dead letters"),
            (["dead-letter", "purge", "--all", "--yes"], 0, "deleted 2 dead letters"),
        ],
        ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
    )
    def test_a_command_on_the_file_works_whatever_the_switch_says(
        self,
        emulator: TrackAPIEmulator,
        spool_in_env: Path,
        command: list[str],
        code: int,
        shown: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        assert main([*command, *credentials(emulator)]) == code
        out, err = capsys.readouterr()
        assert shown in out + err
        assert "spool is off" not in out + err

    @pytest.mark.parametrize("named_by", ["environment", "flag"])
    def test_replay_refuses_at_once_and_the_operations_stay(
        self,
        emulator: TrackAPIEmulator,
        spool_in_env: Path,
        named_by: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        flag = ["--spool-path", str(spool_in_env)] if named_by == "flag" else []
        assert main(["spool", "replay", *flag, *credentials(emulator)]) == 1
        out, err = capsys.readouterr()
        assert out == (
            "NOT SENT: customerio_logging is switched off (CUSTOMERIO_ENABLED=0); "
            "unset it or set it to 1 to send\n"
        )
        assert err == ""
        assert emulator.requests == []
        assert read_spool(spool_in_env)[0] == 1

    def test_requeue_says_no_replay_sends_them_while_switched_off(
        self, spool_in_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["dead-letter", "requeue", "--all", "--spool-path", str(spool_in_env)]
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert "moved 1 dead letter back into the spool" in out
        assert (
            "note: customerio_logging is switched off (CUSTOMERIO_ENABLED=0): no replay "
            "sends them until it is unset or set to 1"
        ) in err
        assert read_spool(spool_in_env)[0] == 2
