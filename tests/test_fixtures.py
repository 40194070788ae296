"""The pytest plugin's fixtures: cio_events captures in memory, the emulator fixtures pin
every configure() to the emulator, both are strict, and none can reach a real address."""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

import pytest

import customerio_logging as cio
from customerio_logging import CustomerIOProcessor, Event, InvalidEventError
from customerio_logging._global import current_bridge
from customerio_logging.testing import (
    CapturedEvents,
    MockTransport,
    TrackAPIEmulator,
    capture_events,
)

pytest_plugins = ["pytester"]


class SignedUp(Event, name="signed_up"):
    plan: str


@pytest.fixture
def app_log() -> Iterator[logging.Logger]:
    log = logging.getLogger("fixtures-test")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = cio.CustomerIOHandler()
    log.addHandler(handler)
    yield log
    log.removeHandler(handler)


def tagged(log: logging.Logger, name: str, **fields: object) -> None:
    log.info(name, extra={"cio_event": True, **fields})


class TestCioEvents:
    def test_captures_log_calls_and_direct_calls_as_they_are_made(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "signed_up", user_id="u1", plan="pro", from_="ad")
        receipt = cio.track(42, "upgraded", seats=3)
        # No flush: captured on the calling thread, before the call returned.
        signed_up, upgraded = cio_events.events
        assert (signed_up.name, signed_up.user_id) == ("signed_up", "u1")
        assert signed_up.attributes == {"plan": "pro", "from": "ad"}
        assert upgraded.identifiers == {"id": "42"}
        assert receipt.result(0).status == "sent"
        assert receipt.id == upgraded.id
        assert cio_events.assert_sent("signed_up", user_id="u1", plan="pro", from_="ad")
        cio_events.assert_sent("upgraded", user_id=42, seats=3)
        cio_events.assert_not_sent("signed_up", plan="free")

    def test_captures_the_structlog_processor_and_other_threads(
        self, cio_events: CapturedEvents
    ) -> None:
        processor = CustomerIOProcessor()
        worker = threading.Thread(
            target=processor,
            args=(None, "info", {"event": "exported", "cio_event": True, "user_id": "u2"}),
        )
        worker.start()
        worker.join()
        cio_events.assert_sent("exported", user_id="u2")

    def test_a_trailing_underscore_sends_a_name_logging_reserves(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "profile_set", user_id="u1", name_="Ada", module_="billing", thread_="t")
        event = cio_events.assert_sent("profile_set", name_="Ada", module_="billing")
        assert event.attributes == {"name": "Ada", "module": "billing", "thread": "t"}

    def test_named_and_clear(self, cio_events: CapturedEvents, app_log: logging.Logger) -> None:
        for user in ("u1", "u2"):
            tagged(app_log, "signed_up", user_id=user)
        tagged(app_log, "logged_in", user_id="u1")
        assert [event.user_id for event in cio_events.named("signed_up")] == ["u1", "u2"]
        cio_events.clear()
        assert cio_events.events == []
        assert cio_events.named("signed_up") == []

    def test_a_failed_assertion_shows_the_closest_events_as_a_diff(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "signed_up", user_id="u1", plan="free", source="ad")
        tagged(app_log, "signed_up", user_id="u2", plan="pro")
        tagged(app_log, "logged_in", user_id="u1")
        with pytest.raises(AssertionError) as caught:
            cio_events.assert_sent("signed_up", user_id="u1", plan="pro")
        message = str(caught.value)
        assert "no 'signed_up' was sent with user_id='u1', plan='pro'" in message
        assert "2 'signed_up' sent" in message
        assert "- plan: 'pro'\n" in message
        assert "+ plan: 'free'\n" in message
        assert "- user_id: 'u1'\n" in message
        assert "+ user_id: 'u2'\n" in message

    def test_a_misspelt_name_shows_the_names_sent(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "signed_up", user_id="u1")
        tagged(app_log, "signed_up", user_id="u2")
        with pytest.raises(AssertionError) as caught:
            cio_events.assert_sent("sign_up", user_id="u1")
        message = str(caught.value)
        assert "sent: signed_up x2" in message
        assert "- name: 'sign_up'" in message
        assert "+ name: 'signed_up'" in message

    def test_the_apps_schema_validates_and_invalid_calls_fail_at_the_call(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        cio.configure(events=[SignedUp])
        with pytest.raises(InvalidEventError) as caught:
            tagged(app_log, "signed_up", user_id="u1", plan=5)
        assert caught.value.reason == "schema_mismatch"
        assert caught.value.field == "attributes.plan"
        with pytest.raises(InvalidEventError):
            cio.track("u1", "signed_up", plan=["not", "text"])
        with pytest.raises(InvalidEventError, match="user_id"):
            CustomerIOProcessor()(None, "info", {"event": "signed_up", "cio_event": True})
        assert [(call.name, call.reason) for call in cio_events.invalid] == [
            ("signed_up", "schema_mismatch"),
            ("signed_up", "schema_mismatch"),
            ("signed_up", "missing_identifier"),
        ]
        assert cio_events.events == []

    @pytest.mark.customerio(strict=False)
    def test_not_strict_lists_invalid_calls_and_the_failed_assertion_shows_them(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "signed_up")  # nobody to send it to
        receipt = cio.track("u1", "")
        (missing, unnamed) = cio_events.invalid
        assert (missing.reason, missing.name) == ("missing_identifier", "signed_up")
        assert unnamed.reason == "invalid_name" or unnamed.reason == "missing_name"
        assert receipt.result(0).status == "invalid"
        with pytest.raises(AssertionError, match="2 invalid, not sent:\n  'signed_up': missing"):
            cio_events.assert_sent("signed_up")

    def test_strict_on_another_thread_keeps_that_thread_alive_and_fails_at_the_end(
        self, app_log: logging.Logger
    ) -> None:
        records: queue.Queue[logging.LogRecord] = queue.Queue()
        listener = QueueListener(records, cio.CustomerIOHandler())
        producer = logging.getLogger("fixtures-queued")
        producer.setLevel(logging.INFO)
        producer.propagate = False
        producer.addHandler(QueueHandler(records))
        listener.start()
        capture = capture_events()
        events = capture.__enter__()
        tagged(producer, "signed_up")  # no person: invalid, on the listener's thread
        tagged(producer, "signed_up", user_id="u1")
        listener.stop()  # waits for both: the listener survived the first
        events.assert_sent("signed_up", user_id="u1")
        with pytest.raises(
            AssertionError, match=r"1 invalid call\(s\) on another thread"
        ) as caught:
            capture.__exit__(None, None, None)
        assert "missing_identifier" in str(caught.value)

    def test_assert_sent_compares_as_the_wire_does(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        user = uuid.UUID("12345678-1234-5678-1234-567812345678")
        tagged(app_log, "email_changed", user_id=user, email="new@x.io", verified=True, n=0)
        cio_events.assert_sent("email_changed", user_id=user, email="new@x.io", verified=True)
        with pytest.raises(AssertionError, match=r"\+ verified: True"):
            cio_events.assert_sent("email_changed", verified=1)
        with pytest.raises(AssertionError, match=r"\+ n: 0"):
            cio_events.assert_sent("email_changed", n=False)
        with pytest.raises(TypeError, match="no JSON form"):
            cio_events.assert_sent("email_changed", odd=object())
        cio.identify("u1", {"plan": "pro"})
        cio_events.assert_identified(user_id="u1", plan="pro")
        with pytest.raises(AssertionError, match="no identify was sent with plan='free'"):
            cio_events.assert_identified(plan="free")

    def test_wins_over_an_apps_configure_to_a_real_workspace(
        self, cio_events: CapturedEvents, app_log: logging.Logger
    ) -> None:
        transport = MockTransport()
        bridge = cio.configure(
            site_id="real-site",
            api_key="real-key",
            region="eu",
            spool_path="/nonexistent/dir/spool.db",
            durability="disk",
            transport=transport,
        )
        assert bridge.settings.site_id == "cio-events"  # pinned: no real workspace
        assert bridge.settings.spool_file is None
        explicit = logging.getLogger("fixtures-explicit")
        explicit.setLevel(logging.INFO)
        explicit.propagate = False
        explicit.addHandler(cio.CustomerIOHandler(bridge=bridge))
        tagged(app_log, "signed_up", user_id="u1")
        tagged(explicit, "logged_in", user_id="u1")
        assert cio.flush(1.0)
        assert transport.bodies == []
        assert [event.name for event in cio_events.events] == ["signed_up", "logged_in"]

    def test_captures_when_the_library_is_switched_off(
        self, monkeypatch: pytest.MonkeyPatch, app_log: logging.Logger
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        cio.configure()  # the app's, at import: switched off on CI
        with capture_events() as events:
            tagged(app_log, "signed_up", user_id="u1")
            receipt = cio.track("u1", "upgraded")
        events.assert_sent("signed_up", user_id="u1")
        assert receipt.result(0).status == "sent"
        # Once the block ends, the switch is back in force: nothing more is captured.
        tagged(app_log, "later", user_id="u1")
        assert [event.name for event in events.events] == ["signed_up", "upgraded"]


class TestEmulatorFixtures:
    def test_the_environment_points_at_the_emulator_and_is_restored(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", "https://track.customer.io")
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        pytester.makepyfile(
            """
            import os

            def test_inside(track_api_emulator):
                assert os.environ["CUSTOMERIO_TRACK_URL"] == track_api_emulator.url
                assert os.environ["CUSTOMERIO_SITE_ID"] == track_api_emulator.site_id
                assert os.environ["CUSTOMERIO_APP_URL"] == track_api_emulator.url
                assert os.environ["CUSTOMERIO_ENABLED"] == "1"
                assert os.environ["CUSTOMERIO_SPOOL_PATH"].endswith("spool.db")

            def test_after():
                assert os.environ["CUSTOMERIO_TRACK_URL"] == "https://track.customer.io"
                assert os.environ["CUSTOMERIO_ENABLED"] == "0"
            """
        )
        pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)

    def test_a_test_servers_own_loopback_address_is_kept(
        self, track_api_emulator: TrackAPIEmulator, app_log: logging.Logger
    ) -> None:
        with TrackAPIEmulator() as other:
            bridge = cio.configure(
                site_id=other.site_id,
                api_key=other.api_key,
                track_url=other.url,
                flush_interval=0.05,
            )
            assert bridge.settings.install_signal_handlers is False  # the fixture's default
            tagged(app_log, "signed_up", user_id="u1")
            assert cio.flush(5.0)
            assert len(other.events("signed_up")) == 1
        assert track_api_emulator.operations == []

    def test_a_bridge_built_before_the_test_sends_nothing_and_is_back_after(
        self, request: pytest.FixtureRequest, app_log: logging.Logger
    ) -> None:
        transport = MockTransport()
        early = cio.configure(
            site_id="real",
            api_key="real-key",
            transport=transport,
            spool_path=False,
            events=[SignedUp],
            unknown_events="reject",
        )
        explicit = logging.getLogger("fixtures-early-explicit")
        explicit.setLevel(logging.INFO)
        explicit.propagate = False
        explicit.addHandler(cio.CustomerIOHandler(bridge=early))
        emulator: TrackAPIEmulator = request.getfixturevalue("track_api_emulator")
        tagged(app_log, "signed_up", user_id="u1", plan="pro")
        tagged(explicit, "signed_up", user_id="u2", plan="pro")
        tagged(explicit, "not_declared", user_id="u2")  # the app's schema still applies
        assert cio.flush(5.0)
        assert sorted(op["identifiers"]["id"] for op in emulator.events("signed_up")) == [
            "u1",
            "u2",
        ]
        assert emulator.events("not_declared") == []
        assert transport.bodies == []
        assert early.thread is not None
        assert early.thread.is_alive()  # untouched: the app's own, back after the test
        pinned = current_bridge()
        assert pinned is not early
        assert pinned is not None
        assert pinned.stats().invalid == 1

    def test_cio_bridge_is_strict_at_the_call(
        self, cio_bridge: cio.Bridge, app_log: logging.Logger
    ) -> None:
        with pytest.raises(InvalidEventError) as caught:
            tagged(app_log, "signed_up")
        assert caught.value.reason == "missing_identifier"
        with pytest.raises(InvalidEventError):
            cio.track("u1", "")
        tagged(app_log, "signed_up", user_id="u1")
        assert cio_bridge.flush(5.0)
        assert cio_bridge.stats().invalid == 0

    @pytest.mark.customerio(strict=False)
    def test_cio_bridge_not_strict_counts_them_instead(
        self, cio_bridge: cio.Bridge, app_log: logging.Logger
    ) -> None:
        tagged(app_log, "signed_up")
        assert cio_bridge.flush(5.0)
        assert cio_bridge.stats().invalid == 1


_APP_MODULE = """
import logging, os
import customerio_logging as cio

# As an app does at import, with the values its settings read from the environment.
cio.configure(
    site_id=os.environ["CUSTOMERIO_SITE_ID"],
    api_key=os.environ["CUSTOMERIO_TRACK_API_KEY"],
    track_url=os.environ["CUSTOMERIO_TRACK_URL"],
    flush_interval=0.05,
)
TRACK_URL = os.environ["CUSTOMERIO_TRACK_URL"]
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())

def signup(user):
    log.info("signed_up", extra={"cio_event": True, "user_id": user})
"""

_APP_TESTS = """
import customerio_logging as cio
import app

def reconfigure():
    # The app's own configure() during the test, as its factory would.
    cio.configure(site_id="real-site", api_key="real-key", track_url=app.TRACK_URL)

def test_with_cio_bridge(cio_bridge, track_api_emulator):
    reconfigure()
    app.signup("u1")
    assert cio.flush(5.0)
    assert [op["name"] for op in track_api_emulator.events()] == ["signed_up"]

def test_with_the_emulator_alone(track_api_emulator):
    reconfigure()
    app.signup("u2")
    assert cio.flush(5.0)
    assert len(track_api_emulator.events("signed_up")) == 1

def test_with_cio_events(cio_events):
    reconfigure()
    app.signup("u3")
    cio_events.assert_sent("signed_up", user_id="u3")
    assert cio.flush(5.0)
"""


_APP_TESTS_WITHOUT_RECONFIGURING = """
import logging, subprocess, sys, threading
from logging.handlers import QueueHandler, QueueListener
import queue
import customerio_logging as cio
import app

EXPLICIT = logging.getLogger("explicit")
EXPLICIT.setLevel(logging.INFO)
EXPLICIT.addHandler(cio.CustomerIOHandler(bridge=app.BRIDGE))

def test_emulator_alone(track_api_emulator):
    app.signup("u1")
    EXPLICIT.info("signed_up", extra={"cio_event": True, "user_id": "u9"})
    answer = cio.send_email(transactional_message_id="1", to="a@b.c", identifiers={"id": "u1"})
    assert answer["delivery_id"]
    assert cio.flush(5.0)
    users = sorted(op["identifiers"]["id"] for op in track_api_emulator.events("signed_up"))
    assert users == ["u1", "u9"]
    assert len(track_api_emulator.transactional) == 1

def test_cio_events(cio_events):
    app.signup("u2")
    cio.configure()  # an app factory: its bridge is gone after the test
    answer = cio.send_email(transactional_message_id="1", to="a@b.c", identifiers={"id": "u2"})
    assert answer["delivery_id"].startswith("cio-events-")
    assert [m.kind for m in cio_events.messages] == ["email"]
    cio_events.assert_sent("signed_up", user_id="u2")
    code = "import customerio_logging as cio; print(cio.configure().settings.enabled)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"  # a subprocess runs switched off

def test_after_cio_events_the_apps_bridge_is_back():
    assert cio.get_bridge() is app.BRIDGE

def test_cio_bridge_keeps_the_apps_schema(cio_bridge):
    assert cio_bridge.settings.events == app.BRIDGE.settings.events
    import pytest
    with pytest.raises(cio.InvalidEventError):
        app.log.info("signed_up", extra={"cio_event": True, "user_id": "u", "plan": 5})
"""


def test_nothing_reaches_the_environments_address_without_reconfiguring(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An app configured at import from the environment (loopback, as a local proxy
    would be), a handler given that bridge, send_email and a subprocess: nothing of the
    tests reaches the environment's address."""
    with TrackAPIEmulator(site_id="real-site", api_key="real-key") as real:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", real.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", real.api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", real.url)
        monkeypatch.setenv("CUSTOMERIO_APP_URL", real.url)
        monkeypatch.setenv("CUSTOMERIO_APP_API_KEY", real.app_api_key)
        monkeypatch.setenv("CUSTOMERIO_SPOOL_PATH", str(tmp_path / "real-spool.db"))
        app = _APP_MODULE.replace(
            "cio.configure(",
            "class SignedUp(cio.Event, name='signed_up'):\n    plan: str = 'free'\n\n"
            "BRIDGE = cio.configure(events=[SignedUp], ",
        )
        pytester.makepyfile(app=app, test_app=_APP_TESTS_WITHOUT_RECONFIGURING)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=4)
        assert real.requests == []
        assert real.transactional == []


def test_nothing_reaches_the_environments_address(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The issue's leak: CUSTOMERIO_* in the shell and an app-level configure() (at import,
    and again in the test) must not send the test's events to the environment's URL."""
    with TrackAPIEmulator(site_id="real-site", api_key="real-key") as real:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", real.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", real.api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", real.url)
        monkeypatch.setenv("CUSTOMERIO_SPOOL_PATH", str(tmp_path / "real-spool.db"))
        pytester.makepyfile(app=_APP_MODULE, test_app=_APP_TESTS)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)
        # Only what the import logged (before any fixture) may reach it, and it logged none.
        assert real.requests == []
        assert os.environ["CUSTOMERIO_TRACK_URL"] == real.url
