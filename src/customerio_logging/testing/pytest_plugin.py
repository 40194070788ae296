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
from collections.abc import Iterator

import pytest

from .. import _routing
from .._bridge import Bridge
from .._config import ENV_VARS
from .._global import configure, current_bridge, forget_bridge
from ._events import CapturedEvents, capture_events
from ._server import TrackAPIEmulator

__all__ = ["cio_bridge", "cio_events", "track_api_emulator"]

_MARKER = "customerio"


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
def cio_events(request: pytest.FixtureRequest) -> Iterator[CapturedEvents]:
    """Every operation the test makes, captured in memory as it is made (see
    :class:`CapturedEvents`): no thread, no HTTP, whatever ``configure()`` the app
    calls meanwhile. Strict: an invalid event raises ``InvalidEventError`` at the call."""
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
    kept. A process bridge built earlier for another address is shut down and forgotten.
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
        _forget_a_bridge_aimed_elsewhere()
        pin = _routing.Pin(
            destination=destination,
            defaults={"install_signal_handlers": False},
            foreign=foreign,
        )
        with _routing.tapped(pin):
            yield emulator


@pytest.fixture
def cio_bridge(
    request: pytest.FixtureRequest, track_api_emulator: TrackAPIEmulator
) -> Iterator[Bridge]:
    """The process's bridge, configured against ``track_api_emulator``.

    Short flush interval, no SIGTERM handler (pytest owns the process). Strict: an
    invalid event raises ``InvalidEventError`` at the call, log calls included. After
    the test it is shut down and forgotten, so the next test starts clean.
    """
    pin = dataclasses.replace(_routing.innermost_pin(), check_at_call=_strict(request))
    with _routing.tapped(pin):
        bridge = configure(flush_interval=0.05)
        try:
            yield bridge
        finally:
            # The app may have configured its own meanwhile: shut down whichever is last.
            last = current_bridge()
            bridge.shutdown(5.0)
            if last is not None and last is not bridge:
                last.shutdown(5.0)
            forget_bridge()


def _forget_a_bridge_aimed_elsewhere() -> None:
    """Forget a process bridge built for an address off this machine (at the app's
    import, say): the test's calls then build one that sends to the emulator."""
    bridge = current_bridge()
    if bridge is not None and not _routing.is_loopback_url(bridge.settings.track_url):
        forgotten = forget_bridge()
        if forgotten is not None:
            forgotten.shutdown(0.0)  # what it holds goes to its spool, not over a network
