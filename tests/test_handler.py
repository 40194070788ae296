"""CustomerIOHandler and CustomerIOProcessor: capture from stdlib and structlog, never raise."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import customerio_logging as cio
from customerio_logging import _global
from customerio_logging._capture import TakenByProcessor
from customerio_logging.testing import TrackAPIEmulator


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"test.{id(object())}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


@pytest.fixture
def structlog_reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class TestHandler:
    def test_tagged_records_arrive_untagged_ones_do_not(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator, logger: logging.Logger
    ) -> None:
        cio.configure(**settings)
        logger.addHandler(cio.CustomerIOHandler())
        logger.info("plan_changed", extra={"cio_event": True, "user_id": "u1", "from_": "free"})
        logger.info("plain line", extra={"user_id": "u2"})
        logger.info("named %s", "x", extra={"cio_event": "custom_name", "email": "a@b.c"})
        logger.info("false tag", extra={"cio_event": False, "user_id": "u3"})
        assert cio.flush(5.0)
        ops = emulator.operations
        assert [(op["name"], op["identifiers"]) for op in ops] == [
            ("plan_changed", {"id": "u1"}),
            ("custom_name", {"email": "a@b.c"}),
        ]
        assert ops[0]["attributes"] == {"from": "free"}
        assert cio.stats().enqueued == 2

    def test_untagged_records_never_touch_the_bridge(self, logger: logging.Logger) -> None:
        # No settings anywhere: building a bridge would fail and be counted.
        logger.addHandler(cio.CustomerIOHandler())
        for _ in range(10):
            logger.info("nothing to see")
        assert cio.stats() == cio.Stats()

    def test_unconfigured_tagged_records_are_counted_and_warned_once(
        self, logger: logging.Logger, caplog: pytest.LogCaptureFixture
    ) -> None:
        logger.addHandler(cio.CustomerIOHandler())
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(3):
                logger.info("evt", extra={"cio_event": True, "user_id": str(i)})
        stats = cio.stats()
        assert stats.dropped >= 3
        assert "CUSTOMERIO_SITE_ID" in (stats.last_error or "")
        assert len([r for r in caplog.records if "not configured" in r.getMessage()]) <= 1

    def test_emit_never_raises_and_reports_through_handle_error(
        self, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Broken:
            def submit(self, capture: object) -> bool:
                raise RuntimeError("bridge bug")

        handler = cio.CustomerIOHandler(bridge=Broken())  # type: ignore[arg-type]
        errors: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", errors.append)
        logger.addHandler(handler)
        logger.info("evt", extra={"cio_event": True, "user_id": "u1"})
        assert len(errors) == 1

    def test_the_record_is_not_mutated(
        self, settings: dict[str, Any], logger: logging.Logger
    ) -> None:
        cio.configure(**settings)
        seen: list[dict[str, Any]] = []

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(dict(record.__dict__))

        logger.addHandler(cio.CustomerIOHandler())
        logger.addHandler(Spy())
        data = {"items": [1, 2]}
        logger.info("evt", extra={"cio_event": True, "user_id": "u1", "data": data})
        assert seen[0]["cio_event"] is True
        assert seen[0]["data"] is data

    def test_a_level_filters_as_for_any_handler(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator, logger: logging.Logger
    ) -> None:
        cio.configure(**settings)
        logger.addHandler(cio.CustomerIOHandler(level="WARNING"))
        logger.info("low", extra={"cio_event": True, "user_id": "u1"})
        logger.warning("high", extra={"cio_event": True, "user_id": "u1"})
        assert cio.flush(5.0)
        assert [op["name"] for op in emulator.operations] == ["high"]

    def test_close_is_idempotent_and_flush_is_bounded(self, settings: dict[str, Any]) -> None:
        cio.configure(**settings)
        handler = cio.CustomerIOHandler()
        handler.flush()
        handler.close()
        handler.close()


class TestProcessor:
    def test_tagged_event_dicts_arrive_with_bound_context(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator, structlog_reset: None
    ) -> None:
        cio.configure(**settings)
        rendered: list[str] = []
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                cio.CustomerIOProcessor(),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.ReturnLoggerFactory(),
        )
        log = structlog.get_logger()
        structlog.contextvars.bind_contextvars(user_id="u9", request_id="r1")
        rendered.append(log.info("plan_changed", cio_event=True, from_="free", to="pro"))
        rendered.append(log.info("untagged", plan="x"))
        assert cio.flush(5.0)
        (op,) = emulator.operations
        assert op["identifiers"] == {"id": "u9"}
        assert op["attributes"] == {"request_id": "r1", "from": "free", "to": "pro"}
        assert '"cio_event": "plan_changed"' in rendered[0]

    def test_the_processor_needs_no_structlog_import(self) -> None:
        event = {"event": "e", "cio_event": True, "user_id": "u1"}
        out = cio.CustomerIOProcessor(bridge=_NullBridge())(None, "info", event)
        assert out is event
        assert type(out["cio_event"]) is TakenByProcessor

    def test_a_processor_failure_never_reaches_the_log_call(self) -> None:
        class Broken:
            def submit(self, capture: object) -> bool:
                raise RuntimeError("bridge bug")

        processor = cio.CustomerIOProcessor(bridge=Broken())  # type: ignore[arg-type]
        event = {"event": "e", "cio_event": True}
        assert processor(None, "info", event) is event
        assert cio.stats().dropped == 1


def _structlog_through_stdlib(logger: logging.Logger, *processors: Any) -> None:
    """structlog set up to hand its events to ``logger`` (stdlib), through ``processors``."""
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            *processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=lambda *args: logger,
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class TestBothInstalled:
    def test_structlog_through_stdlib_is_sent_once(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        logger: logging.Logger,
        structlog_reset: None,
    ) -> None:
        cio.configure(**settings)
        handler = cio.CustomerIOHandler()
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(),
                ]
            )
        )
        logger.addHandler(handler)
        _structlog_through_stdlib(logger, cio.CustomerIOProcessor())
        structlog.get_logger().info("once", cio_event=True, user_id="u1")
        assert cio.flush(5.0)
        assert [op["name"] for op in emulator.operations] == ["once"]

    def test_structlog_through_stdlib_without_the_processor_is_recognised(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        logger: logging.Logger,
        structlog_reset: None,
    ) -> None:
        cio.configure(**settings)
        logger.addHandler(cio.CustomerIOHandler())
        _structlog_through_stdlib(logger)
        structlog.get_logger().info("via_stdlib", cio_event=True, user_id="u1", plan="pro")
        assert cio.flush(5.0)
        (op,) = emulator.operations
        assert (op["name"], op["attributes"]) == ("via_stdlib", {"plan": "pro"})


class _NullBridge:
    def submit(self, capture: object) -> bool:
        return True


class TestNeverTwice:
    def test_two_handlers_on_one_logger_chain_send_once(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        cio.configure(**settings)
        parent = logging.getLogger("twice")
        child = logging.getLogger("twice.app")
        child.setLevel(logging.INFO)
        parent.addHandler(cio.CustomerIOHandler())
        child.addHandler(cio.CustomerIOHandler())
        try:
            child.info("evt", extra={"cio_event": True, "user_id": "u1"})
            assert cio.flush(5.0)
        finally:
            for log in (parent, child):
                for handler in list(log.handlers):
                    log.removeHandler(handler)
        assert len(emulator.operations) == 1
        assert cio.stats().enqueued == 1

    def test_processor_then_handler_count_one_lost_event_once(
        self, logger: logging.Logger, structlog_reset: None
    ) -> None:
        # No settings anywhere: the event is lost, and must be counted once, not twice.
        logger.addHandler(cio.CustomerIOHandler())
        structlog.configure(
            processors=[
                cio.CustomerIOProcessor(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=lambda *args: logger,
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        structlog.get_logger().info("evt", cio_event=True, user_id="u1")
        stats = cio.stats()
        assert (stats.enqueued, stats.dropped) == (1, 1)


class NoTruth:
    """A cio_event value like a numpy array: its truth value cannot be tested."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array is ambiguous")


