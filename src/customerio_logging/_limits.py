"""Track API limits, as the API reference states them: shared by the client and the emulator."""

from __future__ import annotations

from typing import Final

MAX_REQUEST_BYTES: Final = 500_000
"""A ``/api/v2/batch`` body must be smaller than 500 KB."""

BATCH_BODY_BYTES: Final = 475_000
"""What the batcher fills a body up to: the API's limit less a margin."""

MAX_OPERATION_BYTES: Final = 32_000
"""Each operation inside a batch must be 32 KB or smaller."""

MAX_NAME_BYTES: Final = 100
MAX_IDENTIFIER_BYTES: Final = 150
MAX_ATTRIBUTE_NAME_BYTES: Final = 150
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1000
MAX_EVENT_DATA_BYTES: Final = 100_000
MAX_IDENTIFY_ATTRIBUTES: Final = 300

IDENTIFIER_KEYS: Final = ("id", "email", "cio_id")
"""The person identifiers an operation may carry, exactly one of them."""

DEVICE_PLATFORMS: Final = ("ios", "android")
"""The platforms ``add_device`` accepts."""

PERSON_ACTIONS: Final = frozenset(
    {
        "event",
        "identify",
        "page",
        "screen",
        "suppress",
        "unsuppress",
        "delete",
        "add_device",
        "delete_device",
        "merge",
    }
)
NAMED_ACTIONS: Final = frozenset({"event", "page", "screen"})
"""Actions that carry ``name``, ``id`` (a ULID), ``timestamp`` and ``attributes``.

They alone may name an anonymous person (``identifiers: {"anonymous_id": ...}``).
"""
