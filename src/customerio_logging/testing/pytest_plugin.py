"""The pytest plugin: fixtures that point the bridge at a local Track API emulator.

Installed with the package (entry point ``pytest11``), so an app's tests can use them
with no import::

    def test_signup_sends_an_event(cio_bridge, track_api_emulator):
        signup("u1")                       # logs with cio_event=True
        assert cio_bridge.flush()
        assert [op["name"] for op in track_api_emulator.events()] == ["signed_up"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._bridge import Bridge
from .._global import configure, forget_bridge
from ._server import TrackAPIEmulator

__all__ = ["cio_bridge", "track_api_emulator"]


@pytest.fixture
def track_api_emulator() -> Iterator[TrackAPIEmulator]:
    """A running :class:`TrackAPIEmulator` on 127.0.0.1, stopped after the test."""
    with TrackAPIEmulator() as emulator:
        yield emulator


@pytest.fixture
def cio_bridge(track_api_emulator: TrackAPIEmulator) -> Iterator[Bridge]:
    """The process's bridge, configured against ``track_api_emulator``.

    Short flush interval, no SIGTERM handler (pytest owns the process). After the test
    it is shut down and forgotten, so the next test starts clean.
    """
    bridge = configure(
        site_id=track_api_emulator.site_id,
        api_key=track_api_emulator.api_key,
        track_url=track_api_emulator.url,
        flush_interval=0.05,
        install_signal_handlers=False,
    )
    try:
        yield bridge
    finally:
        bridge.shutdown(5.0)
        forget_bridge()
