"""Capture: LogRecords and structlog event dicts -> Capture -> a Track API operation."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, field_serializer
from ulid import ULID

from customerio_logging._capture import (
    Capture,
    Captured,
    build_operation,
    capture_event_dict,
    capture_record,
    encode,
)
from customerio_logging._limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_IDENTIFY_ATTRIBUTES,
    MAX_NAME_BYTES,
    MAX_OPERATION_BYTES,
    NAMED_ACTIONS,
    PERSON_ACTIONS,
)
from customerio_logging._schema import Event, Taxonomy
from customerio_logging._wire import Operation
from customerio_logging.exceptions import InvalidEventError
from customerio_logging.processor import CustomerIOProcessor

CREATED = 1_700_000_000.75  # 2023-11-14T22:13:20.750Z, far from "now"


def cap(
    tag: object = "evt", *, message: object = "msg", created: float = CREATED, **fields: Any
) -> Capture:
    return Capture(tag, message, fields, created)


def build(capture: Capture, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    op = build_operation(capture, taxonomy or Taxonomy())
    decoded = json.loads(op.body)
    assert isinstance(decoded, dict)
    return decoded


def attributes(**fields: Any) -> Any:
    """The attributes an event with these fields (and user_id u1) is sent with."""
    return build(cap(user_id="u1", **fields)).get("attributes")


def outcome(capture: Capture) -> Operation | InvalidEventError:
    """The operation, or the InvalidEventError that refused it; anything else escapes."""
    try:
        return build_operation(capture, Taxonomy())
    except InvalidEventError as error:
        return error


def _any_action(action: str) -> Operation:
    """An operation of ``action`` from a capture that carries what every action needs."""
    return build_operation(
        cap(
            user_id="u",
            cio_action=action,
            device_token="t",
            platform="ios",
            primary="a",
            secondary="b",
        ),
        Taxonomy(),
    )


def invalid(capture: Capture, taxonomy: Taxonomy | None = None) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        build_operation(capture, taxonomy or Taxonomy())
    return info.value


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
        self.captures: list[Capture] = []

    def submit(self, capture: Capture) -> None:
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
        record = logging.makeLogRecord({"msg": "signup", "cio_event": Captured("signup")})
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
        assert type(record.msg["cio_event"]) is Captured
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
        assert capture_event_dict({"event": "x", "cio_event": Captured("x")}) is None

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


class TestEventName:
    def test_from_message(self) -> None:
        assert build(cap(True, message="plan_changed", user_id="u"))["name"] == "plan_changed"

    def test_from_tag(self) -> None:
        assert build(cap("signup", message="User signed up", user_id="u"))["name"] == "signup"

    def test_stripped(self) -> None:
        assert build(cap("  signup \n", user_id="u"))["name"] == "signup"

    @pytest.mark.parametrize(
        ("tag", "message"), [(True, ""), (True, "   "), (True, None), (True, 42), ("  ", "x")]
    )
    def test_missing(self, tag: object, message: object) -> None:
        error = invalid(cap(tag, message=message, user_id="u"))
        assert error.reason == "missing_name"
        assert error.field == "name"

    @pytest.mark.parametrize(
        ("name", "ok"),
        [
            ("x" * MAX_NAME_BYTES, True),
            ("x" * (MAX_NAME_BYTES + 1), False),
            ("é" * (MAX_NAME_BYTES // 2), True),
            ("é" * (MAX_NAME_BYTES // 2 + 1), False),
            ("€" * 34, False),  # 102 bytes in 34 characters
        ],
    )
    def test_length_in_bytes(self, name: str, ok: bool) -> None:
        for capture in (cap(name, user_id="u"), cap(True, message=name, user_id="u")):
            if ok:
                assert build(capture)["name"] == name
            else:
                error = invalid(capture)
                assert error.reason == "name_too_long"
                assert error.field == "name"

    @pytest.mark.parametrize("action", sorted(NAMED_ACTIONS))
    def test_every_named_action_checks_the_name(self, action: str) -> None:
        error = invalid(cap("x" * 101, user_id="u", cio_action=action))
        assert error.reason == "name_too_long"


class TestIdentifiers:
    @pytest.mark.parametrize(
        ("fields", "identifiers", "left"),
        [
            ({"user_id": "u1"}, {"id": "u1"}, {}),
            ({"customer_id": "c1"}, {"id": "c1"}, {}),
            ({"user_id": 42}, {"id": "42"}, {}),
            ({"customer_id": 7}, {"id": "7"}, {}),
            ({"user_id": "u1", "customer_id": "c1"}, {"id": "u1"}, {}),
            ({"user_id": None, "customer_id": "c1"}, {"id": "c1"}, {}),
            ({"email": "a@example.com"}, {"email": "a@example.com"}, {}),
            ({"cio_id": "cio_1"}, {"cio_id": "cio_1"}, {}),
            ({"user_id": "u1", "email": "a@b.c"}, {"id": "u1"}, {"email": "a@b.c"}),
            ({"email": "a@b.c", "cio_id": "c"}, {"email": "a@b.c"}, {"cio_id": "c"}),
            ({"email": None, "cio_id": "c"}, {"cio_id": "c"}, {"email": None}),
            ({"anonymous_id": "anon"}, {"anonymous_id": "anon"}, {}),
            ({"user_id": "u", "anonymous_id": "a"}, {"id": "u"}, {"anonymous_id": "a"}),
            (
                {"user_id": uuid.UUID(int=1)},
                {"id": "00000000-0000-0000-0000-000000000001"},
                {},
            ),
        ],
    )
    def test_who(
        self, fields: dict[str, Any], identifiers: dict[str, str], left: dict[str, Any]
    ) -> None:
        body = build(cap(**fields))
        assert body["identifiers"] == identifiers
        assert body.get("attributes", {}) == left

    @pytest.mark.parametrize("action", sorted(NAMED_ACTIONS))
    def test_anonymous_for_named_actions(self, action: str) -> None:
        body = build(cap(anonymous_id="anon-1", cio_action=action))
        assert body["identifiers"] == {"anonymous_id": "anon-1"}

    @pytest.mark.parametrize("action", sorted(PERSON_ACTIONS - NAMED_ACTIONS - {"merge"}))
    def test_not_anonymous_for_other_actions(self, action: str) -> None:
        error = invalid(
            cap(anonymous_id="anon-1", cio_action=action, device_token="t", platform="ios")
        )
        assert error.reason == "missing_identifier"
        assert error.field == "identifiers"

    @pytest.mark.parametrize("action", sorted(PERSON_ACTIONS - {"merge"}))
    def test_missing(self, action: str) -> None:
        error = invalid(cap(plan="pro", cio_action=action, device_token="t", platform="ios"))
        assert error.reason == "missing_identifier"
        assert error.field == "identifiers"

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("user_id", ""),
            ("user_id", "  "),
            ("user_id", True),
            ("user_id", 1.5),
            ("email", ""),
            ("email", ["a@b.c"]),
            ("cio_id", 3.0),
            ("customer_id", b"c1"),
        ],
    )
    def test_bad_identifier(self, key: str, value: object) -> None:
        error = invalid(cap(**{key: value}))
        assert error.reason == "invalid_identifier"
        assert error.field == f"identifiers.{key}"

    @pytest.mark.parametrize("key", ["user_id", "customer_id", "email", "cio_id", "anonymous_id"])
    @pytest.mark.parametrize(
        ("value", "ok"),
        [
            ("x" * MAX_IDENTIFIER_BYTES, True),
            ("x" * (MAX_IDENTIFIER_BYTES + 1), False),
            ("ü" * (MAX_IDENTIFIER_BYTES // 2 + 1), False),
            (10 ** (MAX_IDENTIFIER_BYTES - 1), True),
            (10**MAX_IDENTIFIER_BYTES, False),
        ],
    )
    def test_length_in_bytes(self, key: str, value: object, ok: bool) -> None:
        capture = cap(**{key: value})
        if ok:
            (sent,) = build(capture)["identifiers"].values()
            assert sent == str(value)
        else:
            error = invalid(capture)
            assert error.reason == "identifier_too_long"
            assert error.field is not None
            assert error.field.startswith("identifiers.")


class TestActions:
    def test_event(self) -> None:
        body = build(cap(True, message="plan_changed", user_id="u1", from_="free", to="pro"))
        assert body == {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "event",
            "name": "plan_changed",
            "id": body["id"],
            "timestamp": 1_700_000_000,
            "attributes": {"from": "free", "to": "pro"},
        }

    def test_event_is_the_default_action(self) -> None:
        assert build(cap(user_id="u"))["action"] == "event"
        assert build(cap(user_id="u", cio_action="event"))["action"] == "event"

    def test_no_attributes_key_when_there_is_no_data(self) -> None:
        assert "attributes" not in build(cap(user_id="u"))

    def test_operation_fields(self) -> None:
        op = build_operation(cap("signup", user_id="u"), Taxonomy())
        assert isinstance(op, Operation)
        assert op.action == "event"
        assert op.name == "signup"
        assert json.loads(op.body)["id"] == op.id

    @pytest.mark.parametrize("action", ["page", "screen"])
    def test_page_and_screen(self, action: str) -> None:
        body = build(cap(True, message="/pricing", user_id="u1", cio_action=action, ref="ad"))
        assert body == {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": action,
            "name": "/pricing",
            "id": body["id"],
            "timestamp": 1_700_000_000,
            "attributes": {"ref": "ad"},
        }

    def test_identify(self) -> None:
        op = build_operation(
            cap(user_id="u1", cio_action="identify", email="a@b.c", plan="pro"), Taxonomy()
        )
        assert op.action == "identify"
        assert op.name is None
        assert json.loads(op.body) == {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "identify",
            "timestamp": 1_700_000_000,
            "attributes": {"email": "a@b.c", "plan": "pro"},
        }

    def test_identify_without_attributes(self) -> None:
        assert build(cap(email="a@b.c", cio_action="identify")) == {
            "type": "person",
            "identifiers": {"email": "a@b.c"},
            "action": "identify",
            "timestamp": 1_700_000_000,
        }

    @pytest.mark.parametrize("action", ["suppress", "unsuppress", "delete"])
    def test_person_only_actions(self, action: str) -> None:
        op = build_operation(cap(user_id="u1", cio_action=action, reason="asked"), Taxonomy())
        assert op.action == action
        assert op.name is None
        assert json.loads(op.body) == {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": action,
        }

    def test_add_device(self) -> None:
        body = build(
            cap(
                user_id="u1",
                cio_action="add_device",
                device_token="tok",
                platform="ios",
                app_version="1.2",
            )
        )
        assert body == {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "add_device",
            "device": {
                "token": "tok",
                "platform": "ios",
                "last_used": 1_700_000_000,
                "attributes": {"app_version": "1.2"},
            },
        }

    @pytest.mark.parametrize(
        ("last_used", "expected"),
        [
            (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 1_704_067_200),
            (dt.datetime(2024, 1, 1), 1_704_067_200),
            (1_600_000_000, 1_600_000_000),
        ],
    )
    def test_add_device_last_used(self, last_used: object, expected: int) -> None:
        body = build(
            cap(
                user_id="u",
                cio_action="add_device",
                device_token="t",
                platform="android",
                last_used=last_used,
            )
        )
        assert body["device"] == {"token": "t", "platform": "android", "last_used": expected}

    @pytest.mark.parametrize("key", ["device_token", "token", "device_id"])
    def test_device_token_aliases(self, key: str) -> None:
        body = build(cap(user_id="u", cio_action="delete_device", **{key: "tok"}))
        assert body["device"] == {"token": "tok"}

    def test_device_token_wins_over_its_aliases(self) -> None:
        body = build(
            cap(
                user_id="u",
                cio_action="add_device",
                device_token="push-token",
                token="other",
                device_id="internal-id",
                platform="ios",
            )
        )
        assert body["device"]["token"] == "push-token"
        assert "attributes" not in body["device"]

    @pytest.mark.parametrize("action", ["add_device", "delete_device"])
    @pytest.mark.parametrize("token", [None, "", 123])
    def test_device_without_token(self, action: str, token: object) -> None:
        error = invalid(cap(user_id="u", cio_action=action, device_token=token, platform="ios"))
        assert error.reason == "missing_device"
        assert error.field == "device.token"

    @pytest.mark.parametrize("platform", [None, "windows", "IOS", 1])
    def test_add_device_platform(self, platform: object) -> None:
        error = invalid(
            cap(user_id="u", cio_action="add_device", device_token="t", platform=platform)
        )
        assert error.reason == "invalid_device"
        assert error.field == "device.platform"

    def test_delete_device(self) -> None:
        body = build(
            cap(email="a@b.c", cio_action="delete_device", device_token="tok", platform="ios")
        )
        assert body == {
            "type": "person",
            "identifiers": {"email": "a@b.c"},
            "action": "delete_device",
            "device": {"token": "tok"},
        }

    @pytest.mark.parametrize(
        ("primary", "secondary", "expected_primary", "expected_secondary"),
        [
            ("u1", "u2", {"id": "u1"}, {"id": "u2"}),
            (1, 2, {"id": "1"}, {"id": "2"}),
            ({"email": "a@b.c"}, {"cio_id": "c9"}, {"email": "a@b.c"}, {"cio_id": "c9"}),
        ],
    )
    def test_merge(
        self,
        primary: object,
        secondary: object,
        expected_primary: dict[str, str],
        expected_secondary: dict[str, str],
    ) -> None:
        op = build_operation(
            cap(cio_action="merge", primary=primary, secondary=secondary), Taxonomy()
        )
        assert op.action == "merge"
        assert op.name is None
        assert json.loads(op.body) == {
            "type": "person",
            "action": "merge",
            "primary": expected_primary,
            "secondary": expected_secondary,
        }

    @pytest.mark.parametrize(
        ("primary", "secondary", "field"),
        [
            (None, "u2", "primary"),
            ("u1", None, "secondary"),
            ({"id": "a", "email": "b"}, "u2", "primary"),
            ({}, "u2", "primary"),
            ({"anonymous_id": "x"}, "u2", "primary"),
            ("u1", True, "secondary"),
            ("u1", ["u2"], "secondary"),
        ],
    )
    def test_bad_merge(self, primary: object, secondary: object, field: str) -> None:
        error = invalid(cap(cio_action="merge", primary=primary, secondary=secondary))
        assert error.reason == "invalid_identifier"
        assert error.field == field

    @pytest.mark.parametrize("action", ["track", "EVENT", "", None, 1, "identify "])
    def test_bad_action(self, action: object) -> None:
        error = invalid(cap(user_id="u", cio_action=action))
        assert error.reason == "invalid_action"
        assert error.field == "action"

    @pytest.mark.parametrize("action", sorted(PERSON_ACTIONS))
    def test_every_action_is_compact_json_under_the_limit(self, action: str) -> None:
        op = _any_action(action)
        assert op.action == action
        assert encode(json.loads(op.body)) == op.body
        assert len(op.body) <= MAX_OPERATION_BYTES
        body = json.loads(op.body)
        assert body["type"] == "person"
        assert body["action"] == action
        if action in NAMED_ACTIONS:
            assert body["id"] == op.id
            assert body["timestamp"] == 1_700_000_000
        else:
            assert "id" not in body
            assert "name" not in body


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Size(enum.IntEnum):
    LARGE = 3


class Plan(enum.StrEnum):
    PRO = "pro"


class Address(BaseModel):
    city: str
    since: dt.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Line:
    start: Point
    end: Point


class Label(str):
    pass


NAIVE = dt.datetime(2024, 1, 1, 12, 0, 0)
NAIVE_TS = 1_704_110_400

VALUES: list[tuple[str, object, object]] = [
    ("str", "pro", "pro"),
    ("str subclass", Label("x"), "x"),
    ("int", 3, 3),
    ("bool", True, True),
    ("none", None, None),
    ("float", 1.5, 1.5),
    ("nan", math.nan, None),
    ("inf", math.inf, None),
    ("-inf", -math.inf, None),
    ("naive datetime is UTC", NAIVE, NAIVE_TS),
    (
        "aware datetime",
        dt.datetime(2024, 1, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        NAIVE_TS,
    ),
    ("UTC datetime", NAIVE.replace(tzinfo=dt.UTC), NAIVE_TS),
    ("datetime microseconds dropped", NAIVE.replace(microsecond=999_999), NAIVE_TS),
    ("date", dt.date(2024, 1, 2), "2024-01-02"),
    ("time", dt.time(12, 30), "12:30:00"),
    ("timedelta", dt.timedelta(minutes=1, seconds=30), 90.0),
    ("decimal int", Decimal("10"), 10),
    ("decimal int with exponent", Decimal("1E+3"), 1000),
    ("decimal fraction", Decimal("1.25"), 1.25),
    ("decimal nan", Decimal("NaN"), None),
    ("decimal inf", Decimal("-Infinity"), None),
    ("decimal beyond a float", Decimal("1" * 400 + ".5"), None),
    ("uuid", uuid.UUID(int=255), "00000000-0000-0000-0000-0000000000ff"),
    ("enum", Color.RED, "red"),
    ("enum tuple value", Color.PAIR, [1, 2]),
    ("int enum", Size.LARGE, 3),
    ("str enum", Plan.PRO, "pro"),
    ("path", PurePosixPath("/var/log/app.log"), "/var/log/app.log"),
    ("windows path", PureWindowsPath("C:/x/y.txt"), "C:\\x\\y.txt"),
    ("set", {3, 1, 2}, [1, 2, 3]),
    ("frozenset", frozenset({"b", "a"}), ["a", "b"]),
    ("tuple", (1, "a", None), [1, "a", None]),
    ("empty list", [], []),
    ("empty dict", {}, {}),
    (
        "nested",
        {"a": [1, {"b": NAIVE, "c": (Decimal("2.5"),)}]},
        {"a": [1, {"b": NAIVE_TS, "c": [2.5]}]},
    ),
    (
        "non-str keys",
        {1: "a", 2.5: "b", None: "c", False: "d"},
        {"1": "a", "2.5": "b", "null": "c", "false": "d"},
    ),
    ("nested key underscore kept", {"from_": 1}, {"from_": 1}),
    ("pydantic model", Address(city="Paris", since=NAIVE), {"city": "Paris", "since": NAIVE_TS}),
    ("dataclass", Point(1, 2.5, ("a",)), {"x": 1, "y": 2.5, "tags": ["a"]}),
    (
        "nested dataclass",
        Line(Point(0, 0.0), Point(1, math.inf)),
        {"start": {"x": 0, "y": 0.0, "tags": []}, "end": {"x": 1, "y": None, "tags": []}},
    ),
    ("bytes", "héllo".encode(), "héllo"),
    ("unicode", "日本語 ✓", "日本語 ✓"),
    ("list of models", [Address(city="A", since=NAIVE)], [{"city": "A", "since": NAIVE_TS}]),
]


class TestValues:
    @pytest.mark.parametrize(
        ("value", "expected"), [(v, e) for _, v, e in VALUES], ids=[n for n, _, _ in VALUES]
    )
    def test_conversion(self, value: object, expected: object) -> None:
        assert attributes(value=value) == {"value": expected}

    def test_mixed_set_keeps_every_item(self) -> None:
        (value,) = attributes(value={1, "a", None}).values()
        assert sorted(value, key=repr) == sorted([1, "a", None], key=repr)

    def test_path_object(self) -> None:
        assert attributes(p=Path("logs", "app.log")) == {"p": str(Path("logs", "app.log"))}

    @pytest.mark.parametrize(
        ("key", "sent"),
        [
            ("from_", "from"),
            ("class_", "class"),
            ("type_", "type"),
            ("_", "_"),
            ("__", "_"),
            ("a_b", "a_b"),
            ("_private", "_private"),
        ],
    )
    def test_trailing_underscore(self, key: str, sent: str) -> None:
        assert attributes(**{key: 1}) == {sent: 1}

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"thing": object()}, "attributes.thing"),
            ({"outer": {"inner": object()}}, "attributes.outer.inner"),
            ({"items": [1, object()]}, "attributes.items[1]"),
            ({"fn": len}, "attributes.fn"),
            ({"cls": int}, "attributes.cls"),
            ({"ba": bytearray(b"x")}, "attributes.ba"),
            ({"complex": 1j}, "attributes.complex"),
            ({"bad_bytes": b"\xff\xfe"}, "attributes.bad_bytes"),
            ({"key": {(1, 2): "tuple key"}}, "attributes.key"),
        ],
    )
    def test_unsupported(self, fields: dict[str, Any], field: str) -> None:
        error = invalid(cap(user_id="u", **fields))
        assert error.reason == "unsupported_value"
        assert error.field == field
        assert field.removeprefix("attributes.").split(".")[0].split("[")[0] in str(error)

    def test_unsupported_message_does_not_quote_the_value(self) -> None:
        class Secretive:
            def __repr__(self) -> str:
                return "SECRET-REPR"

            __str__ = __repr__

        error = invalid(cap(user_id="u", thing=Secretive()))
        assert "SECRET-REPR" not in str(error)
        assert "Secretive" in str(error)

    def test_lone_surrogate_is_invalid_not_a_crash(self) -> None:
        for capture in (
            cap(user_id="u", note="a\ud800b"),
            cap("bad\udfffname", user_id="u"),
            cap(user_id="\ud800"),
            cap(user_id="u", cio_action="identify", note="\ud800"),
        ):
            error = invalid(capture)
            assert error.reason == "unsupported_value"
            assert "\ud800" not in str(error)

    def test_integer_too_large_to_encode(self) -> None:
        error = invalid(cap(user_id="u", n=10**5000))
        assert error.reason == "unsupported_value"

    def test_deep_nesting(self) -> None:
        deep: Any = "leaf"
        for _ in range(100):
            deep = [deep]
        error = invalid(cap(user_id="u", deep=deep))
        assert error.reason == "too_deep"
        assert error.field is not None
        assert error.field.startswith("attributes.deep")


class TestCycles:
    def test_dict_cycle(self) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        self.assert_cycle_rejected(loop)

    def test_list_cycle(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(loop)

    def test_dataclass_cycle(self) -> None:
        loop = Line(Point(1, 2.0), Point(3, 4.0))
        loop.start = {"back": loop}  # type: ignore[assignment]
        self.assert_cycle_rejected(loop)

    def test_dataclass_holding_a_cyclic_list(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(Point(1, 2.0, loop))  # type: ignore[arg-type]

    def test_pydantic_model_holding_a_cyclic_list(self) -> None:
        class Bag(BaseModel):
            items: list[Any]

        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(Bag(items=loop))

    def test_cycle_through_a_record(self) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "loop": loop}
        )
        capture = capture_record(record)
        assert capture is not None
        assert invalid(capture).reason == "too_deep"

    @staticmethod
    def assert_cycle_rejected(value: object) -> None:
        capture = capture_event_dict(
            {"event": "e", "cio_event": True, "user_id": "u", "loop": value}
        )
        assert capture is not None
        result = outcome(capture)  # a RecursionError would escape and fail the test
        assert isinstance(result, InvalidEventError)
        assert result.reason == "too_deep"
        assert result.field is not None
        assert result.field.startswith("attributes.loop")


class Endless(list):  # type: ignore[type-arg]
    """A list whose iteration never ends; stops the test (rather than hanging it) far
    past the point where capture must have given up."""

    def __iter__(self) -> Iterator[int]:
        yield from range(10 * MAX_OPERATION_BYTES)
        raise AssertionError("iterated far past what an operation can hold")


class EndlessItems(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return ((f"k{i}", i) for i in Endless())


class HashOnce:
    """A key that hashes once (going into the dict), then raises."""

    def __init__(self) -> None:
        self.hashed = False

    def __hash__(self) -> int:
        if self.hashed:
            raise TypeError("unhashable now")
        self.hashed = True
        return 1


class BigInt(int):
    pass


class BadOffset(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=30)  # out of range: timestamp() raises ValueError


class Unserializable(BaseModel):
    n: int

    @field_serializer("n")
    def _refuse(self, n: int) -> int:
        raise RuntimeError("the app's serializer fails")


def _shared(width: int, levels: int) -> list[Any]:
    """A list of a list of ... sharing one object: ``width ** levels`` items, little memory."""
    value: list[Any] = [0] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


class TestUnboundedValues:
    """No value's size may hold a thread: conversions are bounded, or refused with a reason."""

    # Sizes that take milliseconds even unbounded; the sizes that froze the process for
    # minutes are in TestNoFreeze, in a subprocess with a hard timeout.
    @pytest.mark.parametrize(
        "value", [Decimal("1e5000"), Decimal(f"-1.5e{MAX_OPERATION_BYTES}")], ids=str
    )
    def test_a_decimal_with_too_many_digits_is_invalid(self, value: Decimal) -> None:
        error = invalid(cap(user_id="u", amount=value))
        assert error.reason == "unsupported_value"
        assert error.field == "attributes.amount"
        assert "digits" in str(error)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (Decimal("1e400"), 10**400),
            (Decimal("0e1000000"), 0),
            (Decimal("-0e-1000000"), 0),
            (Decimal("1e-1000000"), 0.0),
            (Decimal("2.5e-3"), 0.0025),
        ],
    )
    def test_decimals_within_bounds_still_convert(self, value: Decimal, expected: object) -> None:
        assert attributes(amount=value) == {"amount": expected}
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "amounts": [value]}
        )
        capture = capture_record(record)  # checked there too, before any model sees it
        assert capture is not None
        assert build(capture)["attributes"] == {"amounts": [expected]}

    def test_a_declared_event_never_converts_a_decimal_with_too_many_digits(self) -> None:
        class Paid(Event, name="paid"):
            amount: int

        capture = capture_event_dict(
            {"event": "paid", "cio_event": True, "user_id": "u", "amount": Decimal("1e32000")}
        )
        assert capture is not None
        error = invalid(capture, Taxonomy([Paid]))
        assert error.field == "attributes.amount"

    def test_an_int_subclass_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", n=BigInt(10**5000)))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.n")

    def test_an_int_key_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", m={10**5000: 1}))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.m")

    def test_an_integer_identifier_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id=10**5000))
        assert (error.reason, error.field) == ("identifier_too_long", "identifiers.user_id")

    def test_a_datetime_without_a_timestamp_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", when=dt.datetime(2024, 1, 1, tzinfo=BadOffset())))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.when")

    def test_a_model_whose_model_dump_raises_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", order=Unserializable(n=1)))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.order")
        assert "model_dump" in str(error)

    @pytest.mark.parametrize(
        "value",
        [Endless(), EndlessItems(), {"nested": [Endless()]}],
        ids=["list", "dict-items", "nested"],
    )
    def test_a_container_whose_iteration_never_ends_is_invalid(self, value: object) -> None:
        capture = capture_event_dict({"event": "e", "cio_event": True, "user_id": "u", "v": value})
        assert capture is not None
        error = invalid(capture)
        assert error.reason == "operation_too_large"
        assert error.field is not None
        assert error.field.startswith("attributes.v")
        assert f"{MAX_OPERATION_BYTES:,} items" in str(error)

    def test_a_value_sharing_one_list_many_times_is_not_copied_whole(self) -> None:
        # A million items in a few kilobytes: copying or converting them all would take
        # a second on the app's thread; none of them could ever be sent.
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "grid": _shared(1000, 2)}
        )
        capture = capture_record(record)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("operation_too_large", "attributes.grid")

    def test_items_up_to_the_bound_are_kept(self) -> None:
        # Counted across the whole value, items stay legal up to what an operation holds.
        assert attributes(grid=_shared(10, 3)) == {"grid": [[[0] * 10] * 10] * 10}

    @pytest.mark.parametrize("through", ["record", "event_dict", "dict_message"])
    @pytest.mark.parametrize("kind", ["dict_key", "set_item"])
    def test_a_key_whose_hash_raises_is_invalid_with_a_reason(
        self, through: str, kind: str
    ) -> None:
        value: object = {HashOnce(): 1} if kind == "dict_key" else {HashOnce()}
        fields = {"cio_event": True, "user_id": "u", "m": value}
        capture = _capture_through(through, fields)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("unsupported_value", "attributes.m")
        assert "hash" in str(error)


