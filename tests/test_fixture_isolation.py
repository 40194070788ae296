"""The fixtures around an app that configured its bridge at import, against a real host:
during a test nothing of it sends, and after the test it is back, running, untouched."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

_SUITE = """
import logging, os, signal, threading, time
import customerio_logging as cio
from customerio_logging import _global
from customerio_logging.testing import MockTransport, capture_events

REAL = MockTransport()
APP = cio.configure(
    site_id="real", api_key="real-key", transport=REAL,
    install_signal_handlers=False, spool_path=False,
)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
EXPLICIT = logging.getLogger("explicit")
EXPLICIT.setLevel(logging.INFO)
EXPLICIT.propagate = False
EXPLICIT.addHandler(cio.CustomerIOHandler(bridge=APP))
stop = threading.Event()


def tagged(logger, name):
    logger.info(name, extra={"cio_event": True, "user_id": "u1"})


def test_configure_and_reset_in_a_test(track_api_emulator):
    cio.configure()
    tagged(log, "in_test")
    cio.reset()
    tagged(log, "after_reset")
    assert cio.flush(5)
    assert len(track_api_emulator.events()) == 2


def test_the_apps_bridge_is_back_running():
    assert _global.current_bridge() is APP
    assert "running" in repr(APP)


def test_a_signal_handler_logging_during_configure(track_api_emulator, monkeypatch):
    previous = signal.signal(signal.SIGUSR1, lambda *_: tagged(EXPLICIT, "from_signal"))
    shutdown = cio.Bridge.shutdown

    def shutdown_with_a_signal(self, timeout=None):
        os.kill(os.getpid(), signal.SIGUSR1)
        return shutdown(self, timeout)

    monkeypatch.setattr(cio.Bridge, "shutdown", shutdown_with_a_signal)
    try:
        cio.configure()
        cio.configure()  # shuts the first down: the signal arrives meanwhile
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGUSR1, previous)
    assert cio.flush(5)
    assert len(track_api_emulator.events("from_signal")) == 1  # the app's own is not shut down


def worker():
    while not stop.is_set():
        tagged(log, "tick")
        time.sleep(0.0005)


def test_a_thread_logging_through_the_end_of_a_test(track_api_emulator):
    threading.Thread(target=worker, daemon=True).start()
    time.sleep(0.2)


def test_after_that_thread():
    time.sleep(0.2)
    stop.set()
    assert _global.current_bridge() is APP


def test_flush_or_spool_in_a_test(cio_bridge):
    tagged(log, "lambda_end")
    assert _global.flush_or_spool(5.0)
    tagged(log, "next_invocation")
    assert _global.flush_or_spool(5.0) or True


def test_no_bridge_of_the_tests_is_left_running():
    names = [t.name for t in threading.enumerate()]
    assert names.count("customerio-dispatch") == 1  # the app's own


def test_a_bridge_that_cannot_be_built_drops_the_call(track_api_emulator, monkeypatch):
    monkeypatch.delenv("CUSTOMERIO_TRACK_API_KEY")
    receipt = cio.track("u1", "signed_up")
    assert receipt.result(0).status == "dropped"
    tagged(log, "lost")  # counted, never raised into the app


def test_fixtures_on_two_threads_at_once_are_refused():
    errors = []

    def other():
        try:
            with capture_events():
                pass
        except RuntimeError as exc:
            errors.append(str(exc))

    with capture_events():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors and "two threads" in errors[0]


def test_send_email_reaches_the_emulator_when_the_apps_bridge_is_switched_off(
    track_api_emulator,
):
    app_off = cio.configure(enabled=False)  # as on CI: the app's, switched off
    try:
        with_app = _global.swap_bridge(app_off)  # as if built before the test
        from customerio_logging import _routing
        _routing._built.pop(app_off, None)
        answer = cio.send_email(transactional_message_id="1", to="a@b.c", identifiers={"id": "u"})
        assert answer.get("disabled") is not True
        assert len(track_api_emulator.transactional) == 1
    finally:
        _global.swap_bridge(with_app)


def test_nothing_reached_the_apps_host():
    assert REAL.bodies == []
"""


def test_an_apps_bridge_from_before_the_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=_SUITE)
    # A bounded run: a log call that deadlocks must fail the test, not hang the suite.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=11)
