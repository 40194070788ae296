"""configure(on_error=...): every drop, dead letter and failure is told to the app's
callback on a thread of the library's own, secret-free, and shutdowns say what was
pending and what was lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging._reporter import REPORTS_KEPT, ErrorReporter
from customerio_logging._shutdown import EXIT_MARGIN
from customerio_logging._wire import Response
from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import (
    CHILD_TIMEOUT,
    GatedTransport,
    cap,
    closed_port_url,
    in_fork,
    snapshot,
    wait_until,
)

SECRET = "sk_live_DO_NOT_LEAK_42"
WAIT = 5.0  # seconds a report may take to arrive


class Told:
    """An on_error callback that keeps each report, with the thread that told it."""

    def __init__(self) -> None:
        self.reports: list[cio.ErrorReport] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, report: cio.ErrorReport) -> None:
        with self.lock:
            self.reports.append(report)
            self.threads.add(threading.current_thread().name)

    def total(self, kind: str | None = None) -> int:
        with self.lock:
            return sum(r.total for r in self.reports if kind is None or r.kind == kind)

    def assert_secret_free(self) -> None:
        assert SECRET not in repr(self.reports)


@pytest.fixture
def told() -> Iterator[Told]:
    told = Told()
    yield told
    told.assert_secret_free()  # whatever the test: no report carries the api key


def _settings(emulator: TrackAPIEmulator, told: Told, **more: Any) -> dict[str, Any]:
    """configure() arguments: the emulator's site and URL, but the SECRET api key (the
    emulator takes any key it is not told to refuse)."""
    return {
        "site_id": emulator.site_id,
        "api_key": SECRET,
        "track_url": emulator.url,
        "flush_interval": 0.05,
        "install_signal_handlers": False,
        "on_error": told,
        **more,
    }


def _reporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "customerio-on-error"]


class TestWhatOnErrorHears:
    def test_a_full_queue_drop_is_told_off_the_app_thread(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        transport = GatedTransport(Response(200, b"{}"))
        bridge = cio.configure(
            **_settings(
                emulator,
                told,
                transport=transport,
                spool_path=False,
                batch_size=1,
                max_queue_size=2,
            )
        )
        bridge.submit(snapshot(0))
        assert transport.entered.wait(WAIT)  # the thread holds it, on the wire
        results = [bridge.submit(snapshot(i)) for i in range(1, 6)]
        assert results == [True, True, False, False, False]
        assert wait_until(lambda: told.total() == 3, WAIT), told.reports
        assert {r.kind for r in told.reports} == {"dropped"}
        assert "queue is full" in told.reports[0].message
        assert told.threads == {"customerio-on-error"}
        transport.gate.set()

    def test_an_invalid_event_is_told_dead_lettered_with_its_reason_and_name(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        bridge = cio.configure(**_settings(emulator, told))
        bridge.submit(cap("signed_up"))  # no user_id
        assert wait_until(lambda: told.reports, WAIT)
        (report,) = told.reports
        assert report == cio.ErrorReport(
            "dead_lettered", 1, "missing_identifier", report.message, "signed_up"
        )
        assert told.threads == {"customerio-on-error"}

    def test_an_event_the_api_refuses_with_400_is_told_dead_lettered(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        emulator.set_faults(FaultPlan(script=(400,)))
        bridge = cio.configure(**_settings(emulator, told))
        bridge.submit(snapshot(1))
        assert bridge.flush(WAIT) is False
        assert wait_until(lambda: told.reports, WAIT)
        (report,) = told.reports
        assert (report.kind, report.total, report.name) == ("dead_lettered", 1, "plan_changed")
        assert report.reason is not None
        assert "400" in report.message

    def test_a_failure_with_no_spool_is_told_failed_for_the_whole_batch(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        emulator.set_faults(FaultPlan(script=(500,)))
        bridge = cio.configure(**_settings(emulator, told, spool_path=False, max_retries=0))
        for i in range(3):
            bridge.submit(snapshot(i))
        assert bridge.flush(WAIT) is False
        assert wait_until(lambda: told.total() == 3, WAIT), told.reports
        (report,) = told.reports  # one batch, one reason: one report
        assert (report.kind, report.total, report.name) == ("failed", 3, None)
        assert bridge.stats().failed == 3

    def test_an_unreachable_api_without_a_spool_is_told_failed(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        unreachable = closed_port_url()
        bridge = cio.configure(
            **_settings(emulator, told, track_url=unreachable, spool_path=False, max_retries=0)
        )
        bridge.submit(snapshot(1))
        bridge.flush(WAIT)
        assert wait_until(lambda: told.reports, WAIT)
        assert told.reports[0].kind == "failed"
        assert told.reports[0].reason == "network_error"

    def test_a_callback_that_raises_is_ignored_and_warned_about_once(
        self, emulator: TrackAPIEmulator, told: Told, caplog: pytest.LogCaptureFixture
    ) -> None:
        def raising(report: cio.ErrorReport) -> None:
            told(report)
            raise ValueError(SECRET)  # its own words are not repeated either

        bridge = cio.configure(**_settings(emulator, told, on_error=raising))
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(3):
                bridge.submit(cap("bad", n=i))  # a log call says what the last one met
                assert wait_until(lambda i=i: len(told.reports) == i + 1, WAIT)
            bridge.submit(snapshot(1))
        warnings = [r.getMessage() for r in caplog.records if "on_error" in r.getMessage()]
        assert warnings == [
            "on_error raised ValueError; its exceptions are ignored (this is said once)"
        ]
        assert SECRET not in caplog.text

    def test_a_storm_of_drops_never_waits_for_a_stuck_callback_and_is_merged(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        release = threading.Event()

        def stuck(report: cio.ErrorReport) -> None:
            told(report)
            release.wait(WAIT * 4)

        bridge = cio.configure(
            **_settings(
                emulator,
                told,
                on_error=stuck,
                spool_path=False,
                max_queue_size=1,
                batch_size=1,
                flush_interval=60.0,
            )
        )
        count = 5 * REPORTS_KEPT
        started = time.monotonic()
        # The queue of one is full or taken as fast as the thread can: most are dropped,
        # the others invalid (no user_id): each is told, one way or the other.
        dropped = sum(not bridge.submit(cap("bad")) for _ in range(count))
        took = time.monotonic() - started
        release.set()
        assert dropped > REPORTS_KEPT
        # Each drop costs a lock and an append: nowhere near one stuck callback (20 s).
        assert took < WAIT, took
        assert wait_until(lambda: told.total() == count, WAIT), told.total()
        # What waits is bounded: the thread's batch in hand, REPORTS_KEPT queued, one
        # merged report per kind, and the few the dispatch thread made after the storm.
        assert len(told.reports) <= 2 * REPORTS_KEPT + 4
        merged = [r for r in told.reports if "reports merged" in r.message]
        assert merged
        assert all(r.total > 1 for r in merged)


class TestReportsAndShutdown:
    def test_what_shutdown_loses_is_told_before_it_returns(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        def slow(report: cio.ErrorReport) -> None:
            time.sleep(0.1)  # a callback that posts somewhere
            told(report)

        transport = GatedTransport(Response(200, b"{}"))
        bridge = cio.configure(
            **_settings(
                emulator,
                told,
                on_error=slow,
                spool_path=False,
                transport=transport,
                flush_interval=60.0,
            )
        )
        for i in range(3):
            bridge.submit(snapshot(i))
        bridge.request_flush()
        assert transport.entered.wait(WAIT)
        bridge.submit(snapshot(3))  # still queued when the deadline comes
        bridge.shutdown(0.3)
        transport.gate.set()
        assert told.total("dropped") >= 1, told.reports
        assert told.threads == {"customerio-on-error"}

    def test_a_stuck_callback_holds_shutdown_no_longer_than_its_margin(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        release = threading.Event()

        def stuck(report: cio.ErrorReport) -> None:
            told(report)
            release.wait(30)

        bridge = cio.configure(**_settings(emulator, told, on_error=stuck))
        bridge.submit(cap("bad"))
        assert wait_until(lambda: told.reports, WAIT)
        bridge.submit(cap("bad"))  # waits behind the stuck one
        started = time.monotonic()
        bridge.shutdown(0.2)
        took = time.monotonic() - started
        release.set()
        assert took < 0.2 + EXIT_MARGIN + 0.5, took

    def test_the_thread_ends_after_shutdown_and_a_later_drop_is_still_told(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        assert wait_until(lambda: not _reporter_threads(), WAIT)  # earlier tests' ended
        bridge = cio.configure(**_settings(emulator, told, spool_path=False))
        # Started with the dispatch thread, before anything needs it (an exit may not
        # start threads).
        assert wait_until(_reporter_threads, WAIT)
        bridge.shutdown(1.0)
        assert wait_until(lambda: not _reporter_threads(), WAIT)
        assert bridge.submit(snapshot(1)) is False  # after shutdown: dropped, and told
        assert wait_until(lambda: told.total("dropped") == 1, WAIT)
        assert "shut down" in told.reports[0].message

    def test_a_forked_child_tells_its_callback_from_a_thread_of_its_own(
        self, emulator: TrackAPIEmulator, told: Told
    ) -> None:
        bridge = cio.configure(**_settings(emulator, told))
        bridge.submit(cap("parent_bad"))
        assert wait_until(lambda: told.reports, WAIT)

        def child() -> object:
            del told.reports[:]
            told.threads.clear()
            bridge.submit(cap("child_bad"))
            arrived = wait_until(lambda: told.reports, WAIT)
            names = [r.name for r in told.reports]
            return {"arrived": arrived, "names": names, "threads": sorted(told.threads)}

        code, result = in_fork(child, timeout=CHILD_TIMEOUT)
        assert code == 0, result
        assert result == {
            "arrived": True,
            "names": ["child_bad"],
            "threads": ["customerio-on-error"],
        }
        assert [r.name for r in told.reports] == ["parent_bad"]  # the parent's own


class TestShutdownLines:
    def test_pending_events_are_said_and_nothing_when_there_are_none(
        self, emulator: TrackAPIEmulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = {
            "site_id": emulator.site_id,
            "api_key": emulator.api_key,
            "track_url": emulator.url,
            "install_signal_handlers": False,
            "flush_interval": 60.0,
        }
        with caplog.at_level(logging.INFO, logger="customerio_logging"):
            bridge = cio.configure(**settings, shutdown_timeout=2.5)
            for i in range(3):
                bridge.submit(snapshot(i))
            bridge.shutdown()
            bridge = cio.configure(**settings)
            bridge.submit(snapshot(4))
            assert bridge.flush(WAIT)
            bridge.shutdown()
        said = [r.getMessage() for r in caplog.records if r.name == "customerio_logging"]
        assert said == ["3 events pending, waiting up to 2.5 s"]
        # At INFO: most exits deliver what is pending at once; WARNING is kept for the
        # line that says something was not delivered.
        assert all(r.levelno == logging.INFO for r in caplog.records)

    def test_what_could_not_be_delivered_is_said_part_by_part(
        self, emulator: TrackAPIEmulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        transport = GatedTransport(Response(200, b"{}"))
        bridge = cio.configure(
            site_id=emulator.site_id,
            api_key=emulator.api_key,
            track_url=emulator.url,
            install_signal_handlers=False,
            flush_interval=60.0,
            spool_path=False,
            transport=transport,
        )
        for i in range(2):
            bridge.submit(snapshot(i))
        bridge.request_flush()
        assert transport.entered.wait(WAIT)  # their request hangs
        for i in range(2, 5):
            bridge.submit(snapshot(i))  # still queued at the deadline
        with caplog.at_level(logging.INFO, logger="customerio_logging"):
            bridge.shutdown(0.3)
        transport.gate.set()
        said = [
            (r.levelno, r.getMessage()) for r in caplog.records if r.name == "customerio_logging"
        ]
        assert said == [
            (logging.INFO, "5 events pending, waiting up to 0.3 s"),
            (
                logging.WARNING,
                "5 events not delivered: 3 dropped, 2 in a request left unanswered",
            ),
        ]


class TestErrorReporter:
    def test_reports_past_the_bound_are_merged_per_kind_and_come_after_the_queue(
        self,
    ) -> None:
        told, entered, release = Told(), threading.Event(), threading.Event()

        def held(report: cio.ErrorReport) -> None:
            told(report)
            entered.set()
            release.wait(WAIT)

        reporter = ErrorReporter(held, warn=lambda message: None, capacity=2)
        reporter.report(cio.ErrorReport("dropped", 1, None, "first"))
        assert entered.wait(WAIT)  # the thread is in the callback: the rest wait
        for kind, reason, message in [
            ("failed", "network_error", "queued 1"),
            ("dropped", None, "queued 2"),
            ("failed", "network_error", "merged 1"),
            ("failed", "rejected", "merged 2"),
            ("dropped", None, "merged alone"),
        ]:
            reporter.report(cio.ErrorReport(kind, 2, reason, message))
        assert not reporter.wait(time.monotonic() + 0.05)  # held: not done in time
        release.set()
        assert reporter.wait(time.monotonic() + WAIT)
        assert told.reports == [
            cio.ErrorReport("dropped", 1, None, "first"),
            cio.ErrorReport("failed", 2, "network_error", "queued 1"),
            cio.ErrorReport("dropped", 2, None, "queued 2"),
            cio.ErrorReport(
                "failed",
                4,
                None,
                "2 reports merged while on_error was behind; the latest: merged 2",
            ),
            cio.ErrorReport("dropped", 2, None, "merged alone"),
        ]
        assert told.threads == {"customerio-on-error"}


class TestACallbackThatMisbehaves:
    """Found by a hostile review: none of these may loop, go silent or hold an exit."""

    def test_a_callback_that_logs_an_event_that_is_dropped_is_not_told_of_it_again(
        self, emulator: TrackAPIEmulator
    ) -> None:
        calls = []
        log = logging.getLogger("on-error-logs")
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(cio.CustomerIOHandler())

        def alert(report: cio.ErrorReport) -> None:
            calls.append(report)
            log.info("cio_problem", extra={"cio_event": True, "user_id": "ops"})

        settings = _settings(emulator, Told(), on_error=alert, spool_path=False)
        bridge = cio.configure(**settings)
        bridge.shutdown()
        log.info("late", extra={"cio_event": True, "user_id": "u1"})  # dropped: told once
        time.sleep(0.5)  # a loop would tell it hundreds of thousands of times by now
        assert len(calls) == 1
        assert cio.stats().dropped == 2  # the late event, and the callback's own

    def test_a_callback_that_calls_sys_exit_is_warned_of_and_later_reports_still_come(
        self, emulator: TrackAPIEmulator
    ) -> None:
        calls = []

        def alert(report: cio.ErrorReport) -> None:
            calls.append(report)
            if len(calls) == 1:
                raise SystemExit(3)

        bridge = cio.configure(**_settings(emulator, Told(), on_error=alert, spool_path=False))
        bridge.shutdown()
        bridge.submit(snapshot(1))  # dropped: the first report, the callback exits
        assert wait_until(lambda: len(calls) == 1, WAIT)
        bridge.submit(snapshot(2))  # dropped: still told
        assert wait_until(lambda: len(calls) == 2, WAIT)

    def test_a_hung_callback_does_not_hold_a_shutdown_with_nothing_pending(
        self, emulator: TrackAPIEmulator
    ) -> None:
        release = threading.Event()
        entered = threading.Event()

        def alert(report: cio.ErrorReport) -> None:
            entered.set()
            release.wait(30)  # a webhook that hangs

        settings = _settings(
            emulator,
            Told(),
            on_error=alert,
            spool_path=False,
            max_queue_size=1,
            batch_size=1,
            flush_interval=60.0,
        )
        settings["api_key"] = emulator.api_key  # accepted: nothing else waits at shutdown
        bridge = cio.configure(**settings)
        try:
            bridge.submit(snapshot(1))
            bridge.submit(snapshot(2))  # queue full: dropped, told, the callback hangs
            assert entered.wait(WAIT)
            began = time.monotonic()
            bridge.shutdown(5.0)
            took = time.monotonic() - began
        finally:
            release.set()
        # Delivering what is queued takes milliseconds; the hung callback gets half a
        # second at most, not the 5 s deadline.
        assert took < 2.5, took

    def test_flush_or_spool_keeps_its_bound_with_a_slow_callback(
        self, tmp_path: Any, emulator: TrackAPIEmulator
    ) -> None:
        def slow(report: cio.ErrorReport) -> None:
            time.sleep(2.0)

        settings = _settings(emulator, Told(), on_error=slow, spool_path=False)
        settings["track_url"] = closed_port_url()
        cio.configure(**settings)
        cio.get_bridge().submit(snapshot(1))
        began = time.monotonic()
        assert cio._global.flush_or_spool(0.2) is False
        took = time.monotonic() - began
        assert took < 0.2 + 0.3, took  # the bound, and the spool's few milliseconds
