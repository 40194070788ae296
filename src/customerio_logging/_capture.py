"""LogRecord / structlog event dict -> Operation: extraction, identifiers and value coercion.

Capture happens in two halves. On the app's thread, :func:`capture_record` and
:func:`capture_event_dict` take a cheap snapshot (a :class:`Capture`) and nothing more. On
the dispatch thread, :func:`build_operation` turns a snapshot into a validated, encoded
:class:`~customerio_logging._schema.Operation`, or raises ``InvalidEventError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import json.encoder
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any, NamedTuple

from pydantic import BaseModel

from ._limits import (
    DEVICE_PLATFORMS,
    IDENTIFIER_KEYS,
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_IDENTIFY_ATTRIBUTES,
    MAX_NAME_BYTES,
    MAX_OPERATION_BYTES,
    NAMED_ACTIONS,
    PERSON_ACTIONS,
)
from ._schema import Operation, Taxonomy, new_ulid
from .exceptions import InvalidEventError

__all__ = [
    "Capture",
    "Captured",
    "build_operation",
    "capture_event_dict",
    "capture_record",
    "encode",
]

TAG = "cio_event"
ACTION = "cio_action"

# What logging itself puts on a record; everything else on it came from `extra=`.
_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    # structlog's ProcessorFormatter passes these as `extra` beside the event dict.
    "_logger",
    "_name",
    TAG,
}
# What structlog and its stdlib integration put in an event dict beside the app's keys.
_STRUCTLOG_KEYS = frozenset(
    {
        "event",
        "level",
        "logger",
        "timestamp",
        "exc_info",
        "stack_info",
        "_record",
        "_from_structlog",
        "positional_args",
        TAG,
    }
)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN = frozenset({str, int, bool, type(None)})  # JSON-ready as they are (floats may be NaN)
_MAX_DEPTH = 32
_ID_KEYS = ("user_id", "customer_id")
RESERVED_KEYS: frozenset[str] = _RECORD_KEYS | {
    ACTION,
    *_ID_KEYS,
    "email",
    "cio_id",
    "anonymous_id",
}
"""Keys a stdlib log call cannot carry as event data under their own name: a LogRecord's
own attributes, and the keys read as the tag, the action or the person."""
_SHORT_IDENTIFIER = MAX_IDENTIFIER_BYTES // 4  # UTF-8 takes at most 4 bytes a character


class Captured(str):
    """The value the processor leaves in ``cio_event`` once it has taken an event.

    A ``str`` (the event name), so renderers print it; its type tells the handler that
    the event was already sent, when the same event dict reaches stdlib logging.
    """

    __slots__ = ()


class Capture(NamedTuple):
    """A tagged log call, as taken on the app's thread."""

    tag: object
    """``True`` (name the event after the message) or the event name."""
    message: object
    """The log message (structlog's ``event``)."""
    fields: dict[str, Any]
    """The call's keys, minus logging's own; containers copied."""
    created: float
    """When the call was made, in Unix seconds."""


def capture_record(record: logging.LogRecord) -> Capture | None:
    """Snapshot a stdlib record, or return None if it is not tagged (or already taken)."""
    msg = record.msg
    if type(msg) is dict and TAG in msg:
        # structlog's ProcessorFormatter puts the whole event dict in record.msg. A dict
        # message without the tag may still be tagged on the record itself (extra=).
        tag = msg.get(TAG)
        if not tag or type(tag) is Captured:
            return None
        return Capture(
            tag, msg.get("event"), _snapshot_fields(msg, _STRUCTLOG_KEYS), record.created
        )
    tag = record.__dict__.get(TAG)
    if not tag or type(tag) is Captured:
        return None
    fields = _snapshot_fields(record.__dict__, _RECORD_KEYS)
    return Capture(tag, record.getMessage(), fields, record.created)


def capture_event_dict(event_dict: Mapping[str, Any]) -> Capture | None:
    """Snapshot a structlog event dict, or return None if it is not tagged."""
    tag = event_dict.get(TAG)
    if not tag or type(tag) is Captured:
        return None
    return Capture(
        tag, event_dict.get("event"), _snapshot_fields(event_dict, _STRUCTLOG_KEYS), time.time()
    )


