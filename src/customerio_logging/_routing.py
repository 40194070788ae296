"""Where calls go when not to the network: nowhere (the library is switched off), or to a
test fixture, which also pins where any ``configure()`` made meanwhile may send."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ._config import ENV_VARS, is_loopback

if TYPE_CHECKING:
    from ._capture import Snapshot
    from ._direct import Direct
    from ._schema import Taxonomy
    from ._wire import Operation

__all__ = [
    "Pin",
    "Tap",
    "active",
    "after_fork_in_child",
    "built_here",
    "built_under",
    "checks_here",
    "divert",
    "diverted",
    "environment_urls",
    "innermost_pin",
    "is_loopback_url",
    "muted",
    "pinned",
    "set_process_bridge_off",
    "tapped",
]


class Tap(Protocol):
    """Takes every call a bridge is handed, in its place (``cio_events``)."""

    def take_message(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """Keep a transactional message (``send_email``: ``kind`` "email") in place of
        sending it; the answer the App API would give."""
        ...

    def take(
        self, item: Snapshot | Direct | Operation, taxonomy: Taxonomy, *, strict: bool
    ) -> bool:
        """Keep ``item`` as the bridge would send it; False when it is invalid.

        Args:
            item: The call, as the bridge was handed it.
            taxonomy: The bridge's event schema, to validate with.
            strict: The bridge's own ``strict`` setting (for direct calls).

        Raises:
            InvalidEventError: ``item`` is invalid and the tap or ``strict`` says raise.
        """
        ...


def environment_urls() -> frozenset[str]:
    """The Track and App API addresses the environment names now."""
    urls = (os.environ.get(ENV_VARS[key], "") for key in ("track_url", "app_url"))
    return frozenset(_same(url) for url in urls if url.strip())


def _same(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True, kw_only=True)
class Pin:
    """What a fixture imposes on every ``configure()`` while it is active.

    Attributes:
        destination: ``track_url``, ``site_id``, ``api_key``, ``app_url`` and
            ``app_api_key``: where to send instead of any address that is not an explicit
            loopback URL of the test's own (a real workspace is never reached).
        defaults: Settings used when the call does not give them.
        forced: Settings used whatever the call gives.
        check_at_call: Validate each call made on ``thread`` as it is made and raise
            ``InvalidEventError`` there (log calls included), rather than on the dispatch
            thread. Calls on other threads are counted as usual: an exception there
            would only end that thread (a ``QueueListener``'s, say).
        thread: The test's thread (the one that made the pin, by default).
        foreign: Addresses never kept, loopback or not: the environment's before the
            fixture (see :func:`environment_urls`), which an app may have read already.
    """

    destination: Mapping[str, str]
    foreign: frozenset[str] = field(default_factory=environment_urls)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    forced: Mapping[str, Any] = field(default_factory=dict)
    check_at_call: bool = False
    thread: int = field(default_factory=threading.get_ident)


# Read on every call: plain module attributes, set only by the functions below.
tap: Tap | None = None
active = False
"""A fixture is active: ``Bridge.submit``'s one test of this module."""
muted = False
"""The process's bridge is switched off and no fixture is active: tagged calls return at
once."""


def _no_divert(item: Snapshot | Direct | Operation) -> bool:
    raise RuntimeError("customerio_logging._global sets _routing.divert when imported")


divert: Callable[[Snapshot | Direct | Operation], bool] = _no_divert
"""Hands a call to the process's pinned bridge (set by ``_global``): for a bridge built
outside every active fixture (see :func:`diverted`)."""

_lock = threading.Lock()
_pins: list[Pin] = []  # the innermost fixture's last
_taps: list[Tap] = []
_process_bridge_off = False
_checking_thread: int | None = None
# The pin each bridge was built under, if any (weak: a bridge is not kept alive here).
_built: weakref.WeakKeyDictionary[object, Pin] = weakref.WeakKeyDictionary()


def _update() -> None:
    global tap, active, muted, _checking_thread
    tap = _taps[-1] if _taps else None
    innermost = _pins[-1] if _pins else None
    _checking_thread = innermost.thread if innermost and innermost.check_at_call else None
    active = innermost is not None
    muted = _process_bridge_off and innermost is None


def checks_here() -> bool:
    """True when the innermost fixture checks calls as made, on this thread."""
    return _checking_thread is not None and _checking_thread == threading.get_ident()


def built_here(bridge: object, track_url: str) -> None:
    """Note that ``bridge``, for ``track_url``, was built under the innermost pin, if one
    is active and the address is one a test may send to (loopback, not the environment's
    from before): such a bridge is the test's own and sends itself. Every bridge calls
    this as it is built."""
    with _lock:
        if _pins and is_loopback_url(track_url) and _same(track_url) not in _pins[-1].foreign:
            _built[bridge] = _pins[-1]


def built_under(pin: Pin) -> list[object]:
    """The bridges built under ``pin`` that still exist."""
    with _lock:
        return [bridge for bridge, each in list(_built.items()) if each is pin]


def diverted(bridge: object) -> bool:
    """True when a fixture is active and ``bridge`` was built outside all of them (before
    the test, or given to a handler by the app): its calls go to the pinned bridge."""
    if not active:
        return False  # no fixture: no lock taken (production never has one)
    with _lock:
        pin = _built.get(bridge)
        return bool(_pins) and not any(each is pin for each in _pins)


def after_fork_in_child() -> None:
    """In a forked child: a new lock (a parent thread may have held it at the fork)."""
    global _lock
    _lock = threading.Lock()


def set_process_bridge_off(off: bool) -> None:
    """Say whether the process's bridge (the one ``configure()`` built) is switched off."""
    global _process_bridge_off
    with _lock:
        _process_bridge_off = off
        _update()


@contextlib.contextmanager
def tapped(pin: Pin, tap_with: Tap | None = None) -> Iterator[None]:
    """Impose ``pin`` on every ``configure()``, and hand every call to ``tap_with`` if
    given, until the block ends; nested blocks win over outer ones."""
    with _lock:
        if _pins and _pins[-1].thread != pin.thread:
            raise RuntimeError(
                "customerio_logging's fixtures are process-wide: they cannot run on two "
                "threads at once (run parallel tests in processes, as pytest-xdist does)"
            )
        _pins.append(pin)
        if tap_with is not None:
            _taps.append(tap_with)
        _update()
    try:
        yield
    finally:
        with _lock:
            # By identity: two fixtures' pins may be equal.
            _pins[:] = [each for each in _pins if each is not pin]
            _taps[:] = [each for each in _taps if each is not tap_with]
            _update()


def innermost_pin() -> Pin:
    """The pin of the innermost fixture.

    Raises:
        LookupError: No fixture is active.
    """
    with _lock:
        if not _pins:
            raise LookupError("no customerio_logging fixture is active")
        return _pins[-1]


def pinned(given: Mapping[str, Any]) -> dict[str, Any]:
    """``configure()``'s keyword arguments as the innermost pin rewrites them.

    A loopback address the call gives, or one other than the pin's the environment gives
    (a test's own local server), is kept with the credentials given, unless it is one of
    the pin's ``foreign``; any other (none, a region's host, a real one, the environment's
    before the fixture) becomes the pin's, with the pin's credentials.
    """
    with _lock:
        pin = _pins[-1] if _pins else None
    if pin is None:
        return dict(given)
    values = {key: value for key, value in given.items() if value is not None}
    for key, value in pin.defaults.items():
        values.setdefault(key, value)
    values.update(pin.forced)
    for url_key, secrets in (("track_url", ("site_id", "api_key")), ("app_url", ("app_api_key",))):
        ours = pin.destination[url_key]
        explicit = values.get(url_key)
        url = explicit or os.environ.get(ENV_VARS[url_key], "")
        if not isinstance(url, str):
            url = ""  # malformed: Settings says so, once it is the pin's
        if explicit is not None and is_loopback_url(url) and _same(url) not in pin.foreign:
            continue  # the test's own server, with the credentials the call gives
        theirs = explicit is None and _same(url) == ours  # the environment the pin set
        if not theirs and is_loopback_url(url) and _same(url) not in pin.foreign:
            continue  # another local server the test named in the environment
        values[url_key] = ours
        # Credentials the environment gives with the pin's address are the pin's, or
        # the test's own choice (a wrong key, on purpose); any others become the pin's.
        values.update(
            {
                secret: pin.destination[secret]
                for secret in secrets
                if not theirs or secret in values
            }
        )
        if url_key == "track_url":
            values.pop("transport", None)  # a transport picks its own destination
    values.pop("region", None)  # a region names real hosts; the pin's are set above
    # A fleet's Redis holds its rate limit and backlog: a test shares neither. Only a
    # server on this machine (the test's own, as redis_server) is kept.
    redis_url = values.get("redis_url") or os.environ.get(ENV_VARS["redis_url"], "")
    if not (isinstance(redis_url, str) and is_loopback_url(redis_url)):
        values["redis_url"] = ""
    return values


def is_loopback_url(url: str) -> bool:
    """True for a URL whose host never leaves this machine."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return False
    return host is not None and is_loopback(host)