class TestUnreadableTag:
    """A tag whose truth test raises never makes the log call raise: counted invalid."""

    def test_through_the_handler_and_a_dict_message(
        self,
        settings: dict[str, Any],
        logger: logging.Logger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        bridge = cio.configure(**settings)
        logger.addHandler(cio.CustomerIOHandler())
        logger.info("evt", extra={"cio_event": NoTruth(), "user_id": "u1"})
        logger.info({"event": "evt", "cio_event": NoTruth(), "user_id": "u1"})
        assert cio.flush(5.0)
        stats = cio.stats()
        assert (stats.enqueued, stats.invalid, stats.dropped) == (2, 2, 0)
        assert [(d.reason, d.field) for d in bridge.dead_letters()] == [
            ("invalid_tag", "cio_event")
        ] * 2
        assert "Logging error" not in capsys.readouterr().err

    def test_through_the_processor(self, settings: dict[str, Any]) -> None:
        bridge = cio.configure(**settings)
        event = {"event": "evt", "cio_event": NoTruth(), "user_id": "u1"}
        out = cio.CustomerIOProcessor()(None, "info", event)
        assert type(out["cio_event"]) is TakenByProcessor  # taken: a handler downstream skips it
        assert cio.flush(5.0)
        assert (cio.stats().enqueued, cio.stats().invalid) == (1, 1)
        assert [d.reason for d in bridge.dead_letters()] == ["invalid_tag"]

    def test_untagged_records_still_skip_the_handler(self, logger: logging.Logger) -> None:
        handler = cio.CustomerIOHandler(bridge=_NullBridge())  # type: ignore[arg-type]
        record = logger.makeRecord("x", logging.INFO, "f", 1, "plain", None, None)
        assert handler.handle(record) is False


class TestMalformedSettings:
    """A malformed track_url, or credentials HTTP basic auth cannot send, are refused at
    configuration. A handler-only app builds its bridge from the environment on the first
    tagged call: there the refusal is reported once, not as a traceback per call."""

    @pytest.mark.parametrize(
        ("var", "value"),
        [
            ("CUSTOMERIO_TRACK_URL", "https://[..."),
            ("CUSTOMERIO_TRACK_API_KEY", "sk\u2019live-key"),
            ("CUSTOMERIO_SITE_ID", "site\u2014one"),
        ],
    )
    def test_reported_once_and_counted(
        self,
        var: str,
        value: str,
        logger: logging.Logger,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site-1")
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", "sk-live-key")
        monkeypatch.setenv(var, value)
        logger.addHandler(cio.CustomerIOHandler())
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for i in range(3):
                logger.info("evt", extra={"cio_event": True, "user_id": str(i)})
        assert "Logging error" not in capsys.readouterr().err
        warnings = [r.getMessage() for r in caplog.records if "not configured" in r.getMessage()]
        assert len(warnings) == 1
        assert var in warnings[0]
        assert value not in warnings[0]
        stats = cio.stats()
        assert (stats.enqueued, stats.dropped) == (3, 3)
        assert var in (stats.last_error or "")

    @pytest.mark.parametrize(
        "given",
        [
            {"track_url": "https://[..."},
            {"api_key": "sk\u2019live-SECRET-key"},
            {"site_id": "site\u2014SECRET"},
        ],
    )
    def test_configure_refuses_them_with_a_configuration_error(self, given: dict[str, str]) -> None:
        settings = {"site_id": "site-1", "api_key": "sk-live-SECRET-key", **given}
        with pytest.raises(cio.ConfigurationError) as info:
            cio.configure(**settings)
        assert type(info.value) is cio.ConfigurationError
        assert info.value.setting == next(iter(given))
        assert "SECRET" not in str(info.value)
        assert _global.current_bridge() is None