# Logs one event per argument, an amount of Decimal(argument), through the handler; prints
# what became of them. With --declared, the event is declared with an int amount: its
# model converts a Decimal itself.
_AMOUNTS_PROGRAM = """
import json, logging, sys
from decimal import Decimal
import customerio_logging as cio

class Paid(cio.Event, name="paid"):
    amount: int

class Unused:
    def send(self, body):
        raise AssertionError("nothing here is valid: nothing is sent")
    def close(self):
        pass

declared = sys.argv[1] == "--declared"
bridge = cio.configure(
    site_id="s", api_key="k", transport=Unused(), spool_path=False,
    install_signal_handlers=False, events=[Paid] if declared else [],
)
log = logging.getLogger("app")
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for text in sys.argv[2:]:
    log.warning("paid", extra={"cio_event": True, "user_id": "u1", "amount": Decimal(text)})
cio.flush(10)
letters = [(d.reason, d.field) for d in bridge.dead_letters()]
print(json.dumps({"invalid": cio.stats().invalid, "letters": letters}))
"""


def _capture_through(through: str, fields: dict[str, object]) -> Capture | None:
    """Capture ``fields`` as a stdlib record, a structlog event dict, or a dict message."""
    if through == "record":
        return capture_record(logging.makeLogRecord({"msg": "e", **fields}))
    if through == "event_dict":
        return capture_event_dict({"event": "e", **fields})
    return capture_record(logging.makeLogRecord({"msg": {"event": "e", **fields}}))


