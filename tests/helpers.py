"""Helpers shared by the test modules: snapshots built by hand, and what they become."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import strategies as st

from customerio_logging._capture import Snapshot, capture_event_dict, capture_record
from customerio_logging._operation import build_operation
from customerio_logging._schema import Taxonomy
from customerio_logging._wire import Operation
from customerio_logging.exceptions import InvalidEventError

CREATED = 1_700_000_000.75  # 2023-11-14T22:13:20.750Z, far from "now"


def cap(
    tag: object = "evt", *, message: object = "msg", created: float = CREATED, **fields: Any
) -> Snapshot:
    """A snapshot of a log call tagged ``tag`` that carries ``fields``."""
    return Snapshot(tag, message, fields, created)


def build(snapshot: Snapshot, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """The operation's body, decoded: what the Track API would receive."""
    op = build_operation(snapshot, taxonomy or Taxonomy())
    decoded = json.loads(op.body)
    assert isinstance(decoded, dict)
    return decoded


def attributes(**fields: Any) -> Any:
    """The attributes an event with these fields (and user_id u1) is sent with."""
    return build(cap(user_id="u1", **fields)).get("attributes")


def outcome(snapshot: Snapshot) -> Operation | InvalidEventError:
    """The operation, or the InvalidEventError that refused it; anything else escapes."""
    try:
        return build_operation(snapshot, Taxonomy())
    except InvalidEventError as error:
        return error


def invalid(snapshot: Snapshot, taxonomy: Taxonomy | None = None) -> InvalidEventError:
    """The InvalidEventError that refuses ``snapshot``; the test fails if none does."""
    with pytest.raises(InvalidEventError) as info:
        build_operation(snapshot, taxonomy or Taxonomy())
    return info.value


def capture_through(through: str, fields: dict[str, object]) -> Snapshot | None:
    """Capture ``fields`` as a stdlib record, a structlog event dict, or a dict message."""
    if through == "record":
        return capture_record(logging.makeLogRecord({"msg": "e", **fields}))
    if through == "event_dict":
        return capture_event_dict({"event": "e", **fields})
    return capture_record(logging.makeLogRecord({"msg": {"event": "e", **fields}}))


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.integers(min_value=0, max_value=40_000).map(lambda n: "x" * n),
)
"""Arbitrary JSON-like scalars: what a log call could carry."""
