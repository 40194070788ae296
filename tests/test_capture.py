"""Snapshot on the app's thread: LogRecords and structlog event dicts -> a Snapshot."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from customerio_logging._capture import (
    Snapshot,
    TakenByProcessor,
    capture_event_dict,
    capture_record,
)
from customerio_logging.processor import CustomerIOProcessor

from .helpers import CREATED, build, cap, capture_through, invalid


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, ListHandler]]:
    logger = logging.getLogger(f"tests.capture.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


class FakeBridge:
    """Stands in for a Bridge: CustomerIOProcessor only calls ``submit``."""

    def __init__(self) -> None:
        self.captures: list[Snapshot] = []

    def submit(self, capture: Snapshot) -> None:
        self.captures.append(capture)


LOGRECORD_ATTRIBUTES = [*sorted(logging.makeLogRecord({}).__dict__), "message", "asctime"]
STRUCTLOG_KEYS = [
    "level",
    "logger",
    "timestamp",
    "exc_info",
    "stack_info",
    "_record",
    "_from_structlog",
    "positional_args",
    "event",
]


class TestCaptureRecord:
    def test_untagged_record_is_ignored(self) -> None:
        assert capture_record(logging.makeLogRecord({"msg": "hello", "user_id": "u1"})) is None

    @pytest.mark.parametrize("tag", [False, None, "", 0])
    def test_falsy_tag_is_ignored(self, tag: object) -> None:
        record = logging.makeLogRecord({"msg": "hello", "cio_event": tag, "user_id": "u1"})
        assert capture_record(record) is None

    def test_captured_marker_is_not_sent_twice(self) -> None:
        record = logging.makeLogRecord({"msg": "signup", "cio_event": TakenByProcessor("signup")})
        assert capture_record(record) is None

    def test_true_tag_takes_the_message(self) -> None:
        record = logging.makeLogRecord(
            {"msg": "plan_changed", "cio_event": True, "user_id": "u1", "created": CREATED}
        )
        capture = capture_record(record)
        assert capture is not None
        assert capture.tag is True
        assert capture.message == "plan_changed"
        assert capture.fields == {"user_id": "u1"}
        assert capture.created == CREATED

    def test_string_tag(self) -> None:
        record = logging.makeLogRecord({"msg": "User signed up", "cio_event": "signup"})
        capture = capture_record(record)
        assert capture is not None
        assert capture.tag == "signup"
        assert capture.message == "User signed up"

    def test_real_logger_with_extra(self, collected: tuple[logging.Logger, ListHandler]) -> None:
        logger, handler = collected
        logger.info(
            "plan %s changed",
            "pro",
            extra={"cio_event": True, "user_id": "u1", "from_": "free", "to": "pro"},
        )
        capture = capture_record(handler.records[-1])
        assert capture is not None
        assert capture.message == "plan pro changed"
        assert capture.fields == {"user_id": "u1", "from_": "free", "to": "pro"}
        assert capture.created == handler.records[-1].created

    def test_logging_own_attributes_are_not_data(
        self, collected: tuple[logging.Logger, ListHandler]
    ) -> None:
        logger, handler = collected
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception(
                "failed %s", "x", stack_info=True, extra={"cio_event": "failure", "user_id": "u"}
            )
        record = handler.records[-1]
        handler.format(record)  # sets record.message (and exc_text), as a real handler would
        record.asctime = "2024-01-01"
        capture = capture_record(record)
        assert capture is not None
        assert capture.fields == {"user_id": "u"}

    @pytest.mark.parametrize("key", LOGRECORD_ATTRIBUTES)
    def test_each_record_attribute_is_excluded(self, key: str) -> None:
        record = logging.makeLogRecord({"msg": "e", "cio_event": True, "user_id": "u"})
        record.__dict__.setdefault(key, "value")
        capture = capture_record(record)
        assert capture is not None
        assert key not in capture.fields

    def test_processor_formatter_extras_are_excluded(self) -> None:
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "_logger": object(), "_name": "info", "user_id": "u"}
        )
        capture = capture_record(record)
        assert capture is not None
        assert capture.fields == {"user_id": "u"}

    def test_cio_action_is_kept_for_build(self) -> None:
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "cio_action": "identify", "user_id": "u"}
        )
        capture = capture_record(record)
        assert capture is not None
        assert capture.fields["cio_action"] == "identify"

    def test_the_record_is_not_mutated(self) -> None:
        tags = ["a", "b"]
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "tags": tags}
        )
        before = dict(record.__dict__)
        capture_record(record)
        assert record.__dict__ == before
        assert record.tags is tags

    def test_dict_message_tagged_on_the_record(self) -> None:
        record = logging.makeLogRecord(
            {"msg": {"some": "dict"}, "cio_event": "dict_msg", "user_id": "u"}
        )
        capture = capture_record(record)
        assert capture is not None
        assert capture.tag == "dict_msg"
        assert capture.fields == {"user_id": "u"}


class TestCaptureStructlogThroughStdlib:
    """structlog's ProcessorFormatter: the event dict arrives as ``record.msg``."""

    @staticmethod
    def wrap(logger: logging.Logger, *processors: Any) -> Any:
        return structlog.wrap_logger(
            logger,
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
                *processors,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    def test_event_dict_in_msg_is_recognised(
        self, collected: tuple[logging.Logger, ListHandler]
    ) -> None:
        logger, handler = collected
        log = self.wrap(logger)
        log.info("plan_changed", cio_event=True, user_id="u1", from_="free", to="pro")
        record = handler.records[-1]
        assert type(record.msg) is dict
        capture = capture_record(record)
        assert capture is not None
        assert capture.tag is True
        assert capture.message == "plan_changed"
        assert capture.fields == {"user_id": "u1", "from_": "free", "to": "pro"}
        assert capture.created == record.created
        body = build(capture)
        assert body["name"] == "plan_changed"
        assert body["identifiers"] == {"id": "u1"}
        assert body["attributes"] == {"from": "free", "to": "pro"}

    def test_untagged_event_dict_is_ignored(
        self, collected: tuple[logging.Logger, ListHandler]
    ) -> None:
        logger, handler = collected
        self.wrap(logger).info("just a log line", user_id="u1")
        assert capture_record(handler.records[-1]) is None

    def test_bound_and_contextvars_count(
        self, collected: tuple[logging.Logger, ListHandler]
    ) -> None:
        logger, handler = collected
        log = self.wrap(logger).bind(request_id="r-1")
        with structlog.contextvars.bound_contextvars(user_id="u9"):
            log.info("checkout", cio_event=True, total=10)
        capture = capture_record(handler.records[-1])
        assert capture is not None
        assert capture.fields == {"request_id": "r-1", "user_id": "u9", "total": 10}

    def test_taken_by_the_processor_is_not_sent_twice(
        self, collected: tuple[logging.Logger, ListHandler]
    ) -> None:
        logger, handler = collected
        bridge = FakeBridge()
        log = self.wrap(logger, CustomerIOProcessor(bridge=bridge))  # type: ignore[arg-type]
        log.info("plan_changed", cio_event=True, user_id="u1")
        assert len(bridge.captures) == 1
        record = handler.records[-1]
        assert type(record.msg["cio_event"]) is TakenByProcessor
        assert capture_record(record) is None

    def test_processor_capture_is_the_same_event(self) -> None:
        bridge = FakeBridge()
        processor = CustomerIOProcessor(bridge=bridge)  # type: ignore[arg-type]
        event_dict = {"event": "signup", "cio_event": True, "user_id": "u1", "level": "info"}
        out = processor(None, "info", event_dict)
        assert out["cio_event"] == "signup"
        assert capture_event_dict(out) is None  # a second processor does not take it again
        (capture,) = bridge.captures
        assert build(capture)["name"] == "signup"


class TestCaptureEventDict:
    def test_untagged(self) -> None:
        assert capture_event_dict({"event": "hello", "user_id": "u1"}) is None

    @pytest.mark.parametrize("tag", [False, None, "", 0])
    def test_falsy_tag(self, tag: object) -> None:
        assert capture_event_dict({"event": "hello", "cio_event": tag}) is None

    def test_captured_marker(self) -> None:
        assert capture_event_dict({"event": "x", "cio_event": TakenByProcessor("x")}) is None

    def test_true_tag(self) -> None:
        before = time.time()
        capture = capture_event_dict({"event": "plan_changed", "cio_event": True, "to": "pro"})
        after = time.time()
        assert capture is not None
        assert capture.tag is True
        assert capture.message == "plan_changed"
        assert capture.fields == {"to": "pro"}
        assert before <= capture.created <= after

    def test_string_tag(self) -> None:
        capture = capture_event_dict({"event": "User signed up", "cio_event": "signup"})
        assert capture is not None
        assert build(capture._replace(fields={"user_id": "u"}))["name"] == "signup"

    def test_structlog_keys_are_not_data(self) -> None:
        event_dict: dict[str, Any] = {key: "x" for key in STRUCTLOG_KEYS}
        event_dict.update(cio_event=True, user_id="u1", plan="pro")
        capture = capture_event_dict(event_dict)
        assert capture is not None
        assert capture.fields == {"user_id": "u1", "plan": "pro"}

    def test_the_event_dict_is_not_mutated(self) -> None:
        event_dict = {"event": "e", "cio_event": True, "items": [1, 2]}
        snapshot = json.dumps(event_dict)
        capture_event_dict(event_dict)
        assert json.dumps(event_dict) == snapshot


class TestSnapshot:
    def test_list_mutated_after_capture(self) -> None:
        items = [1, 2]
        nested = {"a": [1]}
        capture = capture_event_dict(
            {"event": "e", "cio_event": True, "user_id": "u", "items": items, "nested": nested}
        )
        assert capture is not None
        items.append(3)
        nested["a"].append(2)
        nested["b"] = 1
        assert build(capture)["attributes"] == {"items": [1, 2], "nested": {"a": [1]}}

    def test_record_values_mutated_after_capture(self) -> None:
        items = [{"sku": "a"}]
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "items": items}
        )
        capture = capture_record(record)
        assert capture is not None
        items[0]["sku"] = "changed"
        items.append({"sku": "b"})
        assert build(capture)["attributes"] == {"items": [{"sku": "a"}]}

    def test_event_dict_changed_after_capture(self) -> None:
        event_dict: dict[str, Any] = {"event": "e", "cio_event": True, "user_id": "u"}
        capture = capture_event_dict(event_dict)
        assert capture is not None
        event_dict["late"] = 1
        event_dict["user_id"] = "other"
        assert build(capture)["identifiers"] == {"id": "u"}
        assert "attributes" not in build(capture)

    def test_build_does_not_consume_the_capture(self) -> None:
        capture = cap(user_id="u", cio_action="event", tags=("a",))
        first = build(capture)
        second = build(capture)
        assert capture.fields == {"user_id": "u", "cio_action": "event", "tags": ("a",)}
        assert {k: v for k, v in first.items() if k != "id"} == {
            k: v for k, v in second.items() if k != "id"
        }


class NoTruth:
    """A tag like a numpy array: its truth value cannot be tested."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array is ambiguous")


class TestUnreadableTag:
    @pytest.mark.parametrize("through", ["record", "event_dict", "dict_message"])
    def test_taken_then_invalid_with_a_reason(self, through: str) -> None:
        fields = {"cio_event": NoTruth(), "user_id": "u"}
        capture = capture_through(through, fields)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("invalid_tag", "cio_event")
        assert "NoTruth" in str(error)


class TestSnapshotProperties:
    @settings(max_examples=100, deadline=None)
    @given(items=st.lists(st.integers(), max_size=10), extra=st.integers())
    def test_snapshot_is_taken_at_capture(self, items: list[int], extra: int) -> None:
        original = list(items)
        capture = capture_event_dict(
            {"event": "e", "cio_event": True, "user_id": "u", "items": items}
        )
        assert capture is not None
        items.append(extra)
        items.reverse()
        assert build(capture)["attributes"] == {"items": original}
