"""The parser every command hangs from: help, usage errors and the exit codes the help
promises."""

from __future__ import annotations

import pytest

import customerio_logging.__main__
from customerio_logging.cli import main

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


class TestEntryPoints:
    def test_python_dash_m_and_the_script_run_the_same_main(self) -> None:
        # pyproject's [project.scripts] names customerio_logging.__main__:main.
        assert customerio_logging.__main__.main is main
