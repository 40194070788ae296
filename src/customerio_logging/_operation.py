"""A snapshot -> a Track API operation: the action's shape, its person, its name, its limits.

Runs on the dispatch thread. :func:`build_operation` returns an encoded
:class:`~customerio_logging._wire.Operation`, or raises ``InvalidEventError`` saying why.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from . import _values
from ._capture import ACTION, TAG, USER_ID_KEYS, Snapshot, UnreadableTag
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
from ._reasons import (
    ATTRIBUTE_NAME_TOO_LONG,
    ATTRIBUTE_VALUE_TOO_LONG,
    IDENTIFIER_TOO_LONG,
    INVALID_ACTION,
    INVALID_DEVICE,
    INVALID_IDENTIFIER,
    INVALID_TAG,
    MISSING_DEVICE,
    MISSING_IDENTIFIER,
    MISSING_NAME,
    NAME_TOO_LONG,
    OPERATION_TOO_LARGE,
    TOO_MANY_ATTRIBUTES,
    UNSUPPORTED_VALUE,
)
from ._schema import Taxonomy
from ._values import coerce, coerce_data, encode, encode_text, quote, with_article
from ._wire import Operation, new_ulid
from .exceptions import InvalidEventError

__all__ = ["build_operation"]

Target = tuple[str, Mapping[str, Any] | None]
"""A direct call's action and person (see ``_direct.Target``)."""
_SHORT_IDENTIFIER = MAX_IDENTIFIER_BYTES // 4  # UTF-8 takes at most 4 bytes a character
_SHORT_NAME = MAX_NAME_BYTES // 4
# Operation(...) without the named tuple's Python-level __new__: once per event.
_new_operation = tuple.__new__


def build_operation(
    snapshot: Snapshot,
    taxonomy: Taxonomy,
    op_id: str | None = None,
    target: Target | None = None,
) -> Operation:
    """Turn a snapshot into an encoded Track API operation, its id ``op_id`` (a new ULID
    when None: a direct call's receipt knows its id before the operation is built).

    ``target``: a direct call's action and person (see ``_direct.Target``), given apart
    from its data; None for a log call, whose fields name them (``cio_action``,
    ``user_id``, ...).

    Raises:
        InvalidEventError: The snapshot cannot become a valid operation; ``reason`` and
            ``field`` say why.
    """
    try:
        return _build_operation(snapshot, taxonomy, op_id, target)
    except UnicodeEncodeError:
        # A str holding a lone surrogate has no UTF-8 form. The error's own text quotes
        # the character: payload, so it is not repeated here.
        raise InvalidEventError(
            "the event holds text that is not valid Unicode (a lone surrogate)",
            reason=UNSUPPORTED_VALUE,
            field=None,
        ) from None


def _build_operation(
    snapshot: Snapshot, taxonomy: Taxonomy, op_id: str | None, target: Target | None
) -> Operation:
    if type(snapshot.tag) is UnreadableTag:
        raise InvalidEventError(
            "cio_event must be True or the event name; it is "
            f"{with_article(snapshot.tag.kind)}, whose truth value cannot be tested",
            reason=INVALID_TAG,
            field=TAG,
        )
    fields = dict(snapshot.fields)
    action, person = (fields.pop(ACTION, "event"), None) if target is None else target
    if action in NAMED_ACTIONS:  # the hot path: an event per log call
        return _named_operation(snapshot, taxonomy, op_id, action, fields, person)
    if action not in PERSON_ACTIONS:
        # Quote a short prefix only: enough to spot a typo, never a payload.
        shown = repr(action[:20]) if isinstance(action, str) else type(action).__name__
        raise InvalidEventError(
            f"cio_action {shown} is not one of {', '.join(sorted(PERSON_ACTIONS))}",
            reason=INVALID_ACTION,
            field="action",
        )
    timestamp = int(snapshot.created)
    op: dict[str, Any] = {"type": "person"}
    if op_id is None:
        op_id = new_ulid(snapshot.created)

    if action == "merge":
        op["action"] = action
        op["primary"] = _merge_side(fields.pop("primary", None), "primary")
        op["secondary"] = _merge_side(fields.pop("secondary", None), "secondary")
        return _finish(op, op_id, action)

    op["identifiers"] = _identifiers(fields if person is None else dict(person), anonymous_ok=False)
    op["action"] = action
    if action == "identify":
        data = coerce_data(taxonomy.validate_attributes(fields))
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


def _named_operation(
    snapshot: Snapshot,
    taxonomy: Taxonomy,
    op_id: str | None,
    action: str,
    fields: dict[str, Any],
    person: Mapping[str, Any] | None,
) -> Operation:
    """An event, page or screen: a name, an id, a timestamp and attributes."""
    identifiers = _identifiers(fields if person is None else dict(person), anonymous_ok=True)
    name = _event_name(snapshot)
    if action == "event":
        fields = taxonomy.validate_event(name, fields)
    # No separate check of MAX_EVENT_DATA_BYTES: the per-operation limit is smaller.
    data = coerce_data(fields)
    if op_id is None:
        op_id = new_ulid(snapshot.created)
    try:
        body = _named_body(identifiers, action, name, op_id, int(snapshot.created), data)
    except ValueError as exc:
        raise _encoding_error(exc) from None
    return _checked(op_id, action, name, body)


