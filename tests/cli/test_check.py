"""``check``: the settings in effect, and whether the Track API accepts the credentials."""

from __future__ import annotations

import http.server
import json
import re
import threading
from urllib.parse import urlsplit

import pytest
import redis

from customerio_logging.cli import main
from customerio_logging.testing import TrackAPIEmulator
from customerio_logging.testing._redis import RedisServer

from ..helpers import WRONG_KEY, closed_port_url, credentials


class TestCheck:
    def test_accepted_credentials_exit_0_and_show_the_settings_without_the_key(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", *credentials(emulator)]) == 0
        out = capsys.readouterr().out
        host = urlsplit(emulator.url).netloc
        assert f"OK: credentials accepted by {host}; the workspace is in region us" in out
        assert "enabled:   yes" in out
        assert f"site id:   {emulator.site_id}" in out
        assert f"track url: {emulator.url}" in out
        assert "region:    us" in out
        assert "spool:" in out
        assert emulator.api_key not in out

    def test_the_servers_region_is_printed_short_and_without_control_characters(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        answer = json.dumps({"data_center": "\x1b[2J" + "us " * 1_000_000}).encode()

        class Region(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Region)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            args = ["check", "--site-id", "s", "--api-key", "k", "--track-url", url]
            assert main(args) == 0
        finally:
            server.shutdown()
            server.server_close()
        out = capsys.readouterr().out
        assert re.search(r"the workspace is in region \S*us us us[ us]*…\n", out), out
        assert len(out) < 2_000
        assert "\x1b" not in out

    def test_settings_come_from_the_environment(
        self,
        emulator: TrackAPIEmulator,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", emulator.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", emulator.api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", emulator.url)
        assert main(["check"]) == 0
        assert "OK: credentials accepted" in capsys.readouterr().out

    def test_refused_credentials_exit_1_and_never_print_the_key(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", *credentials(emulator, api_key=WRONG_KEY)]) == 1
        out, err = capsys.readouterr()
        assert "REFUSED:" in out
        assert "CUSTOMERIO_SITE_ID and CUSTOMERIO_TRACK_API_KEY" in out
        assert WRONG_KEY not in out + err

    def test_an_unreachable_host_exits_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        url = closed_port_url()
        args = ["check", "--site-id", "s", "--api-key", WRONG_KEY, "--track-url", url]
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert f"UNREACHABLE: could not connect to {urlsplit(url).netloc}: ConnectionError" in out
        assert WRONG_KEY not in out + err

    def test_another_status_exits_1_and_names_it(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A path the emulator does not serve: it answers 404 to valid credentials.
        args = ["check", *credentials(emulator), "--track-url", f"{emulator.url}/elsewhere"]
        assert main(args) == 1
        assert "UNEXPECTED: " in (out := capsys.readouterr().out)
        assert "answered HTTP 404 Not Found, not 200" in out

    def test_a_region_the_workspace_is_not_in_exits_1_and_says_what_to_set(
        self, emulator: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The emulator's workspace is in "us"; an explicit track_url keeps region "eu" legal.
        assert main(["check", *credentials(emulator), "--region", "eu"]) == 1
        out = capsys.readouterr().out
        assert "MISMATCH:" in out
        assert "set CUSTOMERIO_REGION=us (or pass --region us)" in out

    @pytest.mark.parametrize(
        ("api_key", "verdict"),
        [(None, "OK: credentials accepted by"), (WRONG_KEY, "REFUSED: ")],
        ids=["accepted", "refused"],
    )
    def test_switched_off_it_says_so_checks_the_credentials_all_the_same_and_exits_1(
        self,
        emulator: TrackAPIEmulator,
        api_key: str | None,
        verdict: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        assert main(["check", *credentials(emulator, api_key=api_key)]) == 1
        out = capsys.readouterr().out
        assert "enabled:   no (CUSTOMERIO_ENABLED=0)" in out
        assert "spool:     off while switched off" in out
        assert verdict in out
        assert out.endswith(
            "OFF: customerio_logging is switched off (CUSTOMERIO_ENABLED=0): an app with "
            "these settings sends nothing; unset it or set it to 1 to send\n"
        )
        assert [r.path for r in emulator.requests] == ["/api/v1/accounts/region"]

    def test_switched_off_without_credentials_it_asks_nothing(
        self,
        emulator: TrackAPIEmulator,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # The environment CUSTOMERIO_ENABLED=0 is for: no credentials at all.
        monkeypatch.delenv("CUSTOMERIO_SITE_ID")
        monkeypatch.delenv("CUSTOMERIO_TRACK_API_KEY")
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        assert main(["check"]) == 1
        out, err = capsys.readouterr()
        assert "site id:   not set\n" in out
        assert f"track url: {emulator.url}\n" in out
        assert (
            "NOT CHECKED: no credentials to check (CUSTOMERIO_SITE_ID and "
            "CUSTOMERIO_TRACK_API_KEY not set; not needed while switched off)"
        ) in out
        assert "OFF: customerio_logging is switched off (CUSTOMERIO_ENABLED=0)" in out
        assert err == ""
        assert emulator.requests == []

    def test_a_missing_site_id_is_a_configuration_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", "--api-key", WRONG_KEY]) == 2
        out, err = capsys.readouterr()
        assert "configuration error: site_id is not set" in err
        assert "CUSTOMERIO_SITE_ID" in err
        assert out == ""  # nothing checked, no settings shown
        assert WRONG_KEY not in err


class TestCheckRedis:
    def test_a_redis_that_answers_is_shown_without_its_password(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The server has no password: redis-py sends none for an empty user and password.
        url = redis_server.url.replace("redis://", "redis://:@")
        monkeypatch.setenv("CUSTOMERIO_REDIS_URL", url)
        assert main(["check", *credentials(emulator)]) == 0
        out = capsys.readouterr().out
        assert f"redis:     redis://127.0.0.1:{redis_server.port}/0" in out
        assert f"OK: Redis at redis://127.0.0.1:{redis_server.port}/0 answers" in out
        assert "maxmemory-policy noeviction" in out
        assert "WARNING" not in out

    def test_a_policy_that_may_evict_the_backlog_is_warned_about(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "allkeys-lru")
        monkeypatch.setenv("CUSTOMERIO_REDIS_URL", redis_server.url)
        assert main(["check", *credentials(emulator)]) == 0
        assert "WARNING: maxmemory-policy allkeys-lru lets Redis evict" in capsys.readouterr().out

    def test_a_redis_that_does_not_answer_fails_the_check_in_words(
        self,
        emulator: TrackAPIEmulator,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        port = urlsplit(closed_port_url()).port
        monkeypatch.setenv("CUSTOMERIO_REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
        assert main(["check", *credentials(emulator)]) == 1
        out = capsys.readouterr().out
        assert f"UNREACHABLE: Redis at redis://127.0.0.1:{port}/0 failed" in out
        assert "uses its local spool" in out
        assert "hunter2" not in out
        assert "OK: credentials accepted" in out  # the Track API is still checked

    def test_a_redis_that_refuses_config_still_answers(
        self,
        emulator: TrackAPIEmulator,
        redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Managed Redis services refuse CONFIG (and some ACLs INFO): Redis still answers,
        # and the library works; only the policy cannot be read.
        admin = redis.Redis.from_url(redis_server.url)
        admin.acl_setuser("app", enabled=True, passwords=["+s3cret"], keys=["*"],
                          commands=["+@all", "-config", "-info"])  # fmt: skip
        admin.close()
        url = f"redis://app:s3cret@127.0.0.1:{redis_server.port}/0"
        monkeypatch.setenv("CUSTOMERIO_REDIS_URL", url)
        assert main(["check", *credentials(emulator)]) == 0
        out = capsys.readouterr().out
        assert f"OK: Redis at redis://127.0.0.1:{redis_server.port}/0 answers" in out
        assert "UNREACHABLE" not in out
        assert "s3cret" not in out
