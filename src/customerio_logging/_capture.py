"""A tagged log call, taken on the app's thread: a LogRecord or structlog event dict -> Snapshot.

:func:`capture_record` and :func:`capture_event_dict` take a cheap, bounded copy (a
:class:`Snapshot`) of the call's fields, and of those ``bind()`` bound, and nothing more;
the dispatch thread later turns it into an operation
(:func:`customerio_logging._operation.build_operation`).
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from pydantic import BaseModel

from ._reasons import OPERATION_TOO_LARGE, UNSUPPORTED_VALUE
from ._values import (
    CONTAINERS,
    DIGITS_PER_BIT,
    MAX_DEPTH,
    MAX_ITEMS,
    BoundedIterable,
    Refused,
    too_many_digits,
    too_many_items,
)

__all__ = [
    "ACTION",
    "BOUND",
    "PERSON_KEYS",
    "RESERVED_KEYS",
    "TAG",
    "USER_ID_KEYS",
    "Snapshot",
    "TakenByProcessor",
    "UnreadableTag",
    "capture_event_dict",
    "capture_record",
    "direct_snapshot",
    "snapshot_event_dict",
]

TAG = "cio_event"
ACTION = "cio_action"
USER_ID_KEYS = ("user_id", "customer_id")
"""The keys that name a person by id, the first given winning."""
_ID_KEYS = (*USER_ID_KEYS, "cio_id", "anonymous_id")
_PERSON_KEYS = (*_ID_KEYS, "email")
_DATA_ACTIONS = ("event", "page", "screen")  # whose logged email may be data
PERSON_KEYS = (*USER_ID_KEYS, "email", "cio_id", "anonymous_id")
"""The keys a log call names its person with."""

BOUND: ContextVar[Mapping[str, Any]] = ContextVar(
    "customerio_logging.bound", default=MappingProxyType({})
)
"""The fields ``bind()`` bound in the current context, added to each tagged log call:
never mutated, replaced by each ``bind`` block (see ``_binding``)."""

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
RESERVED_KEYS: frozenset[str] = _RECORD_KEYS | {ACTION, *PERSON_KEYS}
"""Keys a stdlib log call cannot carry as event data under their own name: a LogRecord's
own attributes, and the keys read as the tag, the action or the person."""
# Iterable, but converted as a whole, never item by item (or bounded by their type).
_ITERABLE_AS_IS = (str, bytes, bytearray, memoryview, BaseModel, enum.Enum)
# Shared with the dispatch thread as they are: bounded in size by their type.
_SHARED = frozenset({dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, bytes})


class TakenByProcessor(str):
    """The value the processor leaves in ``cio_event`` once it has taken an event.

    A ``str`` (the event name), so renderers print it; its type tells the handler that
    the event was already sent, when the same event dict reaches stdlib logging.
    """

    __slots__ = ()


class UnreadableTag:
    """Stands for a ``cio_event`` value whose truth cannot be tested (a numpy array).

    Such a call is taken, so that it is counted (invalid, with its reason), rather
    than the log call raising.
    """

    __slots__ = ("kind",)

    def __init__(self, tag: object) -> None:
        self.kind = type(tag).__qualname__


# Snapshot(...) without the named tuple's Python-level __new__: once per tagged call.
_new_snapshot = tuple.__new__


class _TooManyItemsError(Exception):
    pass


class Snapshot(NamedTuple):
    """A tagged log call, as taken on the app's thread."""

    tag: object
    """``True`` (name the event after the message) or the event name."""
    message: object
    """The log message (structlog's ``event``)."""
    fields: dict[str, Any]
    """The call's keys, minus logging's own; containers copied."""
    created: float
    """When the call was made, in Unix seconds."""


def capture_record(record: logging.LogRecord) -> Snapshot | None:
    """Snapshot a stdlib record, or return None if it is not tagged (or already taken)."""
    msg = record.msg
    if type(msg) is dict and TAG in msg:
        # structlog's ProcessorFormatter puts the whole event dict in record.msg. A dict
        # message without the tag may still be tagged on the record itself (extra=).
        tag = msg.get(TAG)
        try:
            if not tag or type(tag) is TakenByProcessor:
                return None
        except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
            tag = UnreadableTag(tag)
        fields = _snapshot_fields(msg, _STRUCTLOG_KEYS)
        bound = BOUND.get()
        if bound:
            _add_bound(fields, bound)
        return _new_snapshot(Snapshot, (tag, msg.get("event"), fields, record.created))
    tag = record.__dict__.get(TAG)
    try:
        if not tag or type(tag) is TakenByProcessor:
            return None
    except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
        tag = UnreadableTag(tag)
    fields = _snapshot_fields(record.__dict__, _RECORD_KEYS)
    bound = BOUND.get()
    if bound:
        _add_bound(fields, bound)
    return _new_snapshot(Snapshot, (tag, record.getMessage(), fields, record.created))


