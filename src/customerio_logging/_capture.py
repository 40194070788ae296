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
import itertools
import json
import json.encoder
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from ._schema import Taxonomy
from ._wire import Operation, new_ulid
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
# Every item of a container takes at least one byte of the operation's JSON, so a value
# holding more items than an operation has bytes can never be sent. Copying and
# converting stop there: a value's size (or a container whose iteration never ends)
# must not hold a thread.
_MAX_ITEMS = MAX_OPERATION_BYTES
_COPIED = frozenset({dict, list, tuple, set, frozenset})
# Iterable, but converted as a whole, never item by item (or bounded by their type).
_ITERABLE_AS_IS = (str, bytes, bytearray, memoryview, BaseModel, enum.Enum)
# Shared with the dispatch thread as they are: bounded in size by their type.
_SHARED = frozenset({dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, bytes})


class Captured(str):
    """The value the processor leaves in ``cio_event`` once it has taken an event.

    A ``str`` (the event name), so renderers print it; its type tells the handler that
    the event was already sent, when the same event dict reaches stdlib logging.
    """

    __slots__ = ()


class _UnreadableTag:
    """Stands for a ``cio_event`` value whose truth cannot be tested (a numpy array).

    Such a call is taken, so that it is counted (invalid, with its reason), rather
    than the log call raising.
    """

    __slots__ = ("kind",)

    def __init__(self, tag: object) -> None:
        self.kind = type(tag).__qualname__


class _Refused:
    """Stands for a field value that could not be copied on the app's thread: too many
    items, or a dict key or set item whose hash raised. Building the event reports it."""

    __slots__ = ("reason", "why")

    def __init__(self, reason: str, why: str) -> None:
        self.reason = reason
        self.why = why


