"""The direct API: Track API calls made in code rather than logged, each with a Receipt,
on the same pipeline as log calls (queue, batching, retries, rate limit, spool)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._capture import Snapshot, direct_snapshot
from ._receipt import Receipt
from ._schema import Event, UserAttributes

__all__ = ["Direct", "DirectCalls", "Person", "Target"]

Person = str | int | Mapping[str, str | int]
"""Who: a user id (an int becomes a string), or ``{"id": ...}``, ``{"email": ...}`` or
``{"cio_id": ...}``."""

_PERSON_KEYS = {"id": "user_id", "email": "email", "cio_id": "cio_id"}


class Target(NamedTuple):
    """What a direct call does, and to whom: kept apart from its data, so that an
    attribute named ``customer_id``, ``email`` or ``cio_action`` stays data (a log call
    reads those keys as the person or the action)."""

    action: str
    person: dict[str, Any] | None
    """The identifier fields a log call would carry (``{"user_id": ...}``,
    ``{"anonymous_id": ...}``); None for ``merge``, whose sides are its data."""


class Direct(NamedTuple):
    """A direct call as queued: its snapshot, its target, and the receipt its outcome
    resolves."""

    snapshot: Snapshot
    receipt: Receipt
    target: Target


def _who(person: Person) -> dict[str, Any]:
    """The identifier fields a log call would carry for ``person``."""
    if isinstance(person, Mapping):
        return {_PERSON_KEYS.get(key, key): value for key, value in person.items()}
    return {"user_id": person}


def _data(event: Event | UserAttributes | Mapping[str, Any] | None) -> dict[str, Any]:
    """An event or attributes model as the fields it carries (``from_`` kept as logged:
    the trailing underscore goes at encoding, as for a log call)."""
    if event is None:
        return {}
    if isinstance(event, Mapping):
        return dict(event)
    # By alias, as a declared event's validation dumps it (and as it validates it again).
    return event.model_dump(by_alias=True)


def _event(event: Event | str, attributes: dict[str, Any]) -> Snapshot:
    """A tracked event's snapshot: a declared ``Event`` (its class names it; its fields
    and ``attributes`` are the data), or a name and ``attributes``."""
    if isinstance(event, Event):
        return direct_snapshot(type(event).event_name or None, {**_data(event), **attributes})
    return direct_snapshot(event, attributes)


class DirectCalls:
    """The direct calls, as methods of the bridge (``cio.track(...)`` and friends call
    the process's bridge's). Each returns a :class:`Receipt` at once and never raises
    for bad input (with ``strict=True``, it raises ``InvalidEventError`` instead); the
    event goes through the same queue, batching, retries, rate limit and spool as a
    log call's."""

    def submit_direct(self, snapshot: Snapshot, target: Target) -> Receipt:  # pragma: no cover
        raise NotImplementedError  # the Bridge's

    def track(self, person: Person, event: Event | str, /, **attributes: Any) -> Receipt:
        """Track an event: a declared :class:`Event` instance, or a name and its data.

        Args:
            person: Who (see :data:`Person`).
            event: The event: an ``Event`` (its class names it), or the event's name.
            **attributes: Data sent with it (beside an ``Event``'s own fields).
        """
        return self.submit_direct(_event(event, attributes), Target("event", _who(person)))

    def track_anonymous(
        self, anonymous_id: str, event: Event | str, /, **attributes: Any
    ) -> Receipt:
        """Track an event for a visitor not yet identified (``anonymous_id``)."""
        person = {"anonymous_id": anonymous_id}
        return self.submit_direct(_event(event, attributes), Target("event", person))

    def identify(
        self,
        person: Person,
        attributes: UserAttributes | Mapping[str, Any] | None = None,
        /,
        **more: Any,
    ) -> Receipt:
        """Create or update a person with ``attributes`` (a ``UserAttributes`` model or a
        mapping) and ``more``."""
        fields = {**_data(attributes), **more}
        return self.submit_direct(direct_snapshot(True, fields), Target("identify", _who(person)))

    def page(self, person: Person, url: str, /, **attributes: Any) -> Receipt:
        """A page view: ``url`` is the page's name."""
        return self.submit_direct(direct_snapshot(url, attributes), Target("page", _who(person)))

    def screen(self, person: Person, name: str, /, **attributes: Any) -> Receipt:
        """A mobile screen view named ``name``."""
        target = Target("screen", _who(person))
        return self.submit_direct(direct_snapshot(name, attributes), target)

    def suppress(self, person: Person, /) -> Receipt:
        """Suppress the person: Customer.io deletes them and ignores their identifier."""
        return self._bare(person, "suppress")

    def unsuppress(self, person: Person, /) -> Receipt:
        """Allow a suppressed identifier again."""
        return self._bare(person, "unsuppress")

    def delete(self, person: Person, /) -> Receipt:
        """Delete the person."""
        return self._bare(person, "delete")

    def add_device(
        self, person: Person, token: str, /, platform: str = "ios", **attributes: Any
    ) -> Receipt:
        """Add (or update) a push device: ``platform`` is ``ios`` or ``android``;
        ``last_used`` (a datetime or Unix seconds) defaults to now."""
        fields = {**attributes, "device_token": token, "platform": platform}
        return self.submit_direct(direct_snapshot(True, fields), Target("add_device", _who(person)))

    def delete_device(self, person: Person, token: str, /) -> Receipt:
        """Remove a push device."""
        fields = {"device_token": token}
        target = Target("delete_device", _who(person))
        return self.submit_direct(direct_snapshot(True, fields), target)

    def merge(self, *, primary: Person, secondary: Person) -> Receipt:
        """Merge ``secondary`` into ``primary`` (each ``{"id"|"email"|"cio_id": ...}``,
        or a user id); the secondary person is deleted."""
        fields = {"primary": _side(primary), "secondary": _side(secondary)}
        return self.submit_direct(direct_snapshot(True, fields), Target("merge", None))

    def _bare(self, person: Person, action: str) -> Receipt:
        return self.submit_direct(direct_snapshot(True, {}), Target(action, _who(person)))


def _side(person: Person) -> Any:
    # merge's sides are identifier objects on the wire: {"id": ...} stays as it is.
    return dict(person) if isinstance(person, Mapping) else person