def capture_event_dict(event_dict: Mapping[str, Any]) -> Snapshot | None:
    """Snapshot a structlog event dict, or return None if it is not tagged."""
    tag = event_dict.get(TAG)
    try:
        if not tag or type(tag) is TakenByProcessor:
            return None
    except Exception:  # noqa: BLE001 - a tag with no truth value: taken, then refused
        tag = UnreadableTag(tag)
    return snapshot_event_dict(event_dict, tag)


def snapshot_event_dict(event_dict: Mapping[str, Any], tag: object) -> Snapshot:
    """Snapshot a structlog event dict whose tag the caller has read and found set
    (an :class:`UnreadableTag` when its truth could not be tested)."""
    fields = _snapshot_fields(event_dict, _STRUCTLOG_KEYS)
    bound = BOUND.get()
    if bound:
        _add_bound(fields, bound)
    return _new_snapshot(Snapshot, (tag, event_dict.get("event"), fields, time.time()))


def direct_snapshot(tag: object, fields: Mapping[str, Any]) -> Snapshot:
    """A direct call's snapshot (see ``_direct``): its fields copied as a log call's are,
    the time taken now."""
    return Snapshot(tag, None, _snapshot_fields(fields, _NOTHING), time.time())


_NOTHING: frozenset[str] = frozenset()


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


def _add_bound(fields: dict[str, Any], bound: Mapping[str, Any]) -> None:
    """Add to a tagged call's ``fields`` those bound by ``bind()`` that the call did not pass.

    As if the call had passed them, the call's own keys winning (None included), but
    for the person: a call that names someone itself gets no bound person key, so that
    nothing of the bound person (an email, an id) is sent about someone else. An event,
    page or screen names someone by an id (``user_id``, ``customer_id``, ``cio_id``,
    ``anonymous_id``): an ``email`` it logs is data of the bound person. Any other action
    (``identify``, ``delete``, ``suppress``, devices) names someone by any person key,
    ``email`` included: a delete by email deletes that email's person.
    """
    action = fields.get(ACTION, "event")
    named_by = _ID_KEYS if action in _DATA_ACTIONS else _PERSON_KEYS
    someone_else = any(key in fields for key in named_by)
    for key, value in bound.items():
        if key in fields or (someone_else and key in _PERSON_KEYS):
            continue
        # Copied now, as the call's own values are: the app may change a bound list later.
        fields[key] = value if type(value) in _SCALARS else _refusing_snapshot(value)


def _refusing_snapshot(value: Any) -> Any:
    """A field's copy, or what building the event will refuse it for: more items than an
    operation can hold, or a dict key or set item whose hash raised."""
    try:
        return _snapshot(value, 0, None)
    except _TooManyItemsError:
        return Refused(OPERATION_TOO_LARGE, too_many_items())
    except Exception as exc:  # noqa: BLE001 - the app's __hash__ or __eq__
        return Refused(
            UNSUPPORTED_VALUE,
            f"holds a dict key or set item whose hash raised {type(exc).__name__}",
        )


def _snapshot(value: Any, depth: int, budget: list[int] | None) -> Any:
    # ``budget``: items the field may still hold. A value that shares one list many
    # times is far larger than its memory: each copy counts.
    if depth > MAX_DEPTH:
        return value
    kind = type(value)
    if kind not in CONTAINERS:
        return value if kind in _SHARED else _snapshot_other(value, depth, budget)
    if budget is None:
        budget = [MAX_ITEMS]
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
        why = too_many_digits(int.bit_length(value) * DIGITS_PER_BIT)
        return value if why is None else Refused(UNSUPPORTED_VALUE, why)
    if isinstance(value, Mapping):
        return _snapshot_items(dict, value.items, depth, budget)
    if isinstance(value, list | tuple | set | frozenset):
        return _snapshot_items(_base_container(value), lambda: value, depth, budget)
    if isinstance(value, Iterator) or (type(value) is range and len(value) > MAX_ITEMS):
        return Refused(
            UNSUPPORTED_VALUE,
            f"is an iterator or range ({type(value).__qualname__}); log a list instead",
        )
    if hasattr(type(value), "__iter__") and not isinstance(value, _ITERABLE_AS_IS):
        return BoundedIterable(value)
    return value


def _snapshot_items(
    base: type, items: Callable[[], Iterable[Any]], depth: int, budget: list[int] | None
) -> Any:
    """A container subclass copied as the built-in ``base``: at most one item past the
    bound is ever read, so an endless iteration ends here."""
    try:
        taken = list(itertools.islice(items(), MAX_ITEMS + 1))
    except Exception as exc:  # noqa: BLE001 - the app's __iter__ or items()
        return Refused(UNSUPPORTED_VALUE, f"raised {type(exc).__name__} when iterated")
    if len(taken) > MAX_ITEMS:
        return Refused(OPERATION_TOO_LARGE, too_many_items())
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
    why = too_many_digits(value.adjusted() + 1) if big else None
    return value if why is None else Refused(UNSUPPORTED_VALUE, why)
