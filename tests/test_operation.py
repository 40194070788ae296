"""A snapshot -> a Track API operation: each action's shape, its person, name, id and limits."""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import math
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ConfigDict
from ulid import ULID

from customerio_logging import _reasons
from customerio_logging._capture import Snapshot, UnreadableTag, capture_record
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
from customerio_logging._operation import build_operation
from customerio_logging._reasons import REASONS
from customerio_logging._schema import Event, Taxonomy
from customerio_logging._values import encode
from customerio_logging._wire import Operation
from customerio_logging.exceptions import InvalidEventError

from .helpers import CREATED, JSON_LEAVES, attributes, build, cap, invalid, outcome

# Each test runs with both JSON encoders (orjson's and the standard library's).
pytestmark = pytest.mark.usefixtures("json_path")

SOURCE = Path(_reasons.__file__).parent


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
    def padded(size: int) -> Snapshot:
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
            assert error.reason == "attribute_value_too_long"
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
_json_values = st.recursive(
    JSON_LEAVES,
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
        # Snapshot() itself, not cap(): the generated keys may be "tag" or "message".
        capture = Snapshot("evt", "msg", {"user_id": "u1", "cio_action": action, **data}, CREATED)
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


class Paid(Event, name="paid"):
    amount: int


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


_IDENTIFY: dict[str, Any] = {"user_id": "u", "cio_action": "identify"}
_REJECTING = Taxonomy([Paid], unknown_events="reject")
# One real invalid event per reason the capture layer and the schema can give.
REASON_CASES: list[tuple[str, Snapshot, Taxonomy]] = [
    ("invalid_tag", cap(UnreadableTag(object()), user_id="u"), Taxonomy()),
    ("invalid_action", cap(user_id="u", cio_action="track"), Taxonomy()),
    ("missing_name", cap(True, message=" ", user_id="u"), Taxonomy()),
    ("name_too_long", cap("x" * (MAX_NAME_BYTES + 1), user_id="u"), Taxonomy()),
    ("missing_identifier", cap(plan="pro"), Taxonomy()),
    ("invalid_identifier", cap(user_id=True), Taxonomy()),
    ("identifier_too_long", cap(user_id="x" * (MAX_IDENTIFIER_BYTES + 1)), Taxonomy()),
    ("missing_device", cap(user_id="u", cio_action="delete_device"), Taxonomy()),
    (
        "invalid_device",
        cap(user_id="u", cio_action="add_device", device_token="t", platform="windows"),
        Taxonomy(),
    ),
    (
        "too_many_attributes",
        cap(**_IDENTIFY, **{f"a{i}": i for i in range(MAX_IDENTIFY_ATTRIBUTES + 1)}),
        Taxonomy(),
    ),
    (
        "attribute_name_too_long",
        cap(**_IDENTIFY, **{"n" * (MAX_ATTRIBUTE_NAME_BYTES + 1): 1}),
        Taxonomy(),
    ),
    (
        "attribute_value_too_long",
        cap(**_IDENTIFY, plan="v" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)),
        Taxonomy(),
    ),
    ("operation_too_large", cap(user_id="u", blob="x" * MAX_OPERATION_BYTES), Taxonomy()),
    ("unsupported_value", cap(user_id="u", thing=object()), Taxonomy()),
    ("too_deep", cap(user_id="u", deep=_deep(100)), Taxonomy()),
    ("duplicate_key", cap(user_id="u", **{"from": "a", "from_": "b"}), Taxonomy()),
    ("unknown_event", cap("other", user_id="u"), _REJECTING),
    ("schema_mismatch", cap("paid", user_id="u", amount="many"), _REJECTING),
]
# The modules whose checks give those reasons.
REASON_MODULES = ("_capture", "_values", "_operation", "_schema")


def _reasons_imported(module: str) -> set[str]:
    """The reason codes ``module`` imports from ``_reasons``."""
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    return {
        getattr(_reasons, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "_reasons"
        for alias in node.names
    }


def _literal_reasons(module: str) -> list[str]:
    """Reason codes ``module`` writes as string literals rather than _reasons' names."""
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        given = [kw.value for kw in node.keywords if kw.arg == "reason"]
        if isinstance(node.func, ast.Name) and node.func.id == "Refused" and node.args:
            given.append(node.args[0])
        found += [str(arg.value) for arg in given if isinstance(arg, ast.Constant)]
    return found


class TestReasonCodes:
    """Every reason an invalid event can carry is one of the shared table's codes."""

    @pytest.mark.parametrize(
        ("reason", "snapshot", "taxonomy"), REASON_CASES, ids=[c[0] for c in REASON_CASES]
    )
    def test_each_reason_is_in_the_table(
        self, reason: str, snapshot: Snapshot, taxonomy: Taxonomy
    ) -> None:
        error = invalid(snapshot, taxonomy)
        assert error.reason == reason
        assert error.reason in REASONS

    def test_every_reason_the_layer_gives_has_a_case(self) -> None:
        given = set().union(*(_reasons_imported(module) for module in REASON_MODULES))
        assert given == {reason for reason, _, _ in REASON_CASES}

    @pytest.mark.parametrize("module", REASON_MODULES)
    def test_reasons_are_named_from_the_table_not_spelled_out(self, module: str) -> None:
        assert _literal_reasons(module) == []


def test_an_operations_body_takes_memory_for_its_own_size() -> None:
    # orjson writes into a buffer of 4 KiB at least: kept as it is, each queued or spooled
    # operation would hold twenty times its size.
    snapshots = [cap("plan_changed", user_id=f"u{i}", to="pro") for i in range(1000)]
    taxonomy = Taxonomy()
    tracemalloc.start()
    try:
        ops = [build_operation(snapshot, taxonomy) for snapshot in snapshots]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ops) == 1000
    assert held < 1000 * 1024  # about 400 B an operation, all its parts included
