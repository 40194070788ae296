"""enabled=False / CUSTOMERIO_ENABLED=0: the library switched off, for dev machines and CI."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging import _global, handler, processor
from customerio_logging.testing import MockTransport, TrackAPIEmulator

from .helpers import program, run_python


@pytest.fixture
def app_log() -> Iterator[logging.Logger]:
    log = logging.getLogger("disabled-test")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler_ = cio.CustomerIOHandler()
    log.addHandler(handler_)
    yield log
    log.removeHandler(handler_)


def _no_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("a switched-off library captured a call")

    monkeypatch.setattr(handler, "capture_record", refuse)
    monkeypatch.setattr(processor, "snapshot_event_dict", refuse)


class TestConfigureSwitchedOff:
    def test_needs_no_credentials_and_starts_nothing(self, tmp_path: Path) -> None:
        threads_before = set(threading.enumerate())
        bridge = cio.configure(enabled=False)
        assert bridge.settings.enabled is False
        assert bridge.thread is None
        assert set(threading.enumerate()) == threads_before
        assert bridge.spool is None
        assert bridge._client is None  # the HTTP client is never built
        assert not (tmp_path / "state").exists()  # no spool file anywhere
        assert cio.flush() is True
        cio.shutdown()

    def test_tagged_log_calls_are_not_even_captured(
        self, app_log: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cio.configure(enabled=False)
        app_log.info("warm_up", extra={"cio_event": True, "user_id": "u1"})
        _no_capture(monkeypatch)
        app_log.info("signed_up", extra={"cio_event": True, "user_id": "u1"})
        log = processor.CustomerIOProcessor()
        event_dict = log(None, "info", {"event": "signed_up", "cio_event": True})
        assert event_dict["cio_event"] is True  # untouched, as an untagged one would be
        assert cio.stats() == cio.Stats()

    def test_the_environment_switches_off_a_handler_with_no_configure(
        self, app_log: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        with _no_warning():
            app_log.info("signed_up", extra={"cio_event": True, "user_id": "u1"})
        bridge = _global.current_bridge()
        assert bridge is not None
        assert bridge.settings.enabled is False
        _no_capture(monkeypatch)
        app_log.info("signed_up", extra={"cio_event": True, "user_id": "u1"})
        assert cio.stats().dropped == 0

    def test_a_handler_given_a_switched_off_bridge_sends_nothing(self) -> None:
        transport = MockTransport()
        bridge = cio.Bridge(cio.Settings(enabled=False, transport=transport))
        log = logging.getLogger("disabled-explicit")
        log.propagate = False
        log.addHandler(cio.CustomerIOHandler(bridge=bridge))
        log.warning("signed_up", extra={"cio_event": True, "user_id": "u1"})
        assert bridge.flush(0.1)
        assert transport.bodies == []

    def test_direct_calls_return_receipts_resolved_as_disabled(self) -> None:
        cio.configure(enabled=False, strict=True)
        receipts = [
            cio.track("u1", "signed_up", plan="pro"),
            cio.identify("u1", {"plan": "pro"}),
            cio.track("", ""),  # invalid, but nothing is checked while switched off
        ]
        for receipt in receipts:
            assert receipt.done()
            outcome = receipt.result(0)
            assert outcome.status == "disabled"
            assert outcome.ok
            assert "switched off" in (outcome.message or "")

    def test_send_email_checks_its_request_and_sends_nothing(
        self, emulator: TrackAPIEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_ENABLED", "0")
        answer = cio.send_email(transactional_message_id="1", to="a@example.com", identifiers={})
        assert answer == {"delivery_id": None, "queued_at": None, "disabled": True}
        assert emulator.requests == []
        with pytest.raises(TypeError):
            cio.send_email(no_such_field=1)

    def test_reconfigured_on_the_library_works_again(
        self, app_log: logging.Logger, emulator: TrackAPIEmulator
    ) -> None:
        cio.configure(enabled=False)
        app_log.info("lost_by_design", extra={"cio_event": True, "user_id": "u1"})
        cio.configure(
            site_id=emulator.site_id,
            api_key=emulator.api_key,
            track_url=emulator.url,
            install_signal_handlers=False,
        )
        app_log.info("signed_up", extra={"cio_event": True, "user_id": "u1"})
        assert cio.flush(5.0)
        assert [op["name"] for op in emulator.events()] == ["signed_up"]


class TestAnAppThatConfiguresAtImport:
    def test_imports_and_runs_with_only_the_switch_set(self, tmp_path: Path) -> None:
        result = run_python(
            program("configured_at_import"),
            env={"CUSTOMERIO_ENABLED": "0", "XDG_STATE_HOME": str(tmp_path)},
            clean=True,
            check=True,
        )
        out = result.stdout
        assert "outcome disabled True" in out
        assert "'disabled': True" in out
        assert "threads ['MainThread']" in out  # no dispatch thread, no watchdog
        assert "sigterm default True" in out  # no SIGTERM handler installed
        assert "flush True stats Stats(enqueued=0" in out
        assert result.stderr == ""
        assert list(tmp_path.iterdir()) == []  # no spool written

    def test_without_the_switch_it_says_what_is_missing(self) -> None:
        result = run_python(program("configured_at_import"), clean=True)
        assert result.returncode == 1
        assert "CUSTOMERIO_SITE_ID" in result.stderr

    def test_a_malformed_switch_is_a_clear_error(self) -> None:
        result = run_python(
            program("configured_at_import"), env={"CUSTOMERIO_ENABLED": "nope"}, clean=True
        )
        assert result.returncode == 1
        assert "CUSTOMERIO_ENABLED must be 1 or 0" in result.stderr


class _no_warning:  # noqa: N801 - used as a context manager, like pytest.warns
    """No warning from the library's logger while the block runs."""

    def __enter__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._handler = logging.Handler()
        self._handler.emit = self._records.append  # type: ignore[method-assign]
        logging.getLogger("customerio_logging").addHandler(self._handler)

    def __exit__(self, *_: object) -> None:
        logging.getLogger("customerio_logging").removeHandler(self._handler)
        assert [r.getMessage() for r in self._records] == []


_FORK_WHILE_ROUTING_IS_HELD = """
import os, threading
import customerio_logging as cio
from customerio_logging import _routing

held, release = threading.Event(), threading.Event()

def hold():  # a thread inside set_process_bridge_off() or pinned() at the fork
    with _routing._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    threading.Timer(5.0, lambda: os._exit(3)).start()
    cio.configure()
    os._exit(0)
release.set()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_while_the_routing_lock_is_held_leaves_the_child_free() -> None:
    result = run_python(
        "-c", _FORK_WHILE_ROUTING_IS_HELD, env={"CUSTOMERIO_ENABLED": "0"}, clean=True
    )
    assert result.stdout.strip() == "child 0", result.stderr
