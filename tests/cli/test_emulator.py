"""``emulator``: served until a signal or ``--duration``, on loopback only."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator

from ..helpers import batch_op, run_python
from .emulator_process import emulator_process


class TestEmulator:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
    def test_it_serves_until_a_signal_then_reports_what_it_accepted(self, signum: int) -> None:
        with emulator_process() as emulator:
            env = emulator.env
            batch = {"batch": [batch_op("x", timestamp=1700000000)]}
            reply = requests.post(
                env["CUSTOMERIO_TRACK_URL"] + "/api/v2/batch",
                json=batch,
                auth=(env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_TRACK_API_KEY"]),
                timeout=10,
            )
            assert reply.status_code == 200
            code, rest, stderr = emulator.stop(signum)
        assert code == 0, stderr
        assert "Stopped: accepted 1 operation in 1 request." in rest

    def test_it_stops_by_itself_after_the_duration(self) -> None:
        result = run_python("-m", "customerio_logging", "emulator", "--duration", "0.1", timeout=20)
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

    def test_ipv6_loopback_is_refused_the_server_being_ipv4_only(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--host", "::1", "--duration", "0.1"]) == 2
        assert "--host must be a loopback address" in capsys.readouterr().err

    @pytest.mark.parametrize("host", ["localhost", "LOCALHOST"])
    def test_localhost_in_any_case_is_loopback_as_for_track_url(
        self, host: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--host", host, "--duration", "0.1"]) == 0
        assert f"Track API emulator listening on http://{host}:" in capsys.readouterr().out


class TestBanner:
    def test_it_prints_both_apis_environment_and_where_to_read_what_it_accepted(self) -> None:
        with emulator_process() as emulator:
            env = emulator.env
            assert set(env) == {
                "CUSTOMERIO_TRACK_URL",
                "CUSTOMERIO_SITE_ID",
                "CUSTOMERIO_TRACK_API_KEY",
                "CUSTOMERIO_APP_URL",
                "CUSTOMERIO_APP_API_KEY",
            }
            # The App API's send endpoints answer on the same address, to the printed key.
            assert env["CUSTOMERIO_APP_URL"] == emulator.url
            sent = requests.post(
                env["CUSTOMERIO_APP_URL"] + "/v1/send/push",
                json={"transactional_message_id": "welcome", "identifiers": {"id": "u1"}},
                headers={"Authorization": f"Bearer {env['CUSTOMERIO_APP_API_KEY']}"},
                timeout=10,
            )
            assert sent.status_code == 200, sent.text
            operations_url = emulator.shown("Accepted operations").split()[0]
            assert operations_url == emulator.url + "/_emulator/operations"
            listed = requests.get(operations_url, timeout=10).json()["operations"]
            assert [record["route"] for record in listed] == ["send_push"]
            assert emulator.shown("Faults") == "none"
            assert not any(line.startswith("Dump:") for line in emulator.banner)

    def test_the_keys_it_accepts_can_be_chosen(self, capsys: pytest.CaptureFixture[str]) -> None:
        args = ["--site-id", "s1", "--api-key", "k1", "--app-api-key", "k2"]
        assert main(["emulator", "--duration", "0.1", *args]) == 0
        out = capsys.readouterr().out
        assert "CUSTOMERIO_SITE_ID=s1 CUSTOMERIO_TRACK_API_KEY=k1 " in out
        assert "CUSTOMERIO_APP_API_KEY=k2\n" in out


class TestDump:
    def test_it_is_written_as_operations_arrive_and_complete_after_sigterm(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "ops.jsonl"
        with emulator_process("--dump", path) as emulator:
            assert emulator.shown("Dump").startswith(f"{path} ")
            auth = (emulator.env["CUSTOMERIO_SITE_ID"], emulator.env["CUSTOMERIO_TRACK_API_KEY"])
            batch = {"batch": [batch_op("a"), batch_op("b")]}
            reply = requests.post(emulator.url + "/api/v2/batch", json=batch, auth=auth, timeout=10)
            assert reply.status_code == 200
            # Read while the emulator runs.
            lines = path.read_text().splitlines()
            assert [json.loads(line)["operation"]["name"] for line in lines] == ["a", "b"]
            code, _, stderr = emulator.stop()
        assert code == 0, stderr
        assert path.read_text().splitlines() == lines
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_a_relative_path_is_shown_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.chdir(tmp_path)
        assert main(["emulator", "--duration", "0.1", "--dump", "ops.jsonl"]) == 0
        assert f"Dump: {tmp_path / 'ops.jsonl'} (" in capsys.readouterr().out
        assert (tmp_path / "ops.jsonl").read_text() == ""

    def test_a_dump_that_cannot_be_opened_exits_1(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "missing" / "ops.jsonl"
        assert main(["emulator", "--duration", "0.1", "--dump", str(path)]) == 1
        err = capsys.readouterr().err
        assert err == f"FAILED: cannot write the dump to {path}: No such file or directory\n"

    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
    def test_a_dump_that_fails_midway_exits_1_after_serving_on(self) -> None:
        with emulator_process("--dump", "/dev/full") as emulator:
            auth = (emulator.env["CUSTOMERIO_SITE_ID"], emulator.env["CUSTOMERIO_TRACK_API_KEY"])
            for name in ("a", "b"):
                batch = {"batch": [batch_op(name)]}
                reply = requests.post(
                    emulator.url + "/api/v2/batch", json=batch, auth=auth, timeout=10
                )
                assert reply.status_code == 200
            code, rest, stderr = emulator.stop()
        assert code == 1
        assert "Stopped: accepted 2 operations in 2 requests." in rest
        assert stderr == "FAILED: the dump /dev/full stopped early: No space left on device\n"


class TestFaultFlags:
    @pytest.mark.parametrize(
        ("flags", "shown"),
        [
            ([], "none"),
            (["--seed", "7"], "none"),
            (["--failure-rate", "0.3"], "--seed 0 --failure-rate 0.3 --failure-statuses 500,503"),
            (["--failure-statuses", "502"], "none"),
            (["--script", "503,drop,drop_after_accept"], "--script 503,drop,drop_after_accept"),
            (["--rate-limit", "20", "--retry-after", "2.5"], "--rate-limit 20 --retry-after 2.5"),
            (
                ["--retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"],
                "--retry-after 'Wed, 21 Oct 2015 07:28:00 GMT'",
            ),
            (
                ["--drop-after-accept-rate", "0.05", "--seed", "3", "--drop-rate", "0.1"],
                "--seed 3 --drop-rate 0.1 --drop-after-accept-rate 0.05",
            ),
            (
                ["--delay", "0.5", "--trickle", "0.01", "--max-request-bytes", "1000"],
                "--delay 0.5 --trickle 0.01 --max-request-bytes 1000",
            ),
        ],
    )
    def test_it_prints_the_plan_in_force_as_the_flags_that_make_it(
        self, flags: list[str], shown: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--duration", "0.1", *flags]) == 0
        assert f"\nFaults: {shown}\n" in capsys.readouterr().out

    def test_the_flags_make_the_plan_the_emulator_answers_by(self) -> None:
        with emulator_process("--script", "503,drop", "--max-request-bytes", "300") as emulator:
            auth = (emulator.env["CUSTOMERIO_SITE_ID"], emulator.env["CUSTOMERIO_TRACK_API_KEY"])

            def post(*ops: dict[str, object]) -> requests.Response:
                batch = {"batch": list(ops)}
                return requests.post(
                    emulator.url + "/api/v2/batch", json=batch, auth=auth, timeout=10
                )

            # Its own endpoint takes no script entry.
            assert requests.get(emulator.url + "/_emulator/operations", timeout=10).ok
            first = post(batch_op())
            assert (first.status_code, first.headers["Retry-After"]) == (503, "1")
            with pytest.raises(requests.ConnectionError):
                post(batch_op())
            assert post(batch_op()).status_code == 200
            assert post(*[batch_op()] * 5).status_code == 413
            code, rest, _ = emulator.stop()
        assert code == 0
        assert "Stopped: accepted 1 operation in 4 requests." in rest

    @pytest.mark.parametrize(
        ("flags", "error"),
        [
            (["--failure-rate", "1.5"], "--failure-rate must be between 0 and 1, not 1.5"),
            (["--drop-rate", "nan"], "--drop-rate must be between 0 and 1, not nan"),
            (
                ["--failure-rate", "0.6", "--drop-after-accept-rate", "0.6"],
                "--failure-rate + --drop-rate + --drop-after-accept-rate must be at most 1",
            ),
            (
                ["--script", "503,200"],
                "--script entries must be an error status (400-599), 'drop' or "
                "'drop_after_accept', not 200",
            ),
            (
                ["--script", "drop-after-accept"],
                "--script entries must be an error status (400-599), 'drop' or "
                "'drop_after_accept', not 'drop-after-accept'",
            ),
            (["--script", "503,,drop"], "argument --script: expected a comma-separated list"),
            (
                ["--failure-statuses", "500,abc"],
                "argument --failure-statuses: expected statuses separated by commas",
            ),
            (
                ["--failure-rate", "0.1", "--failure-statuses", "302"],
                "--failure-statuses must be statuses 400-599, not 302",
            ),
            (["--rate-limit", "0"], "--rate-limit must be a positive number"),
            (["--delay", "-1"], "--delay must be seconds >= 0, not -1.0"),
            (["--trickle", "inf"], "--trickle must be seconds >= 0, not inf"),
            (["--retry-after", "inf"], "--retry-after must be seconds >= 0"),
            (["--max-request-bytes", "0"], "--max-request-bytes must be a positive int"),
            (["--failure-rate", "x"], "argument --failure-rate: invalid float value: 'x'"),
            (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
        ],
    )
    def test_a_value_faultplan_refuses_is_a_usage_error_naming_the_flag(
        self, flags: list[str], error: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["emulator", "--duration", "0.1", *flags]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing started
        assert captured.err.startswith("usage: python -m customerio_logging emulator ")
        assert f"python -m customerio_logging emulator: error: {error}" in captured.err