def _snapshot_fields(source: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
    # Copy containers now: the app may mutate a list after logging it, and the
    # dispatch thread reads these values later. Scalars and other objects are shared.
    return {
        key: value if type(value) in _SCALARS else _snapshot(value, 0)
        for key, value in source.items()
        if key not in skip
    }


def _snapshot(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return value
    kind = type(value)
    if kind is dict:
        return {k: _snapshot(v, depth + 1) for k, v in value.items()}
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return kind(_snapshot(v, depth + 1) for v in value)
    return value


def build_operation(capture: Capture, taxonomy: Taxonomy) -> Operation:
    """Turn a capture into an encoded Track API operation.

    Raises:
        InvalidEventError: The capture cannot become a valid operation; ``reason`` and
            ``field`` say why.
    """
    try:
        return _build_operation(capture, taxonomy)
    except UnicodeEncodeError:
        # A str holding a lone surrogate has no UTF-8 form. The error's own text quotes
        # the character: payload, so it is not repeated here.
        raise InvalidEventError(
            "the event holds text that is not valid Unicode (a lone surrogate)",
            reason="unsupported_value",
            field=None,
        ) from None


def _build_operation(capture: Capture, taxonomy: Taxonomy) -> Operation:
    fields = dict(capture.fields)
    action = fields.pop(ACTION, "event")
    if action not in PERSON_ACTIONS:
        # Quote a short prefix only: enough to spot a typo, never a payload.
        shown = repr(action[:20]) if isinstance(action, str) else type(action).__name__
        raise InvalidEventError(
            f"cio_action {shown} is not one of {', '.join(sorted(PERSON_ACTIONS))}",
            reason="invalid_action",
            field="action",
        )
    timestamp = int(capture.created)
    op: dict[str, Any] = {"type": "person"}
    name: str | None = None
    op_id = new_ulid(capture.created)

    if action == "merge":
        op["action"] = action
        op["primary"] = _merge_side(fields.pop("primary", None), "primary")
        op["secondary"] = _merge_side(fields.pop("secondary", None), "secondary")
        return _finish(op, op_id, action)

    identifiers = _identifiers(fields, anonymous_ok=action in NAMED_ACTIONS)
    if action in NAMED_ACTIONS:
        name = _event_name(capture)
        if action == "event":
            fields = taxonomy.validate_event(name, fields)
        # No separate check of MAX_EVENT_DATA_BYTES: the per-operation limit is smaller.
        data = _coerce_data(fields)
        try:
            body = _named_body(identifiers, action, name, op_id, timestamp, data)
        except ValueError as exc:
            raise _encoding_error(exc) from None
        return _checked(op_id, action, name, body)
    op["identifiers"] = identifiers
    op["action"] = action
    if action == "identify":
        data = _coerce_data(taxonomy.validate_attributes(fields))
        _check_identify_attributes(data)
        op["timestamp"] = timestamp
        if data:
            op["attributes"] = data
    elif action == "add_device":
        op["device"] = _device(fields, timestamp, full=True)
    elif action == "delete_device":
        op["device"] = _device(fields, timestamp, full=False)
    # suppress, unsuppress and delete carry nothing but the person.
    return _finish(op, op_id, action)


def _named_body(
    identifiers: dict[str, str],
    action: str,
    name: str,
    op_id: str,
    timestamp: int,
    data: dict[str, Any],
) -> bytes:
    # The hot path: one event per log call. Written out rather than built as a dict and
    # encoded whole, which costs twice as much; only `data` goes through the encoder. The
    # key and action come from fixed sets and the id is ASCII: none needs escaping.
    ((key, value),) = identifiers.items()
    text = (
        f'{{"type":"person","identifiers":{{"{key}":{_quote(value)}}},"action":"{action}",'
        f'"name":{_quote(name)},"id":"{op_id}","timestamp":{timestamp}'
    )
    if data:
        text += ',"attributes":' + _encode_text(data)
    return (text + "}").encode()


def _finish(op: dict[str, Any], op_id: str, action: str) -> Operation:
    try:
        body = encode(op)
    except ValueError as exc:
        raise _encoding_error(exc) from None
    return _checked(op_id, action, None, body)


def _encoding_error(exc: ValueError) -> Exception:
    if isinstance(exc, UnicodeEncodeError):
        return exc  # build_operation reports it, without quoting the text
    # An int too long for str() (sys.get_int_max_str_digits()).
    return InvalidEventError(
        "the event holds an integer too large to encode",
        reason="unsupported_value",
        field=None,
    )


def _checked(op_id: str, action: str, name: str | None, body: bytes) -> Operation:
    if len(body) > MAX_OPERATION_BYTES:
        raise InvalidEventError(
            f"the operation is {len(body):,} bytes; the Track API takes at most "
            f"{MAX_OPERATION_BYTES:,} bytes per operation",
            reason="operation_too_large",
            field=None,
        )
    return Operation(op_id, action, name, body)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_quote = json.encoder.encode_basestring  # a str as a JSON string, as _encoder writes it


def _fast_encode() -> Callable[[Any], str]:
    """``_encoder.encode``, minus the C encoder it builds anew on every call.

    Halves the cost of encoding a small dict (once per event). Built from the same C
    function JSONEncoder uses, with the arguments CPython 3.11+ passes it; checked
    against ``_encoder`` once, and ``_encoder.encode`` is used if anything differs.
    Values reach it already coerced, so its missing cycle check (``markers=None``) and
    its ``default`` never matter.
    """
    make = getattr(json.encoder, "c_make_encoder", None)

    def refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    try:
        iterencode = make(None, refuse, _quote, None, ":", ",", False, False, False)  # type: ignore[misc]

        def fast(value: Any) -> str:
            return "".join(iterencode(value, 0))

        sample = {"a": [1, 2.5, None, True, 'é\n"x'], "b": {"c": -3}}
        if fast(sample) == _encoder.encode(sample):
            return fast
    except Exception:  # noqa: BLE001, S110 - any surprise means: use the public encoder
        pass
    return _encoder.encode


_encode_text = _fast_encode()


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the Track API receives it."""
    return _encode_text(value).encode()


def _event_name(capture: Capture) -> str:
    raw = capture.tag if isinstance(capture.tag, str) else capture.message
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidEventError(
            "the event has no name: log a message, or pass cio_event='name'",
            reason="missing_name",
            field="name",
        )
    name = raw.strip()
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidEventError(
            f"the event name is {size} bytes; the Track API takes at most {MAX_NAME_BYTES}",
            reason="name_too_long",
            field="name",
        )
    return name


def _identifiers(fields: dict[str, Any], *, anonymous_ok: bool) -> dict[str, str]:
    user_id = None
    for key in _ID_KEYS:
        value = fields.pop(key, None)
        if user_id is None and value is not None:
            user_id = _identifier_value(value, key)
    if user_id is not None:
        return {"id": user_id}
    for key in ("email", "cio_id"):
        if fields.get(key) is not None:
            return {key: _identifier_value(fields.pop(key), key)}
    if anonymous_ok and fields.get("anonymous_id") is not None:
        return {"anonymous_id": _identifier_value(fields.pop("anonymous_id"), "anonymous_id")}
    who = "user_id, email, cio_id or anonymous_id" if anonymous_ok else "user_id, email or cio_id"
    raise InvalidEventError(
        f"the event names no person: pass {who} (or bind it in the logging context)",
        reason="missing_identifier",
        field="identifiers",
    )


def _identifier_value(value: object, key: str) -> str:
    if type(value) is str and 0 < len(value) <= _SHORT_IDENTIFIER and not value.isspace():
        return value  # the common case: short enough whatever its characters' UTF-8 width
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, uuid.UUID):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(
            f"{key} must be a non-empty string or an integer, got {type(value).__name__}",
            reason="invalid_identifier",
            field=f"identifiers.{key}",
        )
    size = len(value.encode())
    if size > MAX_IDENTIFIER_BYTES:
        raise InvalidEventError(
            f"{key} is {size} bytes; the Track API takes at most {MAX_IDENTIFIER_BYTES}",
            reason="identifier_too_long",
            field=f"identifiers.{key}",
        )
    return value


def _merge_side(value: object, side: str) -> dict[str, str]:
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = {"id": value}
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidEventError(
            f"merge needs {side}= one identifier, e.g. {side}={{'id': 'u1'}}",
            reason="invalid_identifier",
            field=side,
        )
    ((key, raw),) = value.items()
    if key not in IDENTIFIER_KEYS:
        raise InvalidEventError(
            f"merge {side} must be identified by id, email or cio_id, not {key!r}",
            reason="invalid_identifier",
            field=side,
        )
    return {key: _identifier_value(raw, key)}


def _device(fields: dict[str, Any], timestamp: int, *, full: bool) -> dict[str, Any]:
    # All three names are taken out of the data; the first given wins (device_token).
    candidates = [fields.pop(key, None) for key in ("device_token", "token", "device_id")]
    token = next((value for value in candidates if value), None)
    if not isinstance(token, str) or not token:
        raise InvalidEventError(
            "a device action needs device_token='...'",
            reason="missing_device",
            field="device.token",
        )
    device: dict[str, Any] = {"token": token}
    if not full:
        return device
    platform = fields.pop("platform", None)
    if platform not in DEVICE_PLATFORMS:
        raise InvalidEventError(
            "add_device needs platform='ios' or platform='android'",
            reason="invalid_device",
            field="device.platform",
        )
    device["platform"] = platform
    last_used = fields.pop("last_used", None)
    device["last_used"] = timestamp if last_used is None else _coerce(last_used, "last_used", 0)
    attributes = _coerce_data(fields)
    if attributes:
        device["attributes"] = attributes
    return device


def _coerce_data(fields: dict[str, Any]) -> dict[str, Any]:
    # A trailing underscore lets a log call use a Python keyword: from_ -> "from".
    # Most values are str, int, bool or None and need no call (once per key per event).
    plain = _PLAIN
    return {
        (key[:-1] if key[-1:] == "_" and len(key) > 1 else key): (
            value if type(value) in plain else _coerce(value, key, 0)
        )
        for key, value in fields.items()
    }


def _coerce(value: Any, path: str, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        raise InvalidEventError(
            f"{path} is nested more than {_MAX_DEPTH} levels deep (a cycle?)",
            reason="too_deep",
            field=f"attributes.{path}",
        )
    if isinstance(value, dict):
        return {_key(k, path): _coerce(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_coerce(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [_coerce(v, f"{path}[]", depth + 1) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return int(aware.timestamp())
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return _coerce(value.value, path, depth + 1)
    if isinstance(value, bool | str):
        return bool(value) if isinstance(value, bool) else str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)  # beyond a float's range this is inf: null, like inf itself
        return as_float if math.isfinite(as_float) else None
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidEventError(
                f"{path} is bytes that are not UTF-8 text",
                reason="unsupported_value",
                field=f"attributes.{path}",
            ) from None
    if isinstance(value, BaseModel):
        return _coerce(value.model_dump(), path, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # One level at a time, not dataclasses.asdict: that recurses without a bound and
        # a cycle would end in RecursionError instead of too_deep.
        shallow = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _coerce(shallow, path, depth + 1)
    raise InvalidEventError(
        f"{path} is a {type(value).__qualname__}, which has no JSON form; log a str, number, "
        f"bool, list, dict, datetime, Decimal, UUID, Enum or a pydantic model",
        reason="unsupported_value",
        field=f"attributes.{path}",
    )


def _key(key: object, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int | float) or key is None:
        return json.dumps(key)
    raise InvalidEventError(
        f"{path} has a {type(key).__qualname__} key; JSON object keys are strings",
        reason="unsupported_value",
        field=f"attributes.{path}",
    )


def _check_identify_attributes(data: dict[str, Any]) -> None:
    if len(data) > MAX_IDENTIFY_ATTRIBUTES:
        raise InvalidEventError(
            f"identify sets {len(data)} attributes; the Track API takes at most "
            f"{MAX_IDENTIFY_ATTRIBUTES} per request",
            reason="too_many_attributes",
            field="attributes",
        )
    for key, value in data.items():
        if len(key.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            raise InvalidEventError(
                f"an attribute name is longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes",
                reason="attribute_name_too_long",
                field=f"attributes.{key[:40]}",
            )
        size = len(value.encode()) if type(value) is str else len(encode(value))
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidEventError(
                f"attribute {key!r} is {size:,} bytes; the Track API takes at most "
                f"{MAX_ATTRIBUTE_VALUE_BYTES:,} per attribute value",
                reason="attribute_value_too_large",
                field=f"attributes.{key}",
            )