def _run_unfrozen(program: str, *args: str) -> Any:
    """Run ``program`` in a fresh interpreter; its JSON output. A freeze fails the test
    (after 30 s) instead of hanging the suite."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", program, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("converting the event's values froze the process")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestNoFreeze:
    @pytest.mark.parametrize(
        ("declared", "reason"), [(False, "unsupported_value"), (True, "schema_mismatch")]
    )
    def test_a_huge_decimal_neither_freezes_the_process_nor_is_lost(
        self, declared: bool, reason: str
    ) -> None:
        # Before: 51 s with every thread frozen for 1e1000000, 26 min for 1e100000000.
        amounts = ["1e1000000", "-1e100000000", "9.5e999999999"]
        mode = "--declared" if declared else "--undeclared"
        outcome = _run_unfrozen(_AMOUNTS_PROGRAM, mode, *amounts)
        assert outcome["invalid"] == len(amounts)
        assert outcome["letters"] == [[reason, "attributes.amount"]] * len(amounts)


_DECLARED_PROGRAM = """
import collections, itertools, json, logging, sys
from decimal import Decimal
import customerio_logging as cio

class Paid(cio.Event, name="paid"):
    amount: int = 0
    tags: list[int] = []
    meta: dict[str, int] = {}

class Big(Decimal):
    pass

