"""The pytest plugin's fixtures, as an app's test suite would use them."""

from __future__ import annotations

import logging

import pytest

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator

pytest_plugins = ["pytester"]


def test_the_fixtures_deliver_to_the_emulator(
    cio_bridge: cio.Bridge, track_api_emulator: TrackAPIEmulator
) -> None:
    log = logging.getLogger("plugin-test")
    log.setLevel(logging.INFO)
    handler = cio.CustomerIOHandler()
    log.addHandler(handler)
    try:
        log.info("signed_up", extra={"cio_event": True, "user_id": "u1"})
        assert cio_bridge.flush(5.0)
    finally:
        log.removeHandler(handler)
    assert [op["name"] for op in track_api_emulator.events()] == ["signed_up"]
    assert cio.get_bridge() is cio_bridge


def test_an_apps_suite_gets_the_fixtures_from_the_installed_plugin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import customerio_logging as cio

        def test_app(cio_bridge, track_api_emulator):
            import structlog
            log = structlog.wrap_logger(
                structlog.ReturnLogger(), processors=[cio.CustomerIOProcessor()]
            )
            log.info("plan_changed", cio_event=True, user_id="u1", to="pro")
            assert cio.flush(5.0)
            (op,) = track_api_emulator.events("plan_changed")
            assert op["attributes"] == {"to": "pro"}

        def test_the_next_test_starts_clean():
            assert cio.stats() == cio.Stats()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
