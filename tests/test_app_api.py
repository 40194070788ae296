"""The App API: its settings, cio.app_api(), send_email/send_push and their retries, reset()."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from customerio import APIClient, SendEmailRequest, SendPushRequest

import customerio_logging as cio
from customerio_logging import Settings, _global
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import closed_port_url, in_fork, wait_until

EMAIL: dict[str, Any] = {
    "transactional_message_id": 3,
    "to": "sarah@example.com",
    "identifiers": {"id": "u1"},
    "message_data": {"first_name": "Sarah"},
}
PUSH: dict[str, Any] = {"transactional_message_id": "welcome", "identifiers": {"id": "u1"}}
SECRET = "app-secret-5f2c9e"


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, emulator: TrackAPIEmulator) -> TrackAPIEmulator:
    """The environment of an app that sends through the emulator's App API."""
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", emulator.site_id)
    monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", emulator.api_key)
    monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", emulator.app_api_key)
    monkeypatch.setenv("CUSTOMERIO_APP_URL", emulator.url)
    return emulator


def configure_app(emulator: TrackAPIEmulator, **overrides: Any) -> cio.Bridge:
    settings: dict[str, Any] = {
        "site_id": emulator.site_id,
        "api_key": emulator.api_key,
        "track_url": emulator.url,
        "app_api_key": emulator.app_api_key,
        "app_url": emulator.url,
        "spool_path": False,
        "retry_base_delay": 0.01,
        "flush_interval": 0.05,
    }
    return cio.configure(**{**settings, **overrides})


def sends(emulator: TrackAPIEmulator, path: str = "/v1/send/email") -> list[int]:
    """The statuses of the requests to ``path`` (0 for a dropped one), in order."""
    return [r.status for r in emulator.requests if r.path == path]


class TestAppSettings:
    @pytest.mark.parametrize(
        ("region", "url"), [("us", "https://api.customer.io"), ("eu", "https://api-eu.customer.io")]
    )
    def test_the_app_url_follows_the_region(self, region: str, url: str) -> None:
        assert Settings(site_id="s", api_key="k", region=region).app_url == url

    def test_neither_is_needed_for_the_track_api(self) -> None:
        settings = Settings.from_env({"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_TRACK_API_KEY": "k"})
        assert settings.app_api_key is None

    def test_both_come_from_the_environment(self) -> None:
        env = {
            "CUSTOMERIO_SITE_ID": "s",
            "CUSTOMERIO_TRACK_API_KEY": "k",
            "CUSTOMERIO_APP_API_KEY": SECRET,
            "CUSTOMERIO_APP_URL": "http://127.0.0.1:9/",
        }
        settings = Settings.from_env(env)
        assert (settings.app_api_key, settings.app_url) == (SECRET, "http://127.0.0.1:9")

    def test_a_region_passed_explicitly_wins_over_the_environments_url(self) -> None:
        env = {"CUSTOMERIO_APP_URL": "http://127.0.0.1:9"}
        settings = Settings.from_env(env, site_id="s", api_key="k", region="eu")
        assert settings.app_url == "https://api-eu.customer.io"

    def test_the_key_is_never_in_the_repr(self) -> None:
        settings = Settings(site_id="s", api_key="k", app_api_key=SECRET)
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings)

    @pytest.mark.parametrize("key", [f" {SECRET}", f"{SECRET}\n", f"{SECRET}\u2019", ""])
    def test_a_malformed_key_is_refused_without_echoing_it(self, key: str) -> None:
        with pytest.raises(cio.ConfigurationError) as caught:
            Settings(site_id="s", api_key="k", app_api_key=key)
        assert caught.value.setting == "app_api_key"
        assert "CUSTOMERIO_APP_API_KEY" in str(caught.value)
        assert not key.strip() or SECRET not in str(caught.value)

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("http://api.example.com", "clear text"),
            ("ftp://127.0.0.1", "https://host"),
            (f"https://user:{SECRET}@api.example.com", "credentials"),
            ("https://api.customer.io", "'us' region's host"),
        ],
    )
    def test_the_app_url_is_checked_like_the_track_url(self, url: str, says: str) -> None:
        with pytest.raises(cio.ConfigurationError) as caught:
            Settings(site_id="s", api_key="k", region="eu", app_url=url)
        assert caught.value.setting == "app_url"
        assert caught.value.env_var == "CUSTOMERIO_APP_URL"
        assert says in str(caught.value)
        assert SECRET not in str(caught.value)


