"""CapturedEvents: every operation the code under test produces, kept in memory as it is
made (the ``cio_events`` fixture), with assertions that say what they saw."""

from __future__ import annotations

import contextlib
import difflib
import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .. import _routing
from .._capture import USER_ID_KEYS, Snapshot
from .._direct import Direct
from .._operation import build_operation
from .._reasons import INTERNAL_ERROR
from .._receipt import Outcome
from .._schema import Taxonomy
from .._values import coerce_data
from .._wire import Operation
from ..exceptions import InvalidEventError

__all__ = ["CapturedEvent", "CapturedEvents", "InvalidCall", "capture_events"]

# Where a pinned configure() points while events are captured: a port nothing listens on
# (nothing is sent anyway: every call is taken before it is queued).
_NOWHERE = "http://127.0.0.1:9"
_SENT = Outcome("sent")
_PERSON_KEYS = {
    **dict.fromkeys(USER_ID_KEYS, "id"),
    **{key: key for key in ("email", "cio_id", "anonymous_id")},
}
_CLOSEST = 3


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

    Attributes:
        strict: Raise ``InvalidEventError`` at the call (log calls too) for an event that
            cannot be sent, so that the test fails there with the field and the reason
            (on by default). Off, invalid calls are only listed in :attr:`invalid`.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self._lock = threading.Lock()
        self._events: list[CapturedEvent] = []
        self._invalid: list[InvalidCall] = []

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

    def named(self, name: str) -> list[CapturedEvent]:
        """The captured operations (events, pages, screens) named ``name``."""
        return [event for event in self.events if event.name == name]

    def clear(self) -> None:
        """Forget everything captured so far."""
        with self._lock:
            self._events.clear()
            self._invalid.clear()

    def assert_sent(self, name: str, /, **expected: Any) -> CapturedEvent:
        """Assert that an operation named ``name`` was sent with ``expected``; return it.

        ``user_id`` (or ``customer_id``), ``email``, ``cio_id`` and ``anonymous_id``
        match the person; every other keyword must equal the attribute of that name (a
        trailing underscore dropped, as when logged: ``from_``); attributes not named are
        not compared. Values compare as sent (a datetime as the wire has it).

        Raises:
            AssertionError: None matched; the message shows the closest operations
                captured, as a diff against ``expected``, and the invalid calls.
        """
        wanted = _wanted(expected)
        events = self.events
        for event in events:
            if event.name == name and not _differences(event, wanted):
                return event
        raise AssertionError(self._explain(name, expected, wanted, events))

    def assert_not_sent(self, name: str, /, **expected: Any) -> None:
        """Assert that no operation named ``name`` matching ``expected`` was sent.

        Raises:
            AssertionError: One was; the message shows it.
        """
        wanted = _wanted(expected)
        for event in self.named(name):
            if not _differences(event, wanted):
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
            with self._lock:
                self._invalid.append(InvalidCall(name, error.reason, error.field, str(error)))
            if receipt is not None:
                receipt.resolve(Outcome("invalid", error.reason, error.field, str(error)))
            if self.strict or (strict and receipt is not None):
                raise error from (None if error is exc else exc)
            return False
        self._keep(op)
        if receipt is not None:
            receipt.resolve(_SENT)
        return True

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

    def _explain(
        self,
        name: str,
        expected: Mapping[str, Any],
        wanted: Mapping[str, _Wanted],
        events: list[CapturedEvent],
    ) -> str:
        asked = ", ".join(f"{key}={value!r}" for key, value in expected.items())
        lines = [f"no {name!r} was sent" + (f" with {asked}" if asked else "")]
        same = [event for event in events if event.name == name]
        if same:
            closest = sorted(same, key=lambda event: len(_differences(event, wanted)))
            lines.append(f"{len(same)} {name!r} sent; the closest (- expected, + sent):")
        else:
            names = sorted({event.name for event in events if event.name})
            near = difflib.get_close_matches(name, names, n=_CLOSEST, cutoff=0.6)
            closest = [event for event in events if event.name in near]
            counts = Counter(event.name or event.action for event in events)
            seen = ", ".join(f"{key} x{n}" for key, n in counts.most_common()) or "nothing"
            lines.append(f"sent: {seen}")
            if closest:
                lines.append("the closest names (- expected, + sent):")
        for event in closest[:_CLOSEST]:
            lines.append(f"  {event.name!r} {event.identifiers}:")
            lines.extend(f"    {line}" for line in _diff(event, wanted, name))
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
    with _routing.tapped(pin, captured):
        yield captured


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


class _Wanted(NamedTuple):
    """One expected keyword: where it is in an operation, and its value as sent."""

    part: str  # "identifiers" or "attributes"
    key: str  # the key there
    value: Any


def _wanted(expected: Mapping[str, Any]) -> dict[str, _Wanted]:
    """``expected`` as it compares with a captured operation, by the keyword's name:
    the person's keys among the identifiers, the others (in wire form) among the
    attributes."""
    wanted: dict[str, _Wanted] = {}
    for key, value in expected.items():
        if key in _PERSON_KEYS:
            # An int user id is sent as a string, as the pipeline does.
            text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            wanted[key] = _Wanted("identifiers", _PERSON_KEYS[key], text)
        else:
            ((sent_key, sent),) = json.loads(json.dumps(coerce_data({key: value}))).items()
            wanted[key] = _Wanted("attributes", sent_key, sent)
    return wanted


_MISSING = object()


def _found(event: CapturedEvent, wanted: _Wanted) -> Any:
    place = event.identifiers if wanted.part == "identifiers" else event.attributes
    return place.get(wanted.key, _MISSING)


def _differences(event: CapturedEvent, wanted: Mapping[str, _Wanted]) -> list[str]:
    return [key for key, each in wanted.items() if _found(event, each) != each.value]


def _diff(event: CapturedEvent, wanted: Mapping[str, _Wanted], name: str) -> list[str]:
    def show(key: str, value: Any) -> str:
        return f"{key}: " + ("(missing)" if value is _MISSING else repr(value))

    expected = [f"name: {name!r}"] + [show(key, each.value) for key, each in wanted.items()]
    sent = [f"name: {event.name!r}"]
    sent += [show(key, _found(event, each)) for key, each in wanted.items()]
    return [line for line in difflib.ndiff(expected, sent) if not line.startswith("?")]
