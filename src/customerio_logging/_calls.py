"""``cio.track(...)`` and the other direct calls: each is the process's bridge's method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._direct import Person
from ._global import get_bridge
from ._receipt import Receipt
from ._schema import Event, UserAttributes

__all__ = [
    "add_device",
    "delete",
    "delete_device",
    "identify",
    "merge",
    "page",
    "screen",
    "suppress",
    "track",
    "track_anonymous",
    "unsuppress",
]

# Each raises ConfigurationError when no bridge is configured and the environment has no
# settings to build one from (a direct call, unlike a log call, is the app's own code
# asking: it is told). With strict=True, each raises InvalidEventError for bad input.


def track(person: Person, event: Event | str, /, **attributes: Any) -> Receipt:
    """Track an event for ``person``; see :meth:`Bridge.track`."""
    return get_bridge().track(person, event, **attributes)


def track_anonymous(anonymous_id: str, event: Event | str, /, **attributes: Any) -> Receipt:
    """Track an event for a visitor not yet identified; see :meth:`Bridge.track_anonymous`."""
    return get_bridge().track_anonymous(anonymous_id, event, **attributes)


def identify(
    person: Person, attributes: UserAttributes | Mapping[str, Any] | None = None, /, **more: Any
) -> Receipt:
    """Create or update ``person``; see :meth:`Bridge.identify`."""
    return get_bridge().identify(person, attributes, **more)


def page(person: Person, url: str, /, **attributes: Any) -> Receipt:
    """A page view; see :meth:`Bridge.page`."""
    return get_bridge().page(person, url, **attributes)


def screen(person: Person, name: str, /, **attributes: Any) -> Receipt:
    """A mobile screen view; see :meth:`Bridge.screen`."""
    return get_bridge().screen(person, name, **attributes)


def suppress(person: Person, /) -> Receipt:
    """Suppress ``person``; see :meth:`Bridge.suppress`."""
    return get_bridge().suppress(person)


def unsuppress(person: Person, /) -> Receipt:
    """Allow a suppressed identifier again; see :meth:`Bridge.unsuppress`."""
    return get_bridge().unsuppress(person)


def delete(person: Person, /) -> Receipt:
    """Delete ``person``; see :meth:`Bridge.delete`."""
    return get_bridge().delete(person)


def add_device(person: Person, token: str, /, platform: str = "ios", **attributes: Any) -> Receipt:
    """Add a push device; see :meth:`Bridge.add_device`."""
    return get_bridge().add_device(person, token, platform=platform, **attributes)


def delete_device(person: Person, token: str, /) -> Receipt:
    """Remove a push device; see :meth:`Bridge.delete_device`."""
    return get_bridge().delete_device(person, token)


def merge(*, primary: Person, secondary: Person) -> Receipt:
    """Merge two people; see :meth:`Bridge.merge`."""
    return get_bridge().merge(primary=primary, secondary=secondary)