class TestAppAPI:
    def test_from_the_environment_it_sends_an_email(self, app_env: TrackAPIEmulator) -> None:
        client = cio.app_api()
        assert isinstance(client, APIClient)
        answer = client.send_email(SendEmailRequest(**EMAIL))
        assert set(answer) == {"delivery_id", "queued_at"}
        [delivery] = app_env.transactional
        assert delivery["delivery_id"] == answer["delivery_id"]
        assert delivery["request"]["identifiers"] == {"id": "u1"}
        assert _global.current_bridge() is None  # no Track API bridge was built for it

    @pytest.mark.parametrize("with_bridge", [False, True])
    def test_without_a_key_it_names_what_to_set(
        self, emulator: TrackAPIEmulator, monkeypatch: pytest.MonkeyPatch, with_bridge: bool
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", emulator.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", emulator.api_key)
        monkeypatch.delenv("CUSTOMERIO_APP_API_KEY")  # the emulator fixture sets one
        if with_bridge:
            configure_app(emulator, app_api_key=None)
        for call in (cio.app_api, lambda: cio.send_email(**EMAIL)):
            with pytest.raises(cio.ConfigurationError) as caught:
                call()
            assert "CUSTOMERIO_APP_API_KEY" in str(caught.value)
            assert "app_api_key=" in str(caught.value)
            assert caught.value.env_var == "CUSTOMERIO_APP_API_KEY"

    def test_a_wrong_key_is_a_401_that_never_shows_it(
        self, app_env: TrackAPIEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", SECRET)
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(**EMAIL)
        assert caught.value.status_code == 401
        assert SECRET not in str(caught.value)
        assert SECRET not in repr(caught.value)
        assert "sarah@example.com" not in str(caught.value)  # nor the payload
        assert sends(app_env) == [401]

    def test_every_thread_gets_the_same_client(self, app_env: TrackAPIEmulator) -> None:
        barrier = threading.Barrier(8)
        clients: list[object] = []

        def take() -> None:
            barrier.wait()
            clients.append(cio.app_api())

        threads = [threading.Thread(target=take) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(clients) == 8
        assert all(client is clients[0] for client in clients)

    def test_a_forked_child_builds_its_own(self, app_env: TrackAPIEmulator) -> None:
        parent = cio.app_api()

        def child() -> dict[str, object]:
            client = cio.app_api()
            answer = cio.send_email(**EMAIL)
            return {"new": client is not parent, "again": cio.app_api() is client, **answer}

        code, result = in_fork(child, timeout=30)
        assert code == 0, result
        assert result["new"]
        assert result["again"]
        assert [d["delivery_id"] for d in app_env.transactional] == [result["delivery_id"]]
        assert cio.app_api() is parent

    def test_configuring_other_settings_replaces_it(self, emulator: TrackAPIEmulator) -> None:
        configure_app(emulator)
        first = cio.app_api()
        assert cio.app_api() is first
        configure_app(emulator)
        assert cio.app_api() is not first

    def test_the_clients_own_retries_are_off(self, app_env: TrackAPIEmulator) -> None:
        # A 503 reaches the caller as the API's answer, not as an exhausted retry.
        app_env.set_faults(FaultPlan(script=(503,)))
        with pytest.raises(Exception, match="503"):
            cio.app_api().send_email(EMAIL)
        assert sends(app_env) == [503]


class TestSend:
    def test_send_email_returns_the_answer(self, app_env: TrackAPIEmulator) -> None:
        answer = cio.send_email(**EMAIL)
        assert isinstance(answer["delivery_id"], str)
        assert isinstance(answer["queued_at"], int)
        [delivery] = app_env.transactional
        assert delivery["type"] == "email"
        assert delivery["request"] == EMAIL

    def test_send_push_takes_a_request_object(self, app_env: TrackAPIEmulator) -> None:
        answer = cio.send_push(SendPushRequest(**PUSH, title="Hi"))
        [delivery] = app_env.transactional
        assert delivery["type"] == "push"
        assert delivery["delivery_id"] == answer["delivery_id"]
        assert delivery["request"] == {**PUSH, "title": "Hi"}

    def test_the_wire_shape_is_the_official_clients(self, app_env: TrackAPIEmulator) -> None:
        # _from becomes "from"; a datetime becomes Unix seconds.
        from datetime import UTC, datetime

        when = datetime(2030, 1, 1, tzinfo=UTC)
        cio.send_email(
            to="a@example.com",
            identifiers={"email": "a@example.com"},
            _from="shop@example.com",
            subject="Hi",
            body="<p>Hi</p>",
            send_at=when,
        )
        request = app_env.transactional[0]["request"]
        assert request["from"] == "shop@example.com"
        assert request["send_at"] == int(when.timestamp())

    @pytest.mark.parametrize(
        ("args", "kwargs"),
        [((SendEmailRequest(**EMAIL),), {"to": "b@example.com"}), ((SendPushRequest(**PUSH),), {})],
    )
    def test_a_wrong_request_is_a_type_error(
        self, app_env: TrackAPIEmulator, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        with pytest.raises(TypeError):
            cio.send_email(*args, **kwargs)
        assert app_env.requests == []

    def test_a_refusal_says_why_without_the_payload(self, app_env: TrackAPIEmulator) -> None:
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(to="sarah@example.com", identifiers={"id": "u1"})
        assert caught.value.status_code == 400
        assert "body, subject, from are required" in str(caught.value)
        assert "sarah@example.com" not in str(caught.value)


class TestRetries:
    def test_a_503_is_retried(self, app_env: TrackAPIEmulator) -> None:
        configure_app(app_env)
        app_env.set_faults(FaultPlan(script=(503,), retry_after=0))
        answer = cio.send_email(**EMAIL)
        assert sends(app_env) == [503, 200]
        assert [d["delivery_id"] for d in app_env.transactional] == [answer["delivery_id"]]

    def test_a_429_is_retried_after_its_retry_after(self, app_env: TrackAPIEmulator) -> None:
        configure_app(app_env)
        app_env.set_faults(FaultPlan(script=(429,), retry_after=0.4))
        started = time.monotonic()
        cio.send_push(**PUSH)
        assert time.monotonic() - started >= 0.4
        assert sends(app_env, "/v1/send/push") == [429, 200]

    def test_retry_after_is_capped(self, app_env: TrackAPIEmulator) -> None:
        configure_app(app_env, max_retry_after=0.1)
        app_env.set_faults(FaultPlan(script=(429,), retry_after=60))
        started = time.monotonic()
        cio.send_email(**EMAIL)
        assert time.monotonic() - started < 10
        assert sends(app_env) == [429, 200]

    @pytest.mark.parametrize("drop", ["drop", "drop_after_accept"])
    def test_a_drop_after_sending_is_not_retried(
        self, app_env: TrackAPIEmulator, drop: str
    ) -> None:
        configure_app(app_env)
        app_env.set_faults(FaultPlan(script=(drop,)))  # type: ignore[arg-type]
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(**EMAIL)
        assert caught.value.status_code is None
        assert "retr" not in str(caught.value)
        assert sends(app_env) == [0]
        # Queued at most once, never twice.
        assert len(app_env.transactional) == (1 if drop == "drop_after_accept" else 0)

    @pytest.mark.parametrize("status", [500, 502, 504, 408])
    def test_other_failures_are_not_retried(self, app_env: TrackAPIEmulator, status: int) -> None:
        configure_app(app_env)
        app_env.set_faults(FaultPlan(script=(status,)))
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(**EMAIL)
        assert caught.value.status_code == status
        assert sends(app_env) == [status]

    def test_a_refused_connection_is_retried(self, emulator: TrackAPIEmulator) -> None:
        configure_app(emulator, app_url=closed_port_url(), max_retries=2)
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(**EMAIL)
        assert caught.value.status_code is None
        assert "could not connect" in str(caught.value)
        assert "(after 2 retries)" in str(caught.value)

    def test_a_refused_connection_then_an_answer_is_sent(self, emulator: TrackAPIEmulator) -> None:
        emulator.stop()  # its port refuses until it starts again
        configure_app(emulator, retry_base_delay=0.2, max_retries=50, retry_budget=30)
        result: list[object] = []
        sender = threading.Thread(target=lambda: result.append(cio.send_email(**EMAIL)))
        sender.start()
        try:
            # Every attempt is refused until then: nothing is recorded, nothing is lost.
            assert not wait_until(lambda: result, 0.3)
        finally:
            emulator.start()
        sender.join(30)
        assert len(result) == 1
        assert sends(emulator) == [200]

    def test_retries_stop_at_max_retries(self, app_env: TrackAPIEmulator) -> None:
        configure_app(app_env, max_retries=2)
        app_env.set_faults(FaultPlan(script=(503, 503, 503, 503), retry_after=0))
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(**EMAIL)
        assert caught.value.status_code == 503
        assert "(after 2 retries)" in str(caught.value)
        assert sends(app_env) == [503, 503, 503]


class TestReset:
    def test_reset_forgets_the_bridge_and_the_client(self, emulator: TrackAPIEmulator) -> None:
        configure_app(emulator)
        client = cio.app_api()
        log = logging.getLogger("test_app_api.reset")
        handler = cio.CustomerIOHandler()
        log.addHandler(handler)
        try:
            log.warning("signed_up", extra={"cio_event": True, "user_id": "u1"})
        finally:
            log.removeHandler(handler)
        cio.reset()
        assert emulator.events("signed_up")  # flushed before it was forgotten
        assert cio.stats().enqueued == 0
        assert _global.current_bridge() is None
        configure_app(emulator)
        assert cio.app_api() is not client

    def test_reset_without_anything_is_harmless(self) -> None:
        cio.reset()
        cio.reset()


class TestNoSecretInTheErrorChain:
    def test_a_failed_send_chains_no_http_exception_holding_the_key_or_payload(self) -> None:
        key, payload = "sekrit-app-key-123", "payload-marker@example.com"
        cio.configure(
            site_id="s",
            api_key="k",
            spool_path=False,
            app_api_key=key,
            app_url=closed_port_url(),
            max_retries=1,
            retry_base_delay=0.01,
            retry_max_delay=0.02,
            install_signal_handlers=False,
        )
        with pytest.raises(cio.DeliveryError) as caught:
            cio.send_email(transactional_message_id=3, to=payload, identifiers={"id": "u1"})
        chain: list[BaseException] = []
        error: BaseException | None = caught.value
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        for link in chain:
            request = getattr(link, "request", None)
            blob = repr(vars(link)) + repr(getattr(request, "headers", ""))
            blob += repr(getattr(request, "body", ""))
            assert key not in blob, type(link)
            assert payload not in blob, type(link)
        assert [type(link) for link in chain] == [cio.DeliveryError]
