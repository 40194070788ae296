"""The direct API: Track API calls made in code rather than logged, each with a Receipt,
on the same pipeline as log calls (queue, batching, retries, rate limit, spool)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._capture import ACTION, Snapshot, direct_snapshot
from ._receipt import Receipt
from ._schema import Event, UserAttributes

__all__ = ["Direct", "DirectCalls", "Person"]

Person = str | int | Mapping[str, str | int]
"""Who: a user id (an int becomes a string), or ``{"id": ...}``, ``{"email": ...}`` or
``{"cio_id": ...}``."""

_PERSON_KEYS = {"id": "user_id", "email": "email", "cio_id": "cio_id"}


class Direct(NamedTuple):
    """A direct call as queued: its snapshot, and the receipt its outcome resolves."""

    snapshot: Snapshot
    receipt: Receipt


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
    return event.model_dump()


class DirectCalls:
    """The direct calls, as methods of the bridge (``cio.track(...)`` and friends call
    the process's bridge's). Each returns a :class:`Receipt` at once and never raises
    for bad input (with ``strict=True``, it raises ``InvalidEventError`` instead); the
    event goes through the same queue, batching, retries, rate limit and spool as a
    log call's."""

    def submit_direct(self, snapshot: Snapshot) -> Receipt:  # pragma: no cover - Bridge's
        raise NotImplementedError

    def track(self, person: Person, event: Event | str, /, **attributes: Any) -> Receipt:
        """Track an event: a declared :class:`Event` instance, or a name and its data.

        Args:
            person: Who (see :data:`Person`).
            event: The event: an ``Event`` (its class names it), or the event's name.
            **attributes: Data sent with it (beside an ``Event``'s own fields).
        """
        if isinstance(event, Event):
            name: object = type(event).event_name or None
            fields = {**_data(event), **attributes}
        else:
            name, fields = event, dict(attributes)
        return self.submit_direct(direct_snapshot(name, {**fields, **_who(person)}))

    def track_anonymous(
        self, anonymous_id: str, event: Event | str, /, **attributes: Any
    ) -> Receipt:
        """Track an event for a visitor not yet identified (``anonymous_id``)."""
        if isinstance(event, Event):
            name: object = type(event).event_name or None
            fields = {**_data(event), **attributes}
        else:
            name, fields = event, dict(attributes)
        return self.submit_direct(direct_snapshot(name, {**fields, "anonymous_id": anonymous_id}))

    def identify(
        self,
        person: Person,
        attributes: UserAttributes | Mapping[str, Any] | None = None,
        /,
        **more: Any,
    ) -> Receipt:
        """Create or update a person with ``attributes`` (a ``UserAttributes`` model or a
        mapping) and ``more``."""
        fields = {**_data(attributes), **more, **_who(person), ACTION: "identify"}
        return self.submit_direct(direct_snapshot(True, fields))

    def page(self, person: Person, url: str, /, **attributes: Any) -> Receipt:
        """A page view: ``url`` is the page's name."""
        fields = {**attributes, **_who(person), ACTION: "page"}
        return self.submit_direct(direct_snapshot(url, fields))

    def screen(self, person: Person, name: str, /, **attributes: Any) -> Receipt:
        """A mobile screen view named ``name``."""
        fields = {**attributes, **_who(person), ACTION: "screen"}
        return self.submit_direct(direct_snapshot(name, fields))

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
        fields = {
            **attributes,
            **_who(person),
            ACTION: "add_device",
            "device_token": token,
            "platform": platform,
        }
        return self.submit_direct(direct_snapshot(True, fields))

    def delete_device(self, person: Person, token: str, /) -> Receipt:
        """Remove a push device."""
        fields = {**_who(person), ACTION: "delete_device", "device_token": token}
        return self.submit_direct(direct_snapshot(True, fields))

    def merge(self, *, primary: Person, secondary: Person) -> Receipt:
        """Merge ``secondary`` into ``primary`` (each ``{"id"|"email"|"cio_id": ...}``,
        or a user id); the secondary person is deleted."""
        fields = {ACTION: "merge", "primary": _side(primary), "secondary": _side(secondary)}
        return self.submit_direct(direct_snapshot(True, fields))

    def _bare(self, person: Person, action: str) -> Receipt:
        return self.submit_direct(direct_snapshot(True, {**_who(person), ACTION: action}))


def _side(person: Person) -> Any:
    # merge's sides are identifier objects on the wire: {"id": ...} stays as it is.
    return dict(person) if isinstance(person, Mapping) else person
