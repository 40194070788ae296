"""Tests of the emulator's validation: each Track API rule it applies to a request body or an
operation, the reason and field it answers with, and that every reason it gives is one of the
library's shared codes (``customerio_logging._reasons``)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from customerio_logging import _reasons, testing
from customerio_logging._limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_IDENTIFY_ATTRIBUTES,
    MAX_NAME_BYTES,
    MAX_OPERATION_BYTES,
    MAX_REQUEST_BYTES,
)
from customerio_logging._reasons import REASONS
from customerio_logging.testing import TrackAPIEmulator

from .helpers import HTTP_TIMEOUT, batch_op, post_batch, raw_exchange

ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


MALFORMED_BODIES = [
    # body, reason, field
    (b"not json", "invalid_json", "body"),
    (b"\xff\xfe", "invalid_json", "body"),
    (b"[]", "invalid_body", "body"),
    (b"{}", "invalid_batch", "batch"),
    (b'{"batch": {}}', "invalid_batch", "batch"),
    (b'{"batch": []}', "empty_batch", "batch"),
]


class TestRequestBody:
    @pytest.mark.parametrize(
        ("value", "status"), [(b"18446744073709551616", 200), (b'"\\ud800"', 400)]
    )
    def test_what_orjson_refuses_is_read_as_before(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        value: bytes,
        status: int,
    ) -> None:
        # The emulator parses with orjson when it can. What orjson refuses, the standard
        # library reads: an integer beyond 64 bits is taken; a lone surrogate, escaped, is
        # JSON but no text (the API's UTF-8 cannot carry it): the whole body is refused,
        # never a dropped connection.
        op = batch_op(attributes={"y": 1})
        document = json.dumps({"batch": [op]}).encode()
        document = document.replace(b'"attributes": {', b'"attributes": {"x": ' + value + b", ")
        response = session.post(f"{emulator.url}/api/v2/batch", data=document, timeout=HTTP_TIMEOUT)
        assert response.status_code == status, response.text
        if status == 200:
            [kept] = emulator.operations
            assert kept["attributes"]["x"] == 2**64
        else:
            [error] = response.json()["errors"]
            assert error["reason"] == "invalid_json"
            assert emulator.operations == []

    @pytest.mark.parametrize(("body", "reason", "field"), MALFORMED_BODIES)
    def test_malformed_body_gets_400(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        body: bytes,
        reason: str,
        field: str,
    ) -> None:
        response = session.post(f"{emulator.url}/api/v2/batch", data=body, timeout=HTTP_TIMEOUT)
        assert response.status_code == 400
        [error] = response.json()["errors"]
        assert (error["reason"], error["field"]) == (reason, field)
        assert error["message"]
        assert emulator.operations == []
        assert emulator.requests[0].errors == [error]


def _identify(**extra: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": "u1"}, "action": "identify", **extra}


def _person(action: str, **extra: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": "u1"}, "action": action, **extra}


VALID_OPS = {
    "event-minimal": batch_op(),
    "event-full": batch_op(id=ULID.lower(), timestamp=1, attributes={"a": [1, {"b": None}]}),
    "event-anonymous": {**batch_op(), "identifiers": {"anonymous_id": "anon-1"}},
    "event-email": {**batch_op(), "identifiers": {"email": "a@example.com"}},
    "event-cio-id": {**batch_op(), "identifiers": {"cio_id": "abc"}},
    "page": {**batch_op("/home"), "action": "page"},
    "screen": {**batch_op("Home"), "action": "screen"},
    "name-at-limit-in-bytes": batch_op("é" * (MAX_NAME_BYTES // 2)),
    "identifier-at-limit": batch_op(user="u" * MAX_IDENTIFIER_BYTES),
    "identify": _identify(attributes={"plan": "pro"}, timestamp=5),
    "identify-bare": _identify(),
    "identify-max-attributes": _identify(
        attributes={f"a{i}": i for i in range(MAX_IDENTIFY_ATTRIBUTES)}
    ),
    "identify-value-at-limit": _identify(attributes={"v": "x" * (MAX_ATTRIBUTE_VALUE_BYTES - 2)}),
    "identify-name-at-limit": _identify(attributes={"n" * MAX_ATTRIBUTE_NAME_BYTES: 1}),
    "suppress": _person("suppress"),
    "unsuppress": _person("unsuppress"),
    "delete": _person("delete"),
    "add_device": _person("add_device", device={"token": "t", "platform": "ios"}),
    "delete_device": _person("delete_device", device={"token": "t"}),
    "merge": {
        "type": "person",
        "action": "merge",
        "primary": {"id": "u1"},
        "secondary": {"email": "old@example.com"},
    },
}

INVALID_OPS = {
    # op, reason, field
    "not-an-object": (["event"], "invalid_operation", "operation"),
    "wrong-type": ({**batch_op(), "type": "object"}, "invalid_type", "type"),
    "missing-type": ({k: v for k, v in batch_op().items() if k != "type"}, "invalid_type", "type"),
    "unknown-action": (_person("track"), "invalid_action", "action"),
    "missing-identifiers": (
        {k: v for k, v in batch_op().items() if k != "identifiers"},
        "invalid_identifier",
        "identifiers",
    ),
    "identifiers-not-object": (
        {**batch_op(), "identifiers": "u1"},
        "invalid_identifier",
        "identifiers",
    ),
    "no-identifier": ({**batch_op(), "identifiers": {}}, "invalid_identifier", "identifiers"),
    "two-identifiers": (
        {**batch_op(), "identifiers": {"id": "u1", "email": "a@example.com"}},
        "invalid_identifier",
        "identifiers",
    ),
    "unknown-identifier": (
        {**batch_op(), "identifiers": {"user_id": "u1"}},
        "invalid_identifier",
        "identifiers",
    ),
    "empty-identifier": (batch_op(user=""), "invalid_identifier", "identifiers.id"),
    "numeric-identifier": (
        {**batch_op(), "identifiers": {"id": 42}},
        "invalid_identifier",
        "identifiers.id",
    ),
    "identifier-too-long": (
        batch_op(user="é" * (MAX_IDENTIFIER_BYTES // 2 + 1)),
        "identifier_too_long",
        "identifiers.id",
    ),
    "anonymous-identify": (
        {**_identify(), "identifiers": {"anonymous_id": "a"}},
        "invalid_identifier",
        "identifiers",
    ),
    "anonymous-with-id": (
        {**batch_op(), "identifiers": {"anonymous_id": "a", "id": "u1"}},
        "invalid_identifier",
        "identifiers",
    ),
    "empty-anonymous-id": (
        {**batch_op(), "identifiers": {"anonymous_id": ""}},
        "invalid_identifier",
        "identifiers.anonymous_id",
    ),
    "missing-name": (
        {k: v for k, v in batch_op().items() if k != "name"},
        "invalid_name",
        "name",
    ),
    "empty-name": (batch_op(""), "invalid_name", "name"),
    "name-not-string": ({**batch_op(), "name": 7}, "invalid_name", "name"),
    "name-too-long-in-bytes": (
        batch_op("é" * (MAX_NAME_BYTES // 2 + 1)),
        "name_too_long",
        "name",
    ),
    "id-not-ulid": (batch_op(id="not-a-ulid"), "invalid_id", "id"),
    "id-25-chars": (batch_op(id=ULID[:-1]), "invalid_id", "id"),
    "id-excluded-letter": (batch_op(id="01ARZ3NDEKTSV4RRFFQ69G5FAU"), "invalid_id", "id"),
    "id-overflows-128-bits": (batch_op(id="8" + ULID[1:]), "invalid_id", "id"),
    "id-not-string": (batch_op(id=1), "invalid_id", "id"),
    "timestamp-float": (batch_op(timestamp=1.5), "invalid_timestamp", "timestamp"),
    "timestamp-bool": (batch_op(timestamp=True), "invalid_timestamp", "timestamp"),
    "timestamp-string": (batch_op(timestamp="1700000000"), "invalid_timestamp", "timestamp"),
    "event-attributes-not-object": (
        batch_op(attributes=[1]),
        "invalid_attributes",
        "attributes",
    ),
    "page-without-name": (_person("page"), "invalid_name", "name"),
    "identify-timestamp-float": (_identify(timestamp=1.0), "invalid_timestamp", "timestamp"),
    "identify-attributes-not-object": (
        _identify(attributes="pro"),
        "invalid_attributes",
        "attributes",
    ),
    "identify-too-many-attributes": (
        _identify(attributes={f"a{i}": i for i in range(MAX_IDENTIFY_ATTRIBUTES + 1)}),
        "too_many_attributes",
        "attributes",
    ),
    "identify-attribute-name-too-long": (
        _identify(attributes={"n" * (MAX_ATTRIBUTE_NAME_BYTES + 1): 1}),
        "attribute_name_too_long",
        "attributes." + "n" * (MAX_ATTRIBUTE_NAME_BYTES + 1),
    ),
    "identify-attribute-value-too-long": (
        _identify(attributes={"plan": "x" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)}),
        "attribute_value_too_long",
        "attributes.plan",
    ),
    "add-device-missing": (_person("add_device"), "invalid_device", "device"),
    "add-device-no-token": (
        _person("add_device", device={"platform": "ios"}),
        "invalid_device",
        "device.token",
    ),
    "add-device-bad-platform": (
        _person("add_device", device={"token": "t", "platform": "web"}),
        "invalid_device",
        "device.platform",
    ),
    "delete-device-empty-token": (
        _person("delete_device", device={"token": ""}),
        "invalid_device",
        "device.token",
    ),
    "merge-missing-secondary": (
        {"type": "person", "action": "merge", "primary": {"id": "u1"}},
        "invalid_identifier",
        "secondary",
    ),
    "merge-anonymous-primary": (
        {
            "type": "person",
            "action": "merge",
            "primary": {"anonymous_id": "a"},
            "secondary": {"id": "u2"},
        },
        "invalid_identifier",
        "primary",
    ),
}


class TestOperationValidation:
    @pytest.mark.parametrize("op", list(VALID_OPS.values()), ids=list(VALID_OPS))
    def test_valid_operation_is_accepted(
        self, emulator: TrackAPIEmulator, session: requests.Session, op: dict[str, Any]
    ) -> None:
        response = post_batch(session, emulator, [op])
        assert response.status_code == 200, response.json()
        assert emulator.operations == [op]

    @pytest.mark.parametrize(
        ("op", "reason", "field"), list(INVALID_OPS.values()), ids=list(INVALID_OPS)
    )
    def test_invalid_operation_is_refused_with_reason_and_field(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        op: Any,
        reason: str,
        field: str,
    ) -> None:
        response = post_batch(session, emulator, [batch_op("before"), op])
        assert response.status_code == 207
        [error] = response.json()["errors"]
        assert (error["batch_index"], error["reason"], error["field"]) == (1, reason, field)
        assert error["message"]
        assert [o["name"] for o in emulator.operations] == ["before"]
        [rejected] = emulator.rejected
        assert rejected == {
            "operation": op,
            "reason": reason,
            "field": field,
            "message": error["message"],
            "status": 207,
        }

    @pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 207)])
    def test_operation_size_limit(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        extra: int,
        status: int,
    ) -> None:
        op = batch_op(attributes={"pad": ""})
        size = len(json.dumps(op, separators=(",", ":")).encode())
        op["attributes"]["pad"] = "x" * (MAX_OPERATION_BYTES - size + extra)
        response = post_batch(session, emulator, [op])
        assert response.status_code == status
        if status == 207:
            [error] = response.json()["errors"]
            assert (error["reason"], error["field"]) == ("operation_too_large", "operation")
            assert emulator.operations == []
        else:
            assert emulator.operations == [op]


# -- one table of reason codes -------------------------------------------------------------

# The codes the requests of test_every_reason_given_is_a_shared_code draw: each rule's.
DRIVEN_REASONS = (
    {reason for _, reason, _ in INVALID_OPS.values()}
    | {reason for _, reason, _ in MALFORMED_BODIES}
    | {"operation_too_large", "attributes_too_large", "request_too_large", "invalid_request"}
)
EMULATOR_SOURCES = sorted(Path(testing.__file__).parent.glob("*.py"))
# Where a reason is not the emulator's own rule: the fault plan's reject_ops names it, and an
# injected status's body names the HTTP status (the library records http_<status> for it).
NOT_A_RULE = {("_faults.py", "refusal"), ("_faults.py", "fault_error")}


def _reason_sites(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    """Each expression the module gives as a reason, with the function it sits in."""
    owner: dict[ast.AST, str] = {}
    # ast.walk goes breadth first: an inner function comes after its outer one, and wins.
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            owner.update((node, function.name) for node in ast.walk(function))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Problem":
            reasons = node.args[:1] + [k.value for k in node.keywords if k.arg == "reason"]
            yield from ((owner.get(node, "<module>"), reason) for reason in reasons)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason":
                    yield owner.get(node, "<module>"), value


class TestReasons:
    def test_every_reason_given_is_a_shared_code(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        url = emulator.url
        post_batch(session, emulator, [op for op, _, _ in INVALID_OPS.values()])
        post_batch(session, emulator, [batch_op(attributes={"pad": "x" * MAX_OPERATION_BYTES})])
        for body, _, _ in MALFORMED_BODIES:
            session.post(f"{url}/api/v2/batch", data=body, timeout=HTTP_TIMEOUT)
        session.post(
            f"{url}/api/v2/batch", data=b" " * (MAX_REQUEST_BYTES + 1), timeout=HTTP_TIMEOUT
        )
        # The v1 endpoints have no request limit, so only there can event data be too large.
        big = {"name": "n", "data": {"pad": "x" * 100_000}}
        session.post(f"{url}/api/v1/customers/u1/events", json=big, timeout=HTTP_TIMEOUT)
        session.post(f"{url}/api/v1/customers/u1/events", data=b"nope", timeout=HTTP_TIMEOUT)
        raw_exchange(emulator, b"POST /api/v2/batch HTTP/1.1\r\nHost: x\r\n\r\n")

        given = {error["reason"] for r in emulator.requests for error in r.errors}
        given |= {rejected["reason"] for rejected in emulator.rejected}
        assert sorted(given - REASONS.keys()) == []
        # The requests above drew what they meant to: one of each.
        assert given == DRIVEN_REASONS

    def test_the_source_names_every_reason_by_its_shared_constant(self) -> None:
        named: set[str] = set()
        elsewhere: list[str] = []
        for path in EMULATOR_SOURCES:
            for function, reason in _reason_sites(ast.parse(path.read_text())):
                if (path.name, function) in NOT_A_RULE or ast.unparse(reason) == "self.reason":
                    continue
                code = getattr(_reasons, getattr(reason, "id", ""), None)
                if code in REASONS:
                    named.add(code)
                else:
                    elsewhere.append(f"{path.name}:{reason.lineno} {ast.unparse(reason)}")
        assert elsewhere == []
        # And the requests of the test above draw every one of them.
        assert named == DRIVEN_REASONS
