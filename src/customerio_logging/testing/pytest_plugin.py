"""The pytest plugin: fixtures that capture events in memory, or send them to a local
Track API emulator, and never let a test reach a real workspace.

Installed with the package (entry point ``pytest11``), so an app's tests can use them
with no import::

    def test_signup_sends_an_event(cio_events):
        signup("u1")                       # logs with cio_event=True
        cio_events.assert_sent("signed_up", user_id="u1", plan="pro")

    def test_signup_reaches_the_api(cio_bridge, track_api_emulator):
        signup("u1")
        assert cio_bridge.flush()
        assert [op["name"] for op in track_api_emulator.events()] == ["signed_up"]

``cio_events`` and ``cio_bridge`` are strict: an invalid event fails the test at the
call. ``@pytest.mark.customerio(strict=False)`` turns that off for one test.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from .. import _routing
from .._bridge import Bridge
from .._config import ENV_VARS
from .._global import pinned_bridge
from ._events import CapturedEvents, capture_events
from ._isolation import isolated
from ._redis import REQUIRE_VAR, RedisServer, redis_server_binary
from ._server import TrackAPIEmulator

__all__ = ["cio_bridge", "cio_events", "redis_server", "track_api_emulator"]

_MARKER = "customerio"
_DESTINATION_VARS = ("site_id", "api_key", "track_url", "app_url", "app_api_key", "region")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``customerio`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(strict=True): options of customerio_logging's fixtures; strict=False "
        "lists invalid events in cio_events.invalid instead of failing at the call",
    )


def _strict(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker(_MARKER)
    return bool(marker.kwargs.get("strict", True)) if marker is not None else True


@pytest.fixture
def cio_events(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CapturedEvents]:
    """Every operation the test makes, captured in memory as it is made (see
    :class:`CapturedEvents`), whatever ``configure()`` the app calls meanwhile; and
    ``send_email``/``send_push`` too. Strict: an invalid event raises
    ``InvalidEventError`` at the call. A subprocess the test starts runs with the library
    switched off (``CUSTOMERIO_ENABLED=0``, no credentials)."""
    for name in _DESTINATION_VARS:
        monkeypatch.delenv(ENV_VARS[name], raising=False)
    monkeypatch.setenv(ENV_VARS["enabled"], "0")
    with capture_events(strict=_strict(request)) as captured:
        yield captured


@pytest.fixture
def track_api_emulator(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackAPIEmulator]:
    """A running :class:`TrackAPIEmulator` on 127.0.0.1, stopped after the test.

    For the test's duration the environment points at it (``CUSTOMERIO_SITE_ID``,
    ``CUSTOMERIO_TRACK_API_KEY``, ``CUSTOMERIO_TRACK_URL``, the App API's, a spool in a
    temporary directory, ``CUSTOMERIO_ENABLED=1``), and so does any ``configure()`` the
    app makes, whatever it passes: only an explicit loopback address of the test's own is
    kept. A bridge built before the test (at the app's import, or given to a handler)
    sends nothing meanwhile: its calls go to one built for the emulator, with the
    process's event schema. Afterwards the process's bridge is the one from before.
    """
    foreign = _routing.environment_urls()  # before the environment points at the emulator
    with TrackAPIEmulator() as emulator:
        destination = {
            "track_url": emulator.url,
            "site_id": emulator.site_id,
            "api_key": emulator.api_key,
            "app_url": emulator.url,
            "app_api_key": emulator.app_api_key,
        }
        for name, value in destination.items():
            monkeypatch.setenv(ENV_VARS[name], value)
        spool = tmp_path_factory.mktemp("cio-spool") / "spool.db"
        monkeypatch.setenv(ENV_VARS["spool_path"], str(spool))
        monkeypatch.setenv(ENV_VARS["enabled"], "1")
        monkeypatch.delenv(ENV_VARS["region"], raising=False)
        pin = _routing.Pin(
            destination=destination,
            defaults={"install_signal_handlers": False},
            foreign=foreign,
        )
        with isolated(pin):
            yield emulator


@pytest.fixture
def cio_bridge(
    request: pytest.FixtureRequest, track_api_emulator: TrackAPIEmulator
) -> Iterator[Bridge]:
    """The process's bridge, configured against ``track_api_emulator``, with the event
    schema of the app's own bridge if it has one.

    Short flush interval, no SIGTERM handler (pytest owns the process). Strict: an
    invalid event raises ``InvalidEventError`` at the call, log calls included (on
    another thread it is counted, and the test fails at its end). After the test it is
    shut down, and the bridge from before is the process's again.
    """
    strict = _strict(request)
    pin = dataclasses.replace(_routing.innermost_pin(), check_at_call=strict)
    with isolated(pin):
        bridge = pinned_bridge(flush_interval=0.05)
        yield bridge
        built = [each for each in _routing.built_under(pin) if isinstance(each, Bridge)]
    # After the shutdowns above: what was still queued has been validated by now.
    letters = [x for each in built for x in each.dead_letters() if x.id is None]
    if strict and letters:
        listed = "\n".join(f"  {x.name!r}: {x.reason} at {x.field}: {x.message}" for x in letters)
        pytest.fail(f"{len(letters)} invalid event(s) on another thread:\n{listed}")


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own on 127.0.0.1 (a free port, persistence on, in
    a temporary folder), stopped after the test: pass ``redis_server.url`` as
    ``configure(redis_url=...)``. ``stop()`` and ``restart()`` stand for an outage.

    Skipped when no ``redis-server`` binary is installed, unless ``CUSTOMERIO_TEST_REDIS``
    is ``required`` (then the test fails).
    """
    if redis_server_binary() is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get(REQUIRE_VAR, "").strip().lower() == "required":
            pytest.fail(message)
        pytest.skip(message)
    with RedisServer(tmp_path_factory.mktemp("cio-redis")) as server:
        yield server
