"""CapturedEvents: every operation the code under test produces, kept in memory as it is
made (the ``cio_events`` fixture), with assertions that say what they saw."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from .. import _routing
from .._capture import Snapshot
from .._direct import Direct
from .._operation import build_operation
from .._reasons import INTERNAL_ERROR
from .._receipt import Outcome
from .._schema import Taxonomy
from .._wire import Operation
from ..exceptions import InvalidEventError
from ._isolation import isolated
from ._matching import differences, explain, wanted

__all__ = ["CapturedEvent", "CapturedEvents", "CapturedMessage", "InvalidCall", "capture_events"]

# Where a pinned configure() points while events are captured: a port nothing listens on
# (nothing is sent anyway: every call is taken before it is queued).
_NOWHERE = "http://127.0.0.1:9"
_SENT = Outcome("sent")


class CapturedEvent(NamedTuple):
    """One operation as it would have been sent.

    Attributes:
        id: Its ULID (a direct call's receipt has the same).
        action: ``event``, ``identify``, ``page``, ``screen``, ...
        name: The event, page or screen name; None for other actions.
        identifiers: Who: ``{"id": ...}``, ``{"email": ...}``, ``{"anonymous_id": ...}``.
        attributes: The data sent with it, as on the wire (``from_`` is ``from``).
        operation: The whole operation, as the Track API receives it.
    """

    id: str
    action: str
    name: str | None
    identifiers: dict[str, Any]
    attributes: dict[str, Any]
    operation: dict[str, Any]

    @property
    def user_id(self) -> str | None:
        """The person's id, when the operation names one."""
        value = self.identifiers.get("id")
        return value if isinstance(value, str) else None


class CapturedMessage(NamedTuple):
    """A transactional message (``send_email``, ``send_push``) as it would have been sent.

    Attributes:
        kind: ``email`` or ``push``.
        request: The request's fields, as the official client's request object has them.
        delivery_id: The id its answer gave.
    """

    kind: str
    request: dict[str, Any]
    delivery_id: str


class InvalidCall(NamedTuple):
    """A call that could not become an operation (nothing would have been sent).

    Attributes:
        name: The event's name, if it had one.
        reason: The reason code (see the README's table).
        field: The field at fault, when known.
        message: Why, in words.
    """

    name: str | None
    reason: str
    field: str | None
    message: str


class CapturedEvents:
    """What the code under test sent, kept as it was logged or called: no thread, no HTTP.

    Every tagged log call and direct call, of any bridge, goes through the real capture
    and validation (the app's ``events`` schema included) and lands here at once, in
    place of being queued; a ``configure()`` the app makes meanwhile cannot send
    anywhere. Use it as the ``cio_events`` fixture, or with :func:`capture_events`.

    ``send_email`` and ``send_push`` are kept too (:attr:`messages`), answered with a
    made-up ``delivery_id``.

    Attributes:
        strict: Raise ``InvalidEventError`` at the call (log calls too) for an event that
            cannot be sent, so that the test fails there with the field and the reason
            (on by default). Only on the thread that made this object (the test's): on
            another thread (a ``QueueListener``'s, a worker's) the call is listed, and
            the test fails when the capture ends. Off, invalid calls are only listed in
            :attr:`invalid`.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._events: list[CapturedEvent] = []
        self._invalid: list[InvalidCall] = []
        self._unraised: list[InvalidCall] = []  # strict, but made on another thread
        self._messages: list[CapturedMessage] = []
        self._deliveries = itertools.count(1)

    def __repr__(self) -> str:
        return f"<CapturedEvents {len(self._events)} sent, {len(self._invalid)} invalid>"

    @property
    def events(self) -> list[CapturedEvent]:
        """Every operation captured so far, oldest first."""
        with self._lock:
            return list(self._events)

    @property
    def invalid(self) -> list[InvalidCall]:
        """The calls that could not become an operation, oldest first."""
        with self._lock:
            return list(self._invalid)

    @property
    def messages(self) -> list[CapturedMessage]:
        """The transactional messages sent so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def named(self, name: str) -> list[CapturedEvent]:
        """The captured operations (events, pages, screens) named ``name``."""
        return [event for event in self.events if event.name == name]

    def clear(self) -> None:
        """Forget everything captured so far."""
        with self._lock:
            self._events.clear()
            self._invalid.clear()
            self._unraised.clear()
            self._messages.clear()

    def assert_sent(self, name: str, /, **expected: Any) -> CapturedEvent:
        """Assert that an operation named ``name`` was sent with ``expected``; return it.

        ``user_id`` (or ``customer_id``), ``email``, ``cio_id`` and ``anonymous_id``
        match the person (or, when another key named the person, the attribute of that
        name: an email sent as data); every other keyword must equal the attribute of
        that name (a trailing underscore dropped, as when logged: ``from_``); attributes
        not named are not compared. Values compare as sent: an id as text, a datetime as
        the wire has it, ``True`` never equal to ``1``.

        Raises:
            AssertionError: None matched; the message shows the closest operations
                captured, as a diff against ``expected``, and the invalid calls.
            TypeError: An expected value has no JSON form.
        """
        return self._assert(f"{name!r}", name, lambda event: event.name == name, expected)

    def assert_identified(self, **expected: Any) -> CapturedEvent:
        """Assert that an ``identify`` was sent with ``expected`` (as for
        :meth:`assert_sent`: the person's keys, then attributes); return it."""
        return self._assert("identify", None, lambda event: event.action == "identify", expected)

    def _assert(
        self,
        label: str,
        name: str | None,
        kind: Any,
        expected: dict[str, Any],
    ) -> CapturedEvent:
        want = wanted(expected)
        events = self.events
        candidates = [event for event in events if kind(event)]
        for event in candidates:
            if not differences(event, want):
                return event
        lines = explain(label, name, expected, want, events, candidates)
        raise AssertionError(self._explain(lines))

    def assert_not_sent(self, name: str, /, **expected: Any) -> None:
        """Assert that no operation named ``name`` matching ``expected`` was sent.

        Raises:
            AssertionError: One was; the message shows it.
        """
        want = wanted(expected)
        for event in self.named(name):
            if not differences(event, want):
                raise AssertionError(f"{name!r} was sent: {event.operation}")

    # -- the tap: called by a bridge, on the app's thread ---------------------------------

    def take(
        self, item: Snapshot | Direct | Operation, taxonomy: Taxonomy, *, strict: bool
    ) -> bool:
        """Build ``item`` as the bridge would and keep it (see :class:`_routing.Tap`)."""
        if isinstance(item, Operation):
            self._keep(item)
            return True
        snapshot, receipt, target = item if isinstance(item, Direct) else (item, None, None)
        op_id = None if receipt is None else receipt.id
        try:
            op = build_operation(snapshot, taxonomy, op_id, target)
        except Exception as exc:  # noqa: BLE001 - a model's validator may raise anything
            error = _as_invalid(exc)
            named = snapshot.tag if isinstance(snapshot.tag, str) else snapshot.message
            name = named if isinstance(named, str) else None
            call = InvalidCall(name, error.reason, error.field, str(error))
            here = threading.get_ident() == self._thread
            with self._lock:
                self._invalid.append(call)
                if self.strict and not here:
                    self._unraised.append(call)
            if receipt is not None:
                receipt.resolve(Outcome("invalid", error.reason, error.field, str(error)))
            # The app's own strict=True raises wherever it is called, as in production.
            if (self.strict and here) or (strict and receipt is not None):
                raise error from (None if error is exc else exc)
            return False
        self._keep(op)
        if receipt is not None:
            receipt.resolve(_SENT)
        return True

    def take_message(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """Keep a transactional message; the answer the App API would give."""
        delivery_id = f"cio-events-{next(self._deliveries)}"
        with self._lock:
            self._messages.append(CapturedMessage(kind, request, delivery_id))
        return {"delivery_id": delivery_id, "queued_at": int(time.time())}

    def check_other_threads(self) -> None:
        """Fail for a strict capture's invalid calls made on another thread.

        Raises:
            AssertionError: Some were made; the message lists them.
        """
        with self._lock:
            unraised = list(self._unraised)
        if unraised:
            listed = "\n".join(
                f"  {call.name!r}: {call.reason} at {call.field}: {call.message}"
                for call in unraised
            )
            raise AssertionError(f"{len(unraised)} invalid call(s) on another thread:\n{listed}")

    def _keep(self, op: Operation) -> None:
        operation = json.loads(op.body)
        event = CapturedEvent(
            op.id,
            op.action,
            op.name,
            operation.get("identifiers", {}),
            operation.get("attributes", {}),
            operation,
        )
        with self._lock:
            self._events.append(event)

    def _explain(self, lines: list[str]) -> str:
        invalid = self.invalid
        if invalid:
            lines.append(f"{len(invalid)} invalid, not sent:")
            lines.extend(f"  {call.name!r}: {call.reason}: {call.message}" for call in invalid)
        return "\n".join(lines)


@contextlib.contextmanager
def capture_events(*, strict: bool = True) -> Iterator[CapturedEvents]:
    """Capture every operation made in the block (what the ``cio_events`` fixture does),
    for tests that do not use pytest::

        with capture_events() as events:
            signup("u1")
        events.assert_sent("signed_up", user_id="u1")
    """
    captured = CapturedEvents(strict=strict)
    pin = _routing.Pin(
        destination={
            "track_url": _NOWHERE,
            "site_id": "cio-events",
            "api_key": "cio-events",
            "app_url": _NOWHERE,
            "app_api_key": "cio-events",
        },
        defaults={"install_signal_handlers": False},
        forced={"spool_path": False, "durability": "memory", "on_full": None},
    )
    with isolated(pin, captured):
        yield captured
    captured.check_other_threads()


def _as_invalid(exc: Exception) -> InvalidEventError:
    if isinstance(exc, InvalidEventError):
        return exc
    # A model's validator that raised something else, or a bug: the pipeline counts it
    # as an internal error; here the test sees which.
    return InvalidEventError(
        f"{type(exc).__name__} while building the operation: {exc}",
        reason=INTERNAL_ERROR,
        field=None,
    )
