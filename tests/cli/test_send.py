"""``send``: one event through the library's pipeline, and the verdict."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator

from ..helpers import WRONG_KEY, closed_port_url, credentials


class TestSend:
    def test_a_timeout_beyond_an_hour_is_taken(self, emulator: TrackAPIEmulator) -> None:
        # The settings it feeds take an hour at most; the CLI's own wait takes more.
        assert (
            main(["send", "ping", "--user-id", "u1", "--timeout", "7200", *credentials(emulator)])
            == 0
        )
        assert [op["name"] for op in emulator.operations] == ["ping"]

    @pytest.mark.parametrize("command", [["send", "ping", "--user-id", "u1"], ["spool", "replay"]])
    def test_a_timeout_under_a_hundredth_of_a_second_is_a_usage_error(
        self, emulator: TrackAPIEmulator, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([*command, "--timeout", "0.001", *credentials(emulator)]) == 2
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
            *credentials(emulator),
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
        assert main(["send", "visited", flag, value, *credentials(emulator)]) == 0
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
        assert main([*args, *credentials(emulator, api_key=WRONG_KEY)]) == 1
        out, err = capsys.readouterr()
        assert "NOT SENT: HTTP 401" in out
        assert WRONG_KEY not in out + err
        assert emulator.operations == []

    @pytest.mark.parametrize("switch", ["0", "off"])
    def test_switched_off_it_refuses_at_once_and_says_why(
        self,
        emulator: TrackAPIEmulator,
        switch: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # An operator's explicit send still obeys the switch: a dev box that has it set
        # does not reach the workspace its credentials name by surprise.
        monkeypatch.setenv("CUSTOMERIO_ENABLED", switch)
        assert main(["send", "signed_up", "--user-id", "u1", *credentials(emulator)]) == 1
        out, err = capsys.readouterr()
        assert out == (
            f"NOT SENT: customerio_logging is switched off (CUSTOMERIO_ENABLED={switch}); "
            "unset it or set it to 1 to send\n"
        )
        assert err == ""
        assert emulator.requests == []

    def test_a_malformed_switch_is_a_configuration_error(
        self,
        emulator: TrackAPIEmulator,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "maybe")
        assert main(["send", "signed_up", "--user-id", "u1", *credentials(emulator)]) == 2
        assert "configuration error: CUSTOMERIO_ENABLED must be 1 or 0" in capsys.readouterr().err
        assert emulator.requests == []

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