class _BoundedIterable:
    """Stands for an object of the app's that can be iterated (a numpy array, a class with
    ``__iter__``): a declared event's model may iterate it, and this stops that iteration
    one item past the bound. Building it otherwise refuses it, as any unknown type."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __iter__(self) -> Iterator[Any]:
        items = iter(self.value)  # type: ignore[call-overload]
        yield from itertools.islice(items, _MAX_ITEMS)
        for _ in itertools.islice(items, 1):
            raise ValueError(_too_many_items())


class _TooManyItemsError(Exception):
    pass


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
        try:
            if not tag or type(tag) is Captured:
                return None
        except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
            tag = _UnreadableTag(tag)
        return Capture(
            tag, msg.get("event"), _snapshot_fields(msg, _STRUCTLOG_KEYS), record.created
        )
    tag = record.__dict__.get(TAG)
    try:
        if not tag or type(tag) is Captured:
            return None
    except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
        tag = _UnreadableTag(tag)
    fields = _snapshot_fields(record.__dict__, _RECORD_KEYS)
    return Capture(tag, record.getMessage(), fields, record.created)


def capture_event_dict(event_dict: Mapping[str, Any]) -> Capture | None:
    """Snapshot a structlog event dict, or return None if it is not tagged."""
    tag = event_dict.get(TAG)
    try:
        if not tag or type(tag) is Captured:
            return None
    except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
        tag = _UnreadableTag(tag)
    return Capture(
        tag, event_dict.get("event"), _snapshot_fields(event_dict, _STRUCTLOG_KEYS), time.time()
    )


def _snapshot_fields(source: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
    # Copy containers now: the app may mutate a list after logging it, and the
    # dispatch thread reads these values later. Scalars and other objects are shared.
    try:
        return {
            key: value if type(value) in _SCALARS else _snapshot(value, 0, None)
            for key, value in source.items()
            if key not in skip
        }
    except Exception:  # noqa: BLE001 - see _refusing_snapshot
        return {
            key: value if type(value) in _SCALARS else _refusing_snapshot(value)
            for key, value in source.items()
            if key not in skip
        }


def _refusing_snapshot(value: Any) -> Any:
    """A field's copy, or what building the event will refuse it for: more items than an
    operation can hold, or a dict key or set item whose hash raised."""
    try:
        return _snapshot(value, 0, None)
    except _TooManyItemsError:
        return _Refused("operation_too_large", _too_many_items())
    except Exception as exc:  # noqa: BLE001 - the app's __hash__ or __eq__
        return _Refused(
            "unsupported_value",
            f"holds a dict key or set item whose hash raised {type(exc).__name__}",
        )


def _snapshot(value: Any, depth: int, budget: list[int] | None) -> Any:
    # ``budget``: items the field may still hold. A value that shares one list many
    # times is far larger than its memory: each copy counts.
    if depth > _MAX_DEPTH:
        return value
    kind = type(value)
    if kind not in _COPIED:
        return value if kind in _SHARED else _snapshot_other(value, depth, budget)
    if budget is None:
        budget = [_MAX_ITEMS]
    budget[0] -= len(value)
    if budget[0] < 0:
        raise _TooManyItemsError
    scalars = _SCALARS  # most items are: no call for them
    depth += 1
    if kind is dict:
        return {
            k: v if type(v) in scalars else _snapshot(v, depth, budget) for k, v in value.items()
        }
    items = [v if type(v) in scalars else _snapshot(v, depth, budget) for v in value]
    return items if kind is list else kind(items)


def _snapshot_other(value: Any, depth: int, budget: list[int] | None) -> Any:
    """A value of another type: shared as it is, unless its size has no bound.

    A declared event's model sees these values before building bounds anything: a
    Decimal or int subclass of a million digits, a mapping or sequence subclass whose
    iteration never ends, an iterator. So they are copied within bounds (as the built-in
    container they extend) or refused here, on the app's thread, at a cost that does not
    grow with their size.
    """
    if isinstance(value, Decimal):
        return _snapshot_decimal(value)
    if isinstance(value, int):  # an int subclass (IntEnum included)
        why = _too_many_digits(int.bit_length(value) * _DIGITS_PER_BIT)
        return value if why is None else _Refused("unsupported_value", why)
    if isinstance(value, Mapping):
        return _snapshot_items(dict, value.items, depth, budget)
    if isinstance(value, list | tuple | set | frozenset):
        return _snapshot_items(_base_container(value), lambda: value, depth, budget)
    if isinstance(value, Iterator) or (type(value) is range and len(value) > _MAX_ITEMS):
        return _Refused(
            "unsupported_value",
            f"is an iterator or range ({type(value).__qualname__}); log a list instead",
        )
    if hasattr(type(value), "__iter__") and not isinstance(value, _ITERABLE_AS_IS):
        return _BoundedIterable(value)
    return value


def _snapshot_items(
    base: type, items: Callable[[], Iterable[Any]], depth: int, budget: list[int] | None
) -> Any:
    """A container subclass copied as the built-in ``base``: at most one item past the
    bound is ever read, so an endless iteration ends here."""
    try:
        taken = list(itertools.islice(items(), _MAX_ITEMS + 1))
    except Exception as exc:  # noqa: BLE001 - the app's __iter__ or items()
        return _Refused("unsupported_value", f"raised {type(exc).__name__} when iterated")
    if len(taken) > _MAX_ITEMS:
        return _Refused("operation_too_large", _too_many_items())
    return _snapshot(base(taken), depth, budget)


def _base_container(value: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]) -> type:
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            return base
    raise AssertionError("not a container")  # pragma: no cover - the caller checked


def _snapshot_decimal(value: Decimal) -> Any:
    # Refused here, before a declared event's model sees it: pydantic's own Decimal ->
    # int takes minutes for Decimal("1e100000000").
    big = value.is_finite() and not value.is_zero()
    why = _too_many_digits(value.adjusted() + 1) if big else None
    return value if why is None else _Refused("unsupported_value", why)


def _too_many_items() -> str:
    return (
        f"holds more than {_MAX_ITEMS:,} items in all; an operation of at most "
        f"{MAX_OPERATION_BYTES:,} bytes cannot hold them"
    )


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
    if type(capture.tag) is _UnreadableTag:
        raise InvalidEventError(
            f"cio_event must be True or the event name; it is a {capture.tag.kind}, whose "
            f"truth value cannot be tested",
            reason="invalid_tag",
            field=TAG,
        )
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
    if isinstance(value, int) and not isinstance(value, bool):
        if int.bit_length(value) > MAX_IDENTIFIER_BYTES * 4:  # too long, without str()
            raise InvalidEventError(
                f"{key} is an integer of more than {MAX_IDENTIFIER_BYTES} digits; the Track "
                f"API takes at most {MAX_IDENTIFIER_BYTES} bytes",
                reason="identifier_too_long",
                field=f"identifiers.{key}",
            )
        value = str(value)
    elif isinstance(value, uuid.UUID):
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
    data = {
        (key[:-1] if key[-1:] == "_" and len(key) > 1 else key): (
            value if type(value) in plain else _coerce(value, key, 0)
        )
        for key, value in fields.items()
    }
    if len(data) != len(fields):
        # Two keys that became one (from and from_): say so rather than lose one.
        pairs = [(k, k[:-1] if k[-1:] == "_" and len(k) > 1 else k) for k in fields]
        raise _collision(pairs, None)
    return data


def _coerce(value: Any, path: str, depth: int, budget: list[int] | None = None) -> Any:
    """``value`` as JSON-ready data; ``budget``: items the whole field may still hold."""
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
    if budget is None:
        budget = [_MAX_ITEMS]
    plain = _PLAIN  # most items are: no call, and no path, for them
    if isinstance(value, dict):
        if kind is dict:  # the common case, inline: its len() is its size
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _too_many(path)
            pairs: Any = value.items()
        else:
            pairs = _take(value, path, budget, items=True)
        out = {
            _key(k, path): v if type(v) in plain else _coerce(v, f"{path}.{k}", depth + 1, budget)
            for k, v in pairs
        }
        if len(out) != len(pairs):
            raise _collision([(k, _key(k, path)) for k, _ in pairs], path)
        return out
    if isinstance(value, list | tuple):
        if kind is list or kind is tuple:  # the common case, inline
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _too_many(path)
        else:
            value = _take(value, path, budget)
        return [
            v if type(v) in plain else _coerce(v, f"{path}[{i}]", depth + 1, budget)
            for i, v in enumerate(value)
        ]
    if isinstance(value, set | frozenset):
        items = [_coerce(v, f"{path}[]", depth + 1, budget) for v in _take(value, path, budget)]
        try:
            return sorted(items)
        except TypeError:
            return items
    return _coerce_scalar(value, path, depth, budget)


def _coerce_object(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump()
        except Exception as exc:  # noqa: BLE001 - the app's serializer: translated here
            raise _unsupported(
                path, f"is a pydantic model whose model_dump() raised {type(exc).__name__}"
            ) from None
        return _coerce(dumped, path, depth + 1, budget)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # One level at a time, not dataclasses.asdict: that recurses without a bound and
        # a cycle would end in RecursionError instead of too_deep.
        shallow = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _coerce(shallow, path, depth + 1, budget)
    if isinstance(value, _Refused):
        raise InvalidEventError(
            f"{path} {value.why}", reason=value.reason, field=f"attributes.{path}"
        )
    if isinstance(value, _BoundedIterable):
        value = value.value
    raise _unsupported(
        path,
        f"is a {type(value).__qualname__}, which has no JSON form; log a str, number, "
        f"bool, list, dict, datetime, Decimal, UUID, Enum or a pydantic model",
    )


def _coerce_scalar(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        try:
            return int(aware.timestamp())
        except (OverflowError, ValueError, OSError):
            raise _unsupported(path, "is a datetime with no Unix timestamp") from None
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return _coerce(value.value, path, depth + 1, budget)
    if isinstance(value, bool | str):
        return bool(value) if isinstance(value, bool) else str(value)
    if isinstance(value, int):
        # Checked before any conversion: int -> str takes time quadratic in the digits.
        _check_digits(int.bit_length(value) * _DIGITS_PER_BIT, path)
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return _decimal(value, path)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise _unsupported(path, "is bytes that are not UTF-8 text") from None
    return _coerce_object(value, path, depth, budget)


def _decimal(value: Decimal, path: str) -> int | float | None:
    if not value.is_finite():
        return None
    if value.is_zero():
        return 0
    # Its digits are counted from the exponent before any conversion: int() of
    # Decimal("1e1000000") holds the GIL for close to a minute.
    _check_digits(value.adjusted() + 1, path)
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)  # beyond a float's range this is inf: null, like inf itself
    return as_float if math.isfinite(as_float) else None


_DIGITS_PER_BIT = math.log10(2)


def _check_digits(digits: float, path: str) -> None:
    why = _too_many_digits(digits)
    if why is not None:
        raise _unsupported(path, why)


def _too_many_digits(digits: float) -> str | None:
    """Why a number of ``digits`` digits cannot be encoded; None if it can.

    At most ``sys.get_int_max_str_digits()`` (Python refuses a longer int -> str) and
    never more than an operation's bytes.
    """
    limit = min(sys.get_int_max_str_digits() or MAX_OPERATION_BYTES, MAX_OPERATION_BYTES)
    if digits <= limit:
        return None
    return f"is a number of about {int(digits):,} digits; at most {limit:,} can be encoded"


def _take(value: Any, path: str, budget: list[int], *, items: bool = False) -> Any:
    """The container's items (``items()`` of a dict), but never more than the budget.

    A subclass may override ``__iter__`` or ``items``: its iteration may never end.
    """
    if type(value) in _COPIED:  # a built-in container: its len() is its size
        budget[0] -= len(value)
        taken: Any = value.items() if items else value
    else:
        try:
            taken = list(itertools.islice(value.items() if items else value, budget[0] + 1))
        except Exception as exc:  # noqa: BLE001 - the app's __iter__ or items()
            raise _unsupported(path, f"raised {type(exc).__name__} when iterated") from None
        budget[0] -= len(taken)
    if budget[0] < 0:
        raise _too_many(path)
    return taken


def _too_many(path: str) -> InvalidEventError:
    return InvalidEventError(
        f"{path} {_too_many_items()}", reason="operation_too_large", field=f"attributes.{path}"
    )


def _unsupported(path: str, what: str) -> InvalidEventError:
    return InvalidEventError(
        f"{path} {what}", reason="unsupported_value", field=f"attributes.{path}"
    )


def _collision(pairs: Iterable[tuple[object, str]], path: str | None) -> InvalidEventError:
    """The error for two keys that are one key in JSON (``1`` and ``"1"``, ``from`` and
    ``from_``): one of the two values would be lost."""
    seen: dict[str, object] = {}
    for key, name in pairs:
        if name in seen:
            where = _shown(name if path is None else f"{path}.{name}", repr_=False)
            return InvalidEventError(
                f"{where} is given twice: the keys {_shown(seen[name])} and "
                f"{_shown(key)} are the same key in JSON; rename one",
                reason="duplicate_key",
                field=f"attributes.{where}",
            )
        seen[name] = key
    raise AssertionError("no two keys collide")  # pragma: no cover - callers check first


def _shown(key: object, *, repr_: bool = True) -> str:
    text = repr(key) if repr_ else str(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(key: object, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int):
        _check_digits(int.bit_length(key) * _DIGITS_PER_BIT, path)
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
