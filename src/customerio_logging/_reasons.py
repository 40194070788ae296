"""Why an operation was refused: one table of reason codes, shared by the library's own
checks (capture, schema, delivery), its dead letters and the Track API emulator."""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

__all__ = ["REASONS", "ErrorReport"]

# -- an operation's content: the library's checks and the emulator's give the same code
MISSING_NAME: Final = "missing_name"
NAME_TOO_LONG: Final = "name_too_long"
INVALID_NAME: Final = "invalid_name"
MISSING_IDENTIFIER: Final = "missing_identifier"
INVALID_IDENTIFIER: Final = "invalid_identifier"
IDENTIFIER_TOO_LONG: Final = "identifier_too_long"
INVALID_ACTION: Final = "invalid_action"
INVALID_TYPE: Final = "invalid_type"
INVALID_ID: Final = "invalid_id"
INVALID_TIMESTAMP: Final = "invalid_timestamp"
INVALID_ATTRIBUTES: Final = "invalid_attributes"
ATTRIBUTE_NAME_TOO_LONG: Final = "attribute_name_too_long"
ATTRIBUTE_VALUE_TOO_LONG: Final = "attribute_value_too_long"
ATTRIBUTES_TOO_LARGE: Final = "attributes_too_large"
TOO_MANY_ATTRIBUTES: Final = "too_many_attributes"
OPERATION_TOO_LARGE: Final = "operation_too_large"
INVALID_OPERATION: Final = "invalid_operation"
MISSING_DEVICE: Final = "missing_device"
INVALID_DEVICE: Final = "invalid_device"

# -- the library's own: what a log call carried, before anything reached the wire
INVALID_TAG: Final = "invalid_tag"
UNSUPPORTED_VALUE: Final = "unsupported_value"
TOO_DEEP: Final = "too_deep"
DUPLICATE_KEY: Final = "duplicate_key"
UNKNOWN_EVENT: Final = "unknown_event"
SCHEMA_MISMATCH: Final = "schema_mismatch"
INTERNAL_ERROR: Final = "internal_error"

# -- a whole request: the API's answer, or none
INVALID_JSON: Final = "invalid_json"
INVALID_BODY: Final = "invalid_body"
INVALID_BATCH: Final = "invalid_batch"
EMPTY_BATCH: Final = "empty_batch"
INVALID_REQUEST: Final = "invalid_request"
REQUEST_TOO_LARGE: Final = "request_too_large"
UNAUTHORIZED: Final = "unauthorized"
NETWORK_ERROR: Final = "network_error"
REJECTED: Final = "rejected"

REASONS: Final[dict[str, str]] = {
    MISSING_NAME: "an event, page or screen without a name",
    NAME_TOO_LONG: "a name over 100 bytes",
    INVALID_NAME: "a name that is not a non-empty string",
    MISSING_IDENTIFIER: "no user_id, email, cio_id (or anonymous_id where allowed)",
    INVALID_IDENTIFIER: "an identifier of the wrong type, empty, or more than one of them",
    IDENTIFIER_TOO_LONG: "an identifier over 150 bytes",
    INVALID_ACTION: "a cio_action the Track API does not know",
    INVALID_TYPE: 'an operation whose type is not "person"',
    INVALID_ID: "an operation id that is not a ULID",
    INVALID_TIMESTAMP: "a timestamp that is not whole Unix seconds",
    INVALID_ATTRIBUTES: "attributes that are not an object",
    ATTRIBUTE_NAME_TOO_LONG: "an attribute name over 150 bytes",
    ATTRIBUTE_VALUE_TOO_LONG: "an attribute value over 1,000 bytes",
    ATTRIBUTES_TOO_LARGE: "event data over 100,000 bytes",
    TOO_MANY_ATTRIBUTES: "an identify with more than 300 attributes",
    OPERATION_TOO_LARGE: "an operation over 32 KB",
    INVALID_OPERATION: "an operation that is not a JSON object",
    MISSING_DEVICE: "add_device or delete_device without a device",
    INVALID_DEVICE: "a device without a token, or with a bad platform",
    INVALID_TAG: "a cio_event tag that is neither True nor a name, or cannot be read",
    UNSUPPORTED_VALUE: "a value with no JSON form",
    TOO_DEEP: "values nested deeper than 32 levels",
    DUPLICATE_KEY: "two keys that become the same attribute name",
    UNKNOWN_EVENT: 'an undeclared event name with unknown_events="reject"',
    SCHEMA_MISMATCH: "data the event's declared model refuses",
    INTERNAL_ERROR: "a bug, in the library or in a model's validator",
    INVALID_JSON: "a request body that is not JSON",
    INVALID_BODY: "a request body that is not a JSON object",
    INVALID_BATCH: "a request whose batch is not a list",
    EMPTY_BATCH: "a request whose batch has no operation",
    INVALID_REQUEST: "a request with a header the API refuses",
    REQUEST_TOO_LARGE: "a request over 500 KB, even for one operation (HTTP 413)",
    UNAUTHORIZED: "credentials the API refused (HTTP 401/403)",
    NETWORK_ERROR: "no answer: refused, reset, timed out",
    REJECTED: "refused by the API without a reason",
}
"""Every reason code, with what it means."""


class ErrorReport(NamedTuple):
    """What ``on_error`` is told: one drop, dead letter or delivery failure (or several of
    one kind at once), small and free of secrets and payloads.

    Attributes:
        kind: ``dropped`` (never queued or lost from memory: queue full, shut down,
            no spool; or evicted from a full spool), ``dead_lettered`` (invalid, or
            refused by the API for good) or ``failed`` (undeliverable now, and nowhere
            to keep it).
        total: How many events this report is about.
        reason: A reason code (see :data:`REASONS`), or None when there is none.
        message: What happened, in words; never a payload or a secret.
        name: The event's name when the report is about one event and it has one.
    """

    kind: Literal["dropped", "dead_lettered", "failed"]
    total: int
    reason: str | None
    message: str
    name: str | None = None
