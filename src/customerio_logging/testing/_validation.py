"""The Track API's rules for a request body and the operations in it, as the emulator applies them.

Each check returns the first rule broken as a ``Problem``, whose reason is a code of
``customerio_logging._reasons``, or None when the body or operation is valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .. import _values
from .._limits import (
    DEVICE_PLATFORMS,
    IDENTIFIER_KEYS,
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_EVENT_DATA_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_IDENTIFY_ATTRIBUTES,
    MAX_NAME_BYTES,
    MAX_OPERATION_BYTES,
    NAMED_ACTIONS,
    PERSON_ACTIONS,
)
from .._reasons import (
    ATTRIBUTE_NAME_TOO_LONG,
    ATTRIBUTE_VALUE_TOO_LONG,
    ATTRIBUTES_TOO_LARGE,
    EMPTY_BATCH,
    IDENTIFIER_TOO_LONG,
    INVALID_ACTION,
    INVALID_ATTRIBUTES,
    INVALID_BATCH,
    INVALID_BODY,
    INVALID_DEVICE,
    INVALID_ID,
    INVALID_IDENTIFIER,
    INVALID_JSON,
    INVALID_NAME,
    INVALID_OPERATION,
    INVALID_TIMESTAMP,
    INVALID_TYPE,
    NAME_TOO_LONG,
    OPERATION_TOO_LARGE,
    TOO_MANY_ATTRIBUTES,
)

__all__ = [
    "Problem",
    "check_operation",
    "check_v1_operation",
    "read_batch",
    "v1_operation",
]

# Crockford base32, 26 characters; a leading digit above 7 would overflow 128 bits.
_ULID_RE: Final = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Problem:
    """The rule a request or an operation broke, as the API names it in an answer."""

    reason: str
    field: str
    message: str

    def as_error(self) -> dict[str, Any]:
        """The error object of an answer: ``reason``, ``field`` and ``message``."""
        return {"reason": self.reason, "field": self.field, "message": self.message}


# -- a request body ------------------------------------------------------------------------


def read_batch(body: bytes) -> list[Any] | Problem:
    """The operations of a ``/api/v2/batch`` body, or what makes the whole request invalid."""
    try:
        document = _loads(body)
    except (UnicodeDecodeError, ValueError):
        return Problem(INVALID_JSON, "body", "body is not valid JSON")
    if not isinstance(document, dict):
        return Problem(INVALID_BODY, "body", "body must be a JSON object")
    batch = document.get("batch")
    if not isinstance(batch, list):
        return Problem(INVALID_BATCH, "batch", "batch must be a list")
    if not batch:
        return Problem(EMPTY_BATCH, "batch", "batch must not be empty")
    return batch


def v1_operation(action: str, customer_id: str, body: bytes) -> dict[str, Any] | Problem:
    """The v2 operation a v1 ``track`` (``action="event"``) or ``identify`` request stands for.

    Returns:
        The operation, not yet checked; a ``Problem`` when the body is not a JSON object
        (an identify's body may be empty).
    """
    document = _v1_document(body) if body or action == "event" else {}
    if document is None:
        return Problem(INVALID_BODY, "body", "body must be a JSON object")
    op: dict[str, Any] = {"type": "person", "identifiers": {"id": customer_id}, "action": action}
    if action == "identify":
        op["attributes"] = document
        return op
    op["name"] = document.get("name")
    op["attributes"] = document.get("data", {})
    for key in ("id", "timestamp"):
        if key in document:
            op[key] = document[key]
    return op


def _v1_document(body: bytes) -> dict[str, Any] | None:
    try:
        document = _loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


# -- an operation --------------------------------------------------------------------------


def check_operation(op: object) -> Problem | None:
    """The first rule a batch's operation breaks, or None."""
    if not isinstance(op, dict):
        return Problem(INVALID_OPERATION, "operation", "operation must be a JSON object")
    size = _json_size(op)
    if size > MAX_OPERATION_BYTES:
        return Problem(
            OPERATION_TOO_LARGE,
            "operation",
            f"operation is {size} bytes; the limit is {MAX_OPERATION_BYTES}",
        )
    if op.get("type") != "person":
        return Problem(INVALID_TYPE, "type", 'type must be "person"')
    action = op.get("action")
    if action not in PERSON_ACTIONS:
        return Problem(INVALID_ACTION, "action", f"action must be one of {sorted(PERSON_ACTIONS)}")
    if action == "merge":
        return _check_identifiers(op.get("primary"), "primary") or _check_identifiers(
            op.get("secondary"), "secondary"
        )
    problem = _check_identifiers(
        op.get("identifiers"), "identifiers", allow_anonymous=action in NAMED_ACTIONS
    )
    if problem is not None:
        return problem
    if action in NAMED_ACTIONS:
        # The whole operation fit MAX_OPERATION_BYTES, so its attributes fit the larger
        # MAX_EVENT_DATA_BYTES: no need to measure them again.
        return _check_named(op, measure_attributes=MAX_OPERATION_BYTES > MAX_EVENT_DATA_BYTES)
    if action == "identify":
        return _check_identify(op)
    if action in ("add_device", "delete_device"):
        return _check_device(op, need_platform=action == "add_device")
    return None


def check_v1_operation(op: dict[str, Any]) -> Problem | None:
    """The first rule the operation of a v1 ``track`` or ``identify`` breaks, or None."""
    problem = _check_identifiers(op["identifiers"], "identifiers")
    if problem is not None:
        return problem
    return _check_identify(op) if op["action"] == "identify" else _check_named(op)


def _check_identifiers(
    identifiers: object, name: str, *, allow_anonymous: bool = False
) -> Problem | None:
    keys = " or ".join(IDENTIFIER_KEYS + (("anonymous_id",) if allow_anonymous else ()))
    shape = Problem(
        INVALID_IDENTIFIER, name, f"{name} must be an object with exactly one of {keys}"
    )
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        return shape
    ((key, value),) = identifiers.items()
    if key not in IDENTIFIER_KEYS and not (allow_anonymous and key == "anonymous_id"):
        return shape
    if not isinstance(value, str) or not value:
        return Problem(
            INVALID_IDENTIFIER, f"{name}.{key}", f"{name}.{key} must be a non-empty string"
        )
    if key != "anonymous_id" and _utf8_size(value) > MAX_IDENTIFIER_BYTES:
        return Problem(
            IDENTIFIER_TOO_LONG,
            f"{name}.{key}",
            f"{name}.{key} is {_utf8_size(value)} bytes; the limit is {MAX_IDENTIFIER_BYTES}",
        )
    return None


def _check_named(op: dict[str, Any], *, measure_attributes: bool = True) -> Problem | None:
    name = op.get("name")
    if not isinstance(name, str) or not name:
        return Problem(INVALID_NAME, "name", "name must be a non-empty string")
    if _utf8_size(name) > MAX_NAME_BYTES:
        return Problem(
            NAME_TOO_LONG,
            "name",
            f"name is {_utf8_size(name)} bytes; the limit is {MAX_NAME_BYTES}",
        )
    if "id" in op and not (isinstance(op["id"], str) and _ULID_RE.fullmatch(op["id"])):
        return Problem(INVALID_ID, "id", "id must be a ULID (26 characters, Crockford base32)")
    problem = _check_timestamp(op)
    if problem is not None:
        return problem
    if "attributes" in op:
        attributes = op["attributes"]
        if not isinstance(attributes, dict):
            return Problem(INVALID_ATTRIBUTES, "attributes", "attributes must be an object")
        size = _json_size(attributes) if measure_attributes else 0
        if size > MAX_EVENT_DATA_BYTES:
            return Problem(
                ATTRIBUTES_TOO_LARGE,
                "attributes",
                f"attributes are {size} bytes; the limit is {MAX_EVENT_DATA_BYTES}",
            )
    return None


def _check_identify(op: dict[str, Any]) -> Problem | None:
    problem = _check_timestamp(op)
    if problem is not None or "attributes" not in op:
        return problem
    attributes = op["attributes"]
    if not isinstance(attributes, dict):
        return Problem(INVALID_ATTRIBUTES, "attributes", "attributes must be an object")
    if len(attributes) > MAX_IDENTIFY_ATTRIBUTES:
        return Problem(
            TOO_MANY_ATTRIBUTES,
            "attributes",
            f"{len(attributes)} attributes; the limit is {MAX_IDENTIFY_ATTRIBUTES}",
        )
    for key, value in attributes.items():
        if _utf8_size(key) > MAX_ATTRIBUTE_NAME_BYTES:
            return Problem(
                ATTRIBUTE_NAME_TOO_LONG,
                f"attributes.{key}",
                f"attribute name is {_utf8_size(key)} bytes; the limit is "
                f"{MAX_ATTRIBUTE_NAME_BYTES}",
            )
        # A string is measured as its text; any other value as its compact JSON.
        size = len(value.encode()) if isinstance(value, str) else _json_size(value)
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            return Problem(
                ATTRIBUTE_VALUE_TOO_LONG,
                f"attributes.{key}",
                f"attributes.{key} is {size} bytes; the limit is {MAX_ATTRIBUTE_VALUE_BYTES}",
            )
    return None


def _check_timestamp(op: dict[str, Any]) -> Problem | None:
    timestamp = op.get("timestamp")
    # bool is an int subclass, and JSON true must not pass for a time.
    if "timestamp" in op and (not isinstance(timestamp, int) or isinstance(timestamp, bool)):
        return Problem(
            INVALID_TIMESTAMP, "timestamp", "timestamp must be an integer (Unix seconds)"
        )
    return None


def _check_device(op: dict[str, Any], *, need_platform: bool) -> Problem | None:
    device = op.get("device")
    if not isinstance(device, dict):
        return Problem(INVALID_DEVICE, "device", "device must be an object")
    token = device.get("token")
    if not isinstance(token, str) or not token:
        return Problem(INVALID_DEVICE, "device.token", "device.token must be a non-empty string")
    if need_platform and device.get("platform") not in DEVICE_PLATFORMS:
        return Problem(
            INVALID_DEVICE,
            "device.platform",
            f"device.platform must be one of {list(DEVICE_PLATFORMS)}",
        )
    return None


def _orjson_loads() -> Callable[[bytes], Any] | None:
    try:
        from orjson import loads
    except ImportError:
        return None
    return loads


_fast_loads = _orjson_loads()


def _loads(body: bytes) -> Any:
    """A request's JSON document, through orjson first when it is installed (a third of
    the standard library's cost); what orjson refuses (a 65-bit integer, NaN, UTF-16) is
    parsed, or refused, by the standard library.

    Raises:
        ValueError: Not JSON; or JSON holding a lone surrogate (``"\\ud800"``), which is
            no text at all: the API's UTF-8 cannot carry it, and nothing after this
            could handle it.
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(body)
        except ValueError:  # orjson.JSONDecodeError
            pass
    document = json.loads(body)
    json.dumps(document, ensure_ascii=False).encode()  # UnicodeEncodeError: a surrogate
    return document


def _json_size(value: object) -> int:
    # orjson's compact JSON when installed, as the library itself encodes: a third of the
    # emulator's time per operation went here, on a machine whose cores it shares.
    dumps = _values.fast_dumps
    if dumps is not None:
        try:
            return len(dumps(value))
        except TypeError:  # what orjson refuses (a 65-bit integer): the standard way
            pass
    return len(_COMPACT.encode(value).encode())


def _utf8_size(text: str) -> int:
    return len(text.encode())