class Endless:
    def __iter__(self):
        return itertools.count()

class EndlessList(list):
    def __iter__(self):
        return itertools.count()

class EndlessItems(collections.OrderedDict):
    def items(self):
        return ((str(i), i) for i in itertools.count())

class Unused:
    def send(self, body):
        raise AssertionError("nothing here is valid: nothing is sent")
    def close(self):
        pass

bridge = cio.configure(
    site_id="s", api_key="k", transport=Unused(), spool_path=False,
    install_signal_handlers=False, events=[Paid],
)
log = logging.getLogger("app")
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for field, value in [
    ("amount", Big("1e10000000")),
    ("amount", Big("-1e30000000")),
    ("tags", Endless()),
    ("tags", EndlessList()),
    ("tags", itertools.count()),
    ("meta", EndlessItems()),
]:
    log.warning("paid", extra={"cio_event": True, "user_id": "u1", field: value})
cio.flush(10)
letters = [d.field for d in bridge.dead_letters()]
print(json.dumps({"invalid": cio.stats().invalid, "letters": letters}))
"""


class TestNoFreezeInADeclaredEvent:
    def test_values_without_a_bound_never_reach_the_events_model(self) -> None:
        # A declared event's pydantic model sees the values before building bounds them.
        # Before: a Decimal subclass of ten million digits held every thread for 5 s
        # (28 s for thirty million); an endless iterable in a list field never returned.
        outcome = _run_unfrozen(_DECLARED_PROGRAM)
        assert outcome["invalid"] == 6
        fields = [*["attributes.amount"] * 2, *["attributes.tags"] * 3, "attributes.meta"]
        assert len(outcome["letters"]) == len(fields)
        # The model names the item it stopped at (attributes.tags.32000) or the field.
        for letter, field in zip(outcome["letters"], fields, strict=True):
            assert letter == field or letter.startswith(f"{field}."), (letter, field)

    @pytest.mark.parametrize(
        "value",
        [
            collections.OrderedDict(a=1, b=2),
            collections.defaultdict(int, a=1),
            type("Ints", (list,), {})([1, 2]),
            collections.namedtuple("Pair", "x y")(1, 2),
        ],
        ids=["OrderedDict", "defaultdict", "list subclass", "namedtuple"],
    )
    def test_container_subclasses_are_copied_and_still_sent(self, value: object) -> None:
        capture = capture_event_dict({"cio_event": "e", "event": "e", "user_id": "u1", "v": value})
        assert capture is not None
        op = build_operation(capture, Taxonomy(()))
        assert json.loads(op.body)["attributes"]["v"] == (
            dict(value) if isinstance(value, dict) else list(value)  # type: ignore[call-overload]
        )


class TestKeyCollisions:
    """Two keys that are one key in JSON would silently lose a value: refused instead."""

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ({1: "a", "1": "b"}, "attributes.m.1"),
            ({"1": "a", 1: "b"}, "attributes.m.1"),
            ({None: "a", "null": "b"}, "attributes.m.null"),
            ({1.5: "a", "1.5": "b"}, "attributes.m.1.5"),
            ({True: "a", "true": "b"}, "attributes.m.true"),
            ({"ok": {2: "a", "2": "b"}}, "attributes.m.ok.2"),
        ],
    )
    def test_colliding_keys_are_invalid_naming_the_key(
        self, value: dict[Any, Any], field: str
    ) -> None:
        error = invalid(cap(user_id="u", m=value))
        assert error.reason == "duplicate_key"
        assert error.field == field
        assert field.removeprefix("attributes.") in str(error)
        assert "'b'" not in str(error)  # keys are named, values never quoted

    def test_a_keyword_and_its_trailing_underscore_form_collide(self) -> None:
        error = invalid(cap(user_id="u", **{"from": "a", "from_": "b"}))
        assert (error.reason, error.field) == ("duplicate_key", "attributes.from")
        assert "'from_'" in str(error)

    def test_distinct_keys_are_all_kept(self) -> None:
        assert attributes(m={1: "a", "2": "b", None: "c"}) == {
            "m": {"1": "a", "2": "b", "null": "c"}
        }


class NoTruth:
    """A tag like a numpy array: its truth value cannot be tested."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array is ambiguous")