def _named_body(
    identifiers: dict[str, str],
    action: str,
    name: str,
    op_id: str,
    timestamp: int,
    data: dict[str, Any],
) -> bytes:
    # The hot path: one event per log call.
    dumps = _values.fast_dumps
    if dumps is not None:
        op = {
            "type": "person",
            "identifiers": identifiers,
            "action": action,
            "name": name,
            "id": op_id,
            "timestamp": timestamp,
        }
        if data:
            op["attributes"] = data
        try:
            return dumps(op)
        except TypeError:  # orjson refused a value: the standard library's path decides
            pass
    # Written out rather than built as a dict and encoded whole, which costs twice as
    # much; only `data` goes through the encoder. The key and action come from fixed sets
    # and the id is ASCII: none needs escaping.
    ((key, value),) = identifiers.items()
    text = (
        f'{{"type":"person","identifiers":{{"{key}":{quote(value)}}},"action":"{action}",'
        f'"name":{quote(name)},"id":"{op_id}","timestamp":{timestamp}'
    )
    if data:
        text += ',"attributes":' + encode_text(data)
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
        reason=UNSUPPORTED_VALUE,
        field=None,
    )


def _checked(op_id: str, action: str, name: str | None, body: bytes) -> Operation:
    if len(body) > MAX_OPERATION_BYTES:
        raise InvalidEventError(
            f"the operation is {len(body):,} bytes; the Track API takes at most "
            f"{MAX_OPERATION_BYTES:,} bytes per operation",
            reason=OPERATION_TOO_LARGE,
            field=None,
        )
    return _new_operation(Operation, (op_id, action, name, body))


def _event_name(snapshot: Snapshot) -> str:
    raw = snapshot.tag if isinstance(snapshot.tag, str) else snapshot.message
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidEventError(
            "the event has no name: log a message, or pass cio_event='name'",
            reason=MISSING_NAME,
            field="name",
        )
    name = raw.strip()
    if len(name) <= _SHORT_NAME:
        return name  # the common case: short enough whatever its characters' UTF-8 width
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidEventError(
            f"the event name is {size} bytes; the Track API takes at most {MAX_NAME_BYTES}",
            reason=NAME_TOO_LONG,
            field="name",
        )
    return name


def _identifiers(fields: dict[str, Any], *, anonymous_ok: bool) -> dict[str, str]:
    user_id = None
    for key in USER_ID_KEYS:
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
        reason=MISSING_IDENTIFIER,
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
                reason=IDENTIFIER_TOO_LONG,
                field=f"identifiers.{key}",
            )
        value = str(value)
    elif isinstance(value, uuid.UUID):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(
            f"{key} must be a non-empty string or an integer, got {type(value).__name__}",
            reason=INVALID_IDENTIFIER,
            field=f"identifiers.{key}",
        )
    size = len(value.encode())
    if size > MAX_IDENTIFIER_BYTES:
        raise InvalidEventError(
            f"{key} is {size} bytes; the Track API takes at most {MAX_IDENTIFIER_BYTES}",
            reason=IDENTIFIER_TOO_LONG,
            field=f"identifiers.{key}",
        )
    return value


def _merge_side(value: object, side: str) -> dict[str, str]:
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = {"id": value}
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidEventError(
            f"merge needs {side}= one identifier, e.g. {side}={{'id': 'u1'}}",
            reason=INVALID_IDENTIFIER,
            field=side,
        )
    ((key, raw),) = value.items()
    if key not in IDENTIFIER_KEYS:
        raise InvalidEventError(
            f"merge {side} must be identified by id, email or cio_id, not {key!r}",
            reason=INVALID_IDENTIFIER,
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
            reason=MISSING_DEVICE,
            field="device.token",
        )
    device: dict[str, Any] = {"token": token}
    if not full:
        return device
    platform = fields.pop("platform", None)
    if platform not in DEVICE_PLATFORMS:
        raise InvalidEventError(
            "add_device needs platform='ios' or platform='android'",
            reason=INVALID_DEVICE,
            field="device.platform",
        )
    device["platform"] = platform
    last_used = fields.pop("last_used", None)
    device["last_used"] = timestamp if last_used is None else coerce(last_used, "last_used", 0)
    attributes = coerce_data(fields)
    if attributes:
        device["attributes"] = attributes
    return device


def _check_identify_attributes(data: dict[str, Any]) -> None:
    if len(data) > MAX_IDENTIFY_ATTRIBUTES:
        raise InvalidEventError(
            f"identify sets {len(data)} attributes; the Track API takes at most "
            f"{MAX_IDENTIFY_ATTRIBUTES} per request",
            reason=TOO_MANY_ATTRIBUTES,
            field="attributes",
        )
    for key, value in data.items():
        if len(key.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            raise InvalidEventError(
                f"an attribute name is longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes",
                reason=ATTRIBUTE_NAME_TOO_LONG,
                field=f"attributes.{key[:40]}",
            )
        size = len(value.encode()) if type(value) is str else len(encode(value))
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidEventError(
                f"attribute {key!r} is {size:,} bytes; the Track API takes at most "
                f"{MAX_ATTRIBUTE_VALUE_BYTES:,} per attribute value",
                reason=ATTRIBUTE_VALUE_TOO_LONG,
                field=f"attributes.{key}",
            )
