"""The emulator's own endpoint, ``GET /_emulator/operations``: the operations it accepted,
filtered, as JSON, for processes other than the one that runs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ._http import Reply

__all__ = ["APP_ROUTE_PREFIX", "OPERATIONS_PATH", "answer_control", "is_control"]

OPERATIONS_PATH: Final = "/_emulator/operations"
"""Where the emulator lists what it accepted."""
APP_ROUTE_PREFIX: Final = "send_"
"""How the route of an App API message begins: ``send_email``, ``send_push``."""
_PREFIX: Final = "/_emulator"
_FILTERS: Final = ("name", "action", "user_id", "route")


def is_control(path: str) -> bool:
    """Whether ``path`` (without its query) is one of the emulator's own: not the API's."""
    return path == _PREFIX or path.startswith(_PREFIX + "/")


def answer_control(method: str, target: str, records: Callable[[], list[dict[str, Any]]]) -> Reply:
    """Answer a request for one of the emulator's own paths.

    Args:
        method: The request's method.
        target: The request target, query string included.
        records: Returns the accepted records (``received_at``, ``route``, ``operation``)
            in arrival order; called only for a request it answers with them.

    Returns:
        200 ``{"operations": [record, ...]}`` for ``GET /_emulator/operations``, keeping the
        records that match every filter given (``name``, ``action``, ``user_id``,
        ``route``; a filter given twice matches either value); 400 for another filter;
        405 for another method; 404 for another path.
    """
    parts = urlsplit(target)
    if parts.path != OPERATIONS_PATH:
        return _error(404, f"Not found: {method} {parts.path}; try GET {OPERATIONS_PATH}")
    if method != "GET":
        reply = _error(405, f"{OPERATIONS_PATH} answers GET only, not {method}")
        reply.headers["Allow"] = "GET"
        return reply
    filters = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(filters) - set(_FILTERS))
    if unknown:
        return _error(
            400, f"unknown filter {unknown[0]!r}: filter by name, action, user_id or route"
        )
    matching = [
        record
        for record in records()
        if all(_field(record, key) in values for key, values in filters.items())
    ]
    return Reply(200, {"operations": matching})


def _field(record: dict[str, Any], key: str) -> str | None:
    """The record's value for the filter ``key``, as text; None when it has none."""
    if key == "route":
        return str(record["route"])
    operation = record["operation"]
    if key == "user_id":
        # An App API message holds its person in the request it was sent with.
        app = str(record["route"]).startswith(APP_ROUTE_PREFIX)
        identifiers = (operation["request"] if app else operation).get("identifiers")
        value = identifiers.get("id") if isinstance(identifiers, dict) else None
        return None if value is None else str(value)
    value = operation.get(key)
    return value if isinstance(value, str) else None


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})