class TestUnreadableTag:
    @pytest.mark.parametrize("through", ["record", "event_dict", "dict_message"])
    def test_taken_then_invalid_with_a_reason(self, through: str) -> None:
        fields = {"cio_event": NoTruth(), "user_id": "u"}
        capture = _capture_through(through, fields)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("invalid_tag", "cio_event")
        assert "NoTruth" in str(error)


class TestTimestampAndId:
    @pytest.mark.parametrize("created", [CREATED, 1_000_000_000.0, 1_600_000_000.999])
    def test_timestamp_is_when_it_was_logged(self, created: float) -> None:
        body = build(cap(user_id="u", created=created))
        assert body["timestamp"] == int(created)
        assert isinstance(body["timestamp"], int)

    def test_timestamp_of_an_old_record(self) -> None:
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "created": 1_500_000_000.5}
        )
        capture = capture_record(record)
        assert capture is not None
        assert build(capture)["timestamp"] == 1_500_000_000
        assert (
            build(capture._replace(fields={"user_id": "u", "cio_action": "identify"}))["timestamp"]
            == 1_500_000_000
        )

    @pytest.mark.parametrize("created", [CREATED, 1_000_000_000.001, 1_234_567_890.5])
    def test_id_is_a_ulid_made_at_capture_time(self, created: float) -> None:
        op = build_operation(cap(user_id="u", created=created), Taxonomy())
        assert len(op.id) == 26
        parsed = ULID.from_str(op.id)
        assert str(parsed) == op.id
        assert parsed.milliseconds == int(created * 1000)

    @pytest.mark.parametrize("action", sorted(PERSON_ACTIONS))
    def test_every_operation_has_an_id(self, action: str) -> None:
        op = _any_action(action)
        assert ULID.from_str(op.id).milliseconds == int(CREATED * 1000)

    def test_ids_are_unique(self) -> None:
        capture = cap(user_id="u")
        taxonomy = Taxonomy()
        ids = {build_operation(capture, taxonomy).id for _ in range(10_000)}
        assert len(ids) == 10_000


