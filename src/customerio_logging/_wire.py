"""What every layer shares about the wire: an Operation, its ULID, the batch body's
framing, a transport's Response and the Transport protocol. Imports nothing of ours."""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NamedTuple, Protocol

__all__ = [
    "BATCH_PATH",
    "BODY_OVERHEAD",
    "Operation",
    "Response",
    "Transport",
    "batch_body",
    "new_ulid",
    "reseed_ulids",
    "shorten",
    "status_phrase",
]

BATCH_PATH = "/api/v2/batch"
_PREFIX = b'{"batch":['
_SUFFIX = b"]}"
BODY_OVERHEAD = len(_PREFIX) + len(_SUFFIX)
"""Bytes a batch body adds to its operations' own (their commas aside)."""


class Operation(NamedTuple):
    """One Track API ``/api/v2/batch`` operation, already serialized.

    The body is encoded once, when the operation is made; a batch body is built by
    joining these bytes, and the id survives every resend. A named tuple: immutable, and
    made once per event on the dispatch thread at half a frozen dataclass's cost.

    Attributes:
        id: The ULID made for this operation at capture; sent as ``id`` on named actions,
            where the API uses it to drop duplicates.
        action: The Track API action (``event``, ``identify``...).
        name: The event, page or screen name; None for other actions.
        body: The operation as compact UTF-8 JSON.
    """

    id: str
    action: str
    name: str | None
    body: bytes

    def __repr__(self) -> str:
        # The body is the event's payload: keep it out of reprs, logs and errors.
        return f"Operation(id={self.id!r}, action={self.action!r}, name={self.name!r})"


def batch_body(ops: Sequence[Operation]) -> bytes:
    """The ``/api/v2/batch`` body for ``ops``, joined from their encoded bytes."""
    if not ops:
        return _PREFIX + _SUFFIX
    # One join makes the whole body: framing it afterwards would copy it twice more, and
    # a fresh buffer of a few hundred KB each time costs more than the copy (page faults).
    parts = [op.body for op in ops]
    parts[0] = _PREFIX + parts[0]
    parts[-1] += _SUFFIX
    return b",".join(parts)


@dataclass(frozen=True, slots=True)
class Response:
    """What a transport got back: status, headers and raw body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class Transport(Protocol):
    """Sends one batch body to the Track API.

    ``send`` returns the HTTP response whatever its status and raises ``DeliveryError``
    (with ``status_code=None``) when no response came: connection refused, reset, timeout,
    or no complete answer by the request's deadline.
    """

    def send(self, body: bytes) -> Response: ...

    def close(self) -> None: ...


def shorten(text: str, limit: int) -> str:
    """``text`` on one line and cut to ``limit`` characters: for counters, errors and
    dead letters, which must never carry a payload's worth of anything.

    Control characters (a terminal's escape sequences too) become spaces. Only the first
    few times ``limit`` characters are read: the text may be megabytes from a server.
    """
    head = text[: 4 * limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else " " for c in head)
    line = " ".join(head.split())
    if len(line) <= limit and len(head) == len(text):
        return line
    return line[: limit - 1] + "…"


def status_phrase(status: int) -> str:
    """The reason phrase HTTP gives ``status`` (``404`` -> ``"Not Found"``); ``""`` for a
    status HTTP does not name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# ULIDs: 48 bits of milliseconds and 80 random bits, Crockford base32. Made here rather
# than with python-ulid's constructor because this runs once per event on the dispatch
# thread: the time part is cached per millisecond, and the random parts are made 256 at
# a time, each 16 random bytes mapped to one of the 32 characters (256 is a multiple of
# 32, so every character is equally likely: 5 random bits a character, 80 in all).
# About a twentieth of python-ulid's cost; tests parse the result back with python-ulid.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BYTE_TO_CHAR = bytes(ord(_CROCKFORD[byte % 32]) for byte in range(256))
_RANDOM_CHARS = 16
_PARTS_PER_DRAW = 256
_random = random.Random(os.urandom(32))
_time_part: tuple[int, str] = (-1, "")
# Random parts drawn ahead. Each popleft() is atomic under the GIL, so two threads
# making ids at once (the dispatch thread, a direct call) never take the same one;
# either may refill it, which only draws more.
_parts: deque[str] = deque()


def reseed_ulids() -> None:
    """Draw new randomness for the ids, forgetting those drawn ahead: a forked child
    must not repeat its parent's (Customer.io would drop them as duplicates). The fork
    hooks call this first."""
    _random.seed(os.urandom(32))
    _parts.clear()


def _draw_parts() -> None:
    chars = _random.randbytes(_RANDOM_CHARS * _PARTS_PER_DRAW).translate(_BYTE_TO_CHAR).decode()
    _parts.extend([chars[i : i + _RANDOM_CHARS] for i in range(0, len(chars), _RANDOM_CHARS)])


def new_ulid(timestamp: float) -> str:
    """Return a new ULID whose time part is ``timestamp`` (Unix seconds)."""
    global _time_part
    millis = int(timestamp * 1000)
    cached_millis, prefix = _time_part
    if millis != cached_millis:
        prefix = "".join([_CROCKFORD[(millis >> shift) & 31] for shift in range(45, -5, -5)])
        _time_part = (millis, prefix)
    while True:
        try:
            return prefix + _parts.popleft()
        except IndexError:  # drawn out (other threads may empty it again meanwhile)
            _draw_parts()
