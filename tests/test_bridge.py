"""The bridge end to end against the emulator: configure, deliver, account, shut down."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging import _global, _ownlog
from customerio_logging._capture import Snapshot
from customerio_logging._limits import BATCH_BODY_BYTES
from customerio_logging._wire import Response
from customerio_logging.testing import MockTransport, TrackAPIEmulator

from .helpers import (
    CHILD_TIMEOUT,
    GatedTransport,
    balanced,
    closed_port_url,
    in_fork,
    snapshot,
    wait_until,
)

SECRET = "sk_live_DO_NOT_LEAK_42"


class TestConfigure:
    def test_configure_builds_the_shared_bridge_and_starts_its_thread(
        self, settings: dict[str, Any]
    ) -> None:
        bridge = cio.configure(**settings)
        assert cio.get_bridge() is bridge
        assert bridge.thread is not None
        assert bridge.thread.is_alive()
        assert bridge.thread.name == "customerio-dispatch"

    def test_get_bridge_builds_from_the_environment(
        self, emulator: TrackAPIEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", emulator.site_id)
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", emulator.api_key)
        monkeypatch.setenv("CUSTOMERIO_TRACK_URL", emulator.url)
        bridge = cio.get_bridge()
        assert cio.get_bridge() is bridge
        assert bridge.settings.track_url == emulator.url

    def test_get_bridge_without_settings_names_what_to_set(self) -> None:
        with pytest.raises(cio.ConfigurationError, match="CUSTOMERIO_SITE_ID"):
            cio.get_bridge()

    def test_reconfiguring_flushes_the_old_bridge_first(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        old = cio.configure(**{**settings, "flush_interval": 60.0})
        old.submit(snapshot(1))
        new = cio.configure(**settings)
        assert new is not old
        assert len(emulator.operations) == 1
        assert old.stats().sent == 1

    def test_the_client_is_the_official_one_with_its_retries_off(
        self, settings: dict[str, Any]
    ) -> None:
        from customerio import CustomerIO

        bridge = cio.configure(**settings)
        assert isinstance(bridge.client, CustomerIO)
        assert bridge.client.retries == 0

    def test_functions_without_a_bridge_are_harmless(self) -> None:
        assert cio.flush(0.1) is True
        cio.shutdown(0.1)
        assert cio.stats() == cio.Stats()


class TestDelivery:
    def test_events_arrive_in_multi_op_batches_with_their_data(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**{**settings, "batch_size": 50, "flush_interval": 60.0})
        for i in range(120):
            assert bridge.submit(snapshot(i, from_="free", to="pro"))
        assert cio.flush(10.0)
        ops = emulator.operations
        assert len(ops) == 120
        assert [r.op_count for r in emulator.requests] == [50, 50, 20]
        first = ops[0]
        assert first["identifiers"] == {"id": "u0"}
        assert first["attributes"] == {"from": "free", "to": "pro"}
        assert first["timestamp"] == 1_700_000_000
        stats = cio.stats()
        assert (stats.enqueued, stats.sent, stats.batches, stats.queue_depth) == (120, 120, 3, 0)
        assert balanced(stats)

    def test_bodies_stay_under_the_byte_limit(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**{**settings, "batch_size": 1000, "max_queue_size": 1000})
        blob = "x" * 20_000
        for i in range(60):
            bridge.submit(snapshot(i, blob=blob))
        assert bridge.flush(20.0)
        assert len(emulator.operations) == 60
        assert len(emulator.requests) >= 3
        assert all(r.body_bytes <= BATCH_BODY_BYTES for r in emulator.requests)

    def test_a_lone_event_goes_after_flush_interval_without_flush(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**settings)
        bridge.submit(snapshot(1))
        assert emulator.wait_for_operations(1, timeout=5.0)

    def test_invalid_events_are_counted_with_their_reason_and_others_still_go(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**settings)
        bridge.submit(snapshot(1))
        bridge.submit(Snapshot(True, "no_person", {"plan": "pro"}, 1.0))
        bridge.submit(snapshot(2, bad=object()))
        assert bridge.flush(5.0)
        stats = bridge.stats()
        assert (stats.sent, stats.invalid) == (1, 2)
        reasons = {(d.name, d.reason, d.field) for d in bridge.dead_letters()}
        assert reasons == {
            ("no_person", "missing_identifier", "identifiers"),
            ("plan_changed", "unsupported_value", "attributes.bad"),
        }
        assert balanced(stats)

    def test_207_fails_only_the_named_operations(self, settings: dict[str, Any]) -> None:
        errors = {
            "errors": [
                {"batch_index": 1, "reason": "invalid", "field": "name", "message": "bad name"}
            ]
        }
        transport = MockTransport(Response(207, {}, json.dumps(errors).encode()))
        bridge = cio.configure(**settings, transport=transport)
        for i in range(3):
            bridge.submit(snapshot(i))
        assert bridge.flush(5.0) is False  # one operation was refused
        stats = bridge.stats()
        assert (stats.sent, stats.dead_lettered, len(transport.bodies)) == (2, 1, 1)
        assert (stats.failed, stats.spooled) == (0, 0)
        (letter,) = bridge.dead_letters()
        assert (letter.reason, letter.field, letter.message) == ("invalid", "name", "bad name")
        sent_ids = [op["id"] for op in json.loads(transport.bodies[0])["batch"]]
        assert letter.id == sent_ids[1]
        assert "207" in (stats.last_error or "")

    @pytest.mark.parametrize(
        ("answer", "reason", "words", "counter"),
        [
            (
                Response(400, {}, b'{"errors":[{"reason":"bad","message":"nope"}]}'),
                "http_400",
                "HTTP 400",
                "dead_lettered",  # refused for good: sending again cannot help
            ),
            (Response(500, {}, b"oops"), "http_500", "HTTP 500", "failed"),
            (
                cio.DeliveryError("no response from host: ConnectionError"),
                "network_error",
                "no response",
                "failed",
            ),
            (RuntimeError("transport bug"), "internal_error", "RuntimeError", "failed"),
        ],
    )
    def test_without_a_spool_a_failed_batch_is_counted_with_its_reason(
        self,
        settings: dict[str, Any],
        answer: Response | Exception,
        reason: str,
        words: str,
        counter: str,
    ) -> None:
        # max_retries=0: the answer is final at once (retries are tested in TestRetries).
        bridge = cio.configure(
            **settings, transport=MockTransport(answer), max_retries=0, spool_path=False
        )
        for i in range(4):
            bridge.submit(snapshot(i))
        assert bridge.flush(5.0) is False
        stats = bridge.stats()
        assert (stats.sent, getattr(stats, counter), stats.spooled) == (0, 4, 0)
        assert words in (stats.last_error or "")
        assert {d.reason for d in bridge.dead_letters()} == {reason}
        assert balanced(stats)

    def test_refused_credentials_hold_the_events_and_say_so_without_the_key(
        self, emulator: TrackAPIEmulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        bridge = cio.configure(
            site_id=emulator.site_id,
            api_key=SECRET,
            track_url=emulator.url,
            flush_interval=0.05,
            spool_path=False,
        )
        for i in range(3):
            bridge.submit(snapshot(i))
        # The batch is held, not failed: the flush cannot finish.
        assert bridge.flush(0.5) is False
        stats = bridge.stats()
        assert (stats.failed, stats.queue_depth) == (0, 3)
        assert "refused the credentials" in (stats.last_error or "")
        assert "CUSTOMERIO_TRACK_API_KEY" in (stats.last_error or "")
        # One clear warning, on the app's side, at the next log call.
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            bridge.submit(snapshot(3))
            bridge.submit(snapshot(4))
        assert len([r for r in caplog.records if "refused the credentials" in r.message]) == 1
        # No tight loop: one request, however long we wait.
        assert len(emulator.requests) == 1
        bridge.shutdown(0.2)
        stats = bridge.stats()
        assert stats.failed + stats.dropped == 5
        assert balanced(stats)
        everything = (
            repr(stats) + repr(bridge) + repr(bridge.dead_letters()) + repr(bridge.settings)
        )
        assert SECRET not in everything + caplog.text

    def test_an_unreachable_api_is_a_counted_network_error(self) -> None:
        bridge = cio.configure(
            site_id="s",
            api_key=SECRET,
            track_url=closed_port_url(),
            flush_interval=0.05,
            request_timeout=2.0,
            max_retries=0,
            spool_path=False,
        )
        bridge.submit(snapshot(1))
        assert bridge.flush(5.0) is False
        stats = bridge.stats()
        assert stats.failed == 1
        assert "no response" in (stats.last_error or "")
        assert SECRET not in repr(stats) + repr(bridge.dead_letters())

    def test_many_threads_logging_at_once_lose_nothing(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**{**settings, "batch_size": 100})

        def work(t: int) -> None:
            for i in range(500):
                bridge.submit(snapshot(t * 1000 + i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bridge.flush(20.0)
        ids = [op["id"] for op in emulator.operations]
        assert len(ids) == len(set(ids)) == 4000
        stats = bridge.stats()
        assert (stats.enqueued, stats.sent) == (4000, 4000)


class TestQueueFull:
    def test_a_full_queue_drops_and_counts_without_blocking(self, settings: dict[str, Any]) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(
            **{**settings, "batch_size": 1, "max_queue_size": 10},
            transport=transport,
            on_full="drop",
        )
        results = [bridge.submit(snapshot(i)) for i in range(100)]
        assert results.count(False) >= 80
        stats = bridge.stats()
        assert stats.dropped == results.count(False)
        assert "queue is full" in (stats.last_error or "")
        transport.gate.set()
        assert bridge.flush(5.0)
        stats = bridge.stats()
        assert stats.enqueued == 100
        assert balanced(stats)


class TestShutdown:
    def test_shutdown_delivers_then_refuses_and_is_idempotent(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**{**settings, "flush_interval": 60.0}, spool_path=False)
        for i in range(10):
            bridge.submit(snapshot(i))
        cio.shutdown(5.0)
        cio.shutdown(5.0)
        assert len(emulator.operations) == 10
        assert bridge.thread is not None
        assert not bridge.thread.is_alive()
        assert bridge.submit(snapshot(99)) is False
        stats = bridge.stats()
        assert (stats.sent, stats.dropped) == (10, 1)
        assert "shut down" in (stats.last_error or "")
        assert bridge.flush(5.0) is True

    def test_without_a_spool_what_the_deadline_cuts_off_is_counted_dropped(
        self, settings: dict[str, Any]
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(
            **{**settings, "batch_size": 1}, transport=transport, spool_path=False
        )
        for i in range(5):
            bridge.submit(snapshot(i))
        bridge.shutdown(0.2)
        stats = bridge.stats()
        assert stats.dropped >= 3
        assert "shutdown" in (stats.last_error or "")
        transport.gate.set()

    def test_a_child_forked_while_the_parent_shuts_down_refuses_its_events(
        self, settings: dict[str, Any]
    ) -> None:
        # The parent's shutdown is still flushing (its dispatcher not yet closed) at the
        # fork: the child's bridge is shut down too, so an event logged there is counted
        # dropped at once, not queued for a thread that will never start.
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**settings, transport=transport, spool_path=False)
        bridge.submit(snapshot(0))
        assert transport.entered.wait(5.0)
        stopper = threading.Thread(target=bridge.shutdown, args=(5.0,))
        stopper.start()
        try:
            assert wait_until(lambda: "shut down" in repr(bridge), 5.0)

            def child() -> object:
                accepted = bridge.submit(snapshot(1))
                stats = bridge.stats()
                return [accepted, stats.dropped, stats.queue_depth, stats.last_error]

            code, result = in_fork(child, timeout=CHILD_TIMEOUT)
        finally:
            transport.gate.set()
            stopper.join(10.0)
        assert (code, result) == (0, [False, 1, 0, "event dropped: the bridge is shut down"])


class TestUnknownEvents:
    class Known(cio.Event, name="known"):
        plan: str

    def test_warn_logs_once_per_unknown_name_and_sends(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        bridge = cio.configure(**settings, events=[self.Known], unknown_events="warn")
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(3):
                bridge.submit(Snapshot("mystery", None, {"user_id": f"u{i}"}, 1.0))
            assert bridge.flush(5.0)
        assert len(emulator.operations) == 3
        warnings = [r for r in caplog.records if "mystery" in r.getMessage()]
        assert len(warnings) == 1

    def test_warned_names_are_bounded_in_length_and_number(
        self,
        settings: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setattr(_ownlog, "UNKNOWN_NAMES_KEPT", 5)
        bridge = cio.configure(
            **settings, events=[self.Known], unknown_events="warn", transport=MockTransport()
        )
        huge = [f"{i}" + "x" * 1_000_000 for i in range(20)]
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for name in huge:  # too long to be a name: invalid, and neither kept nor warned
                bridge.submit(Snapshot(name, None, {"user_id": "u"}, 1.0))
            for i in range(8):
                bridge.submit(Snapshot(f"mystery{i}", None, {"user_id": "u"}, 1.0))
        warnings = [r.getMessage() for r in caplog.records if "not declared" in r.getMessage()]
        assert [w.split("'")[1] for w in warnings] == [f"mystery{i}" for i in range(5)]
        assert "no more will be" in warnings[-1]
        assert sum(map(len, bridge._unknown.warned)) < 100
        assert bridge.flush(5.0)
        assert bridge.stats().invalid == len(huge)

    def test_reject_counts_unknown_events_invalid(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**settings, events=[self.Known], unknown_events="reject")
        bridge.submit(Snapshot("mystery", None, {"user_id": "u1"}, 1.0))
        bridge.submit(Snapshot("known", None, {"user_id": "u1", "plan": "pro"}, 1.0))
        assert bridge.flush(5.0)
        assert [op["name"] for op in emulator.operations] == ["known"]
        assert [d.reason for d in bridge.dead_letters()] == ["unknown_event"]


def test_forget_bridge_helper_is_reset_between_tests() -> None:
    assert _global.current_bridge() is None


class TestReviewFindings:
    """Regressions found in review: each once lost, double-counted or stalled events."""

    def test_after_a_timed_out_shutdown_every_event_is_still_accounted(
        self, settings: dict[str, Any]
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**{**settings, "batch_size": 5}, transport=transport)
        for i in range(50):
            bridge.submit(snapshot(i))
        bridge.shutdown(0.2)
        stats = bridge.stats()
        assert stats.enqueued == 50
        assert balanced(stats)
        transport.gate.set()

    def test_flush_defaults_to_the_configured_shutdown_timeout(
        self, settings: dict[str, Any]
    ) -> None:
        import time

        transport = GatedTransport(Response(200))
        cio.configure(**{**settings, "shutdown_timeout": 0.2}, transport=transport)
        cio.get_bridge().submit(snapshot(1))
        started = time.monotonic()
        assert cio.flush() is False
        assert time.monotonic() - started < 2.0
        transport.gate.set()

    def test_the_handlers_flush_never_waits_for_delivery(self, settings: dict[str, Any]) -> None:
        import time

        transport = GatedTransport(Response(200))
        bridge = cio.configure(**{**settings, "flush_interval": 60.0}, transport=transport)
        bridge.submit(snapshot(1))
        started = time.monotonic()
        cio.CustomerIOHandler().flush()
        assert time.monotonic() - started < 0.5
        # It did ask: the partial batch goes without waiting for the 60 s interval.
        transport.gate.set()
        assert bridge.flush(5.0)
        assert len(transport.bodies) == 1

    def test_invalid_events_keep_no_more_than_a_name_of_their_message(
        self, settings: dict[str, Any]
    ) -> None:
        bridge = cio.configure(**settings)
        message = "card 4111111111111111 " + "x" * 200_000
        bridge.submit(Snapshot(True, message, {"user_id": "u1"}, 1.0))
        bridge.submit(
            Snapshot(True, "e", {"user_id": "u1", "cio_action": "token=SECRET" * 10}, 1.0)
        )
        assert bridge.flush(5.0)
        first, second = bridge.dead_letters()
        assert first.reason == "name_too_long"
        assert len(first.name or "") <= 100
        assert len(first.message) <= 300
        stats = bridge.stats()
        assert len(stats.last_error or "") < 500
        assert second.reason == "invalid_action"
        assert ("token=SECRET" * 2) not in second.message

    def test_concurrent_configure_never_returns_a_bridge_that_never_ran(
        self, settings: dict[str, Any]
    ) -> None:
        returned: list[cio.Bridge] = []

        def configure() -> None:
            returned.append(cio.configure(**settings))

        threads = [threading.Thread(target=configure) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(bridge.thread is not None for bridge in returned)
        live = cio.get_bridge()
        assert live in returned
        assert live.thread is not None
        assert live.thread.is_alive()

    def test_urllib3_records_from_the_dispatch_thread_stay_out_of_app_handlers(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        seen: list[logging.LogRecord] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        root = logging.getLogger()
        handler, level = Collect(), root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            bridge = cio.configure(**settings)
            bridge.submit(snapshot(1))
            assert bridge.flush(5.0)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        assert len(emulator.operations) == 1
        assert [r.name for r in seen if r.threadName == "customerio-dispatch"] == []


class TestSecondReview:
    def test_a_thread_still_sending_at_the_deadline_ends_when_its_send_returns(
        self, settings: dict[str, Any]
    ) -> None:
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**{**settings, "batch_size": 1}, transport=transport)
        bridge.submit(snapshot(1))
        bridge.shutdown(0.1)
        thread = bridge.thread
        assert thread is not None
        transport.gate.set()
        thread.join(5.0)
        assert not thread.is_alive()

    def test_refused_credentials_are_warned_at_flush_without_another_event(
        self, emulator: TrackAPIEmulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        bridge = cio.configure(
            site_id=emulator.site_id, api_key=SECRET, track_url=emulator.url, flush_interval=0.05
        )
        bridge.submit(snapshot(1))
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            assert bridge.flush(0.5) is False
        assert [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert SECRET not in caplog.text