class TestLimits:
    @staticmethod
    def padded(size: int) -> Capture:
        """An event whose operation is exactly ``size`` bytes long."""
        base = len(build_operation(cap(user_id="u", blob=""), Taxonomy()).body)
        return cap(user_id="u", blob="x" * (size - base))

    def test_operation_at_the_limit(self) -> None:
        op = build_operation(self.padded(MAX_OPERATION_BYTES), Taxonomy())
        assert len(op.body) == MAX_OPERATION_BYTES

    def test_operation_over_the_limit(self) -> None:
        error = invalid(self.padded(MAX_OPERATION_BYTES + 1))
        assert error.reason == "operation_too_large"
        assert "x" * 50 not in str(error)

    def test_operation_size_counts_utf8_bytes(self) -> None:
        error = invalid(cap(user_id="u", blob="€" * (MAX_OPERATION_BYTES // 3 + 1)))
        assert error.reason == "operation_too_large"

    def test_event_values_are_not_held_to_the_identify_limit(self) -> None:
        value = "x" * (MAX_ATTRIBUTE_VALUE_BYTES * 5)
        assert attributes(note=value) == {"note": value}

    @pytest.mark.parametrize(
        ("count", "ok"), [(MAX_IDENTIFY_ATTRIBUTES, True), (MAX_IDENTIFY_ATTRIBUTES + 1, False)]
    )
    def test_identify_attribute_count(self, count: int, ok: bool) -> None:
        fields = {f"a{i}": i for i in range(count)}
        capture = cap(user_id="u", cio_action="identify", **fields)
        if ok:
            assert len(build(capture)["attributes"]) == count
        else:
            error = invalid(capture)
            assert error.reason == "too_many_attributes"
            assert error.field == "attributes"

    @pytest.mark.parametrize(
        ("name", "ok"),
        [
            ("n" * MAX_ATTRIBUTE_NAME_BYTES, True),
            ("n" * (MAX_ATTRIBUTE_NAME_BYTES + 1), False),
            ("ñ" * (MAX_ATTRIBUTE_NAME_BYTES // 2 + 1), False),
        ],
    )
    def test_identify_attribute_name(self, name: str, ok: bool) -> None:
        capture = cap(user_id="u", cio_action="identify", **{name: 1})
        if ok:
            assert build(capture)["attributes"] == {name: 1}
        else:
            error = invalid(capture)
            assert error.reason == "attribute_name_too_long"
            assert error.field is not None
            assert error.field.startswith("attributes.")

    @pytest.mark.parametrize(
        ("value", "ok"),
        [
            ("v" * MAX_ATTRIBUTE_VALUE_BYTES, True),
            ("v" * (MAX_ATTRIBUTE_VALUE_BYTES + 1), False),
            ("é" * (MAX_ATTRIBUTE_VALUE_BYTES // 2 + 1), False),
            (["v" * 300] * 4, False),
            ({"k": "v" * MAX_ATTRIBUTE_VALUE_BYTES}, False),
            (list(range(100)), True),
        ],
    )
    def test_identify_attribute_value(self, value: object, ok: bool) -> None:
        capture = cap(user_id="u", cio_action="identify", plan=value)
        if ok:
            assert build(capture)["attributes"] == {"plan": value}
        else:
            error = invalid(capture)
            assert error.reason == "attribute_value_too_large"
            assert error.field == "attributes.plan"
            assert "v" * 50 not in str(error)


class TestTaxonomyInBuild:
    def test_event_data_is_validated_and_sent_under_wire_names(self) -> None:
        class PlanChanged(Event, name="plan_changed"):
            to: str
            from_: str | None = None
            seats: int = 1

        body = build(
            cap(True, message="plan_changed", user_id="u1", to="pro", from_="free", seats="3"),
            Taxonomy([PlanChanged]),
        )
        assert body["attributes"] == {"to": "pro", "from": "free", "seats": 3}

    def test_defaults_fill_in(self) -> None:
        class Signup(Event, name="signup"):
            source: str = "web"

        body = build(cap("signup", user_id="u"), Taxonomy([Signup]))
        assert body["attributes"] == {"source": "web"}

    def test_schema_mismatch(self) -> None:
        class Paid(Event, name="paid"):
            amount: int

        error = invalid(cap("paid", user_id="u", amount="SECRET-AMOUNT"), Taxonomy([Paid]))
        assert error.reason == "schema_mismatch"
        assert error.field == "attributes.amount"
        assert "SECRET-AMOUNT" not in str(error)

    def test_identifiers_are_not_event_data(self) -> None:
        class Strict(Event, name="strict"):
            model_config = ConfigDict(extra="forbid")
            plan: str

        body = build(cap("strict", user_id="u", plan="pro"), Taxonomy([Strict]))
        assert body["attributes"] == {"plan": "pro"}

    def test_unknown_event_rejected(self) -> None:
        class Known(Event, name="known"):
            pass

        error = invalid(cap("other", user_id="u"), Taxonomy([Known], unknown_events="reject"))
        assert error.reason == "unknown_event"

    @pytest.mark.parametrize("action", ["page", "screen"])
    def test_pages_and_screens_are_not_events(self, action: str) -> None:
        class Known(Event, name="known"):
            pass

        taxonomy = Taxonomy([Known], unknown_events="reject")
        assert build(cap("/home", user_id="u", cio_action=action), taxonomy)["name"] == "/home"


# Arbitrary JSON-like data: what a log call could carry.
_IDENTITY_KEYS = {"user_id", "customer_id", "email", "cio_id", "anonymous_id", "cio_action"}
_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.integers(min_value=0, max_value=40_000).map(lambda n: "x" * n),
)
_json_values = st.recursive(
    _json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)
_data = st.dictionaries(
    st.text(min_size=1, max_size=20).filter(
        lambda k: k not in _IDENTITY_KEYS and k.rstrip("_") not in _IDENTITY_KEYS
    ),
    _json_values,
    max_size=8,
)


def _expected(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected(v) for v in value]
    return value


def _wire_key(key: str) -> str:
    return key[:-1] if key.endswith("_") and len(key) > 1 else key


class TestProperties:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=_data, action=st.sampled_from(sorted(NAMED_ACTIONS)))
    def test_body_round_trips_and_respects_the_limit(
        self, data: dict[str, Any], action: str
    ) -> None:
        expected = {_wire_key(k): _expected(v) for k, v in data.items()}
        # Capture() itself, not cap(): the generated keys may be "tag" or "message".
        capture = Capture("evt", "msg", {"user_id": "u1", "cio_action": action, **data}, CREATED)
        op = outcome(capture)
        if isinstance(op, InvalidEventError):
            assert op.reason == "operation_too_large"
            assert len(encode(expected)) > MAX_OPERATION_BYTES - 200
            return
        assert len(op.body) <= MAX_OPERATION_BYTES
        assert encode(json.loads(op.body)) == op.body  # compact: re-encoding changes nothing
        body = json.loads(op.body)
        assert body.get("attributes", {}) == expected
        assert body["identifiers"] == {"id": "u1"}
        assert body["id"] == op.id
        assert op.body.decode("utf-8")  # valid UTF-8

    @settings(max_examples=300, deadline=None)
    @given(
        value=st.recursive(
            st.one_of(
                _json_leaves,
                st.binary(max_size=8),
                st.datetimes(timezones=st.none() | st.timezones()),
                st.dates(),
                st.decimals(),
                st.uuids(),
                st.just(object()),
                st.just(Color.PAIR),
                st.text(alphabet=st.characters(codec=None, categories=None), max_size=5),
                st.sampled_from(["\ud800", "a\udfffb"]),  # lone surrogates
                st.integers(min_value=10**4400, max_value=10**4400 + 10),
            ),
            lambda children: st.one_of(
                st.lists(children, max_size=4),
                st.tuples(children, children),
                st.frozensets(st.integers() | st.text(max_size=3), max_size=4),
                st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4),
            ),
            max_leaves=15,
        )
    )
    def test_anything_is_an_operation_or_an_invalid_event(self, value: object) -> None:
        op = outcome(cap("evt", user_id="u1", value=value))
        if isinstance(op, InvalidEventError):
            assert op.reason in {"unsupported_value", "operation_too_large", "too_deep"}
            return
        assert len(op.body) <= MAX_OPERATION_BYTES
        json.loads(op.body.decode("utf-8"))

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
