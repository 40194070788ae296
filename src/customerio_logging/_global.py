"""The process's one bridge (configure, get_bridge, flush, shutdown, stats), its App API
client (app_api), reset, and the exit, SIGTERM and fork hooks that act on them."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from . import _app_api, _lifecycle, _receipt, _routing, _storage, _watchdog
from ._bridge import Bridge
from ._capture import Snapshot
from ._config import Settings, enabled_in_env
from ._direct import Direct
from ._ledger import Stats
from ._ownlog import warn
from ._receipt import Outcome
from ._wire import reseed_ulids
from .exceptions import ConfigurationError

__all__ = [
    "app_api",
    "app_client",
    "configure",
    "current_bridge",
    "flush",
    "flush_or_spool",
    "get_bridge",
    "note_lost",
    "pinned_bridge",
    "reset",
    "shutdown",
    "stats",
    "submit_capture",
    "swap_bridge",
    "switched_off",
]

_bridge: Bridge | None = None
# Held only to read and swap module state, never while building, starting or stopping a
# bridge; reentrant all the same: a tagged call from a signal handler or a __del__ may
# run on a thread interrupted right inside it. Nothing on a log call's path waits on a
# lock its own thread may already hold.
_bridge_lock = threading.RLock()
_configure_lock = threading.Lock()  # configure() only: never on a log call's path
_building = threading.local()  # .early: tagged calls made while this thread builds
_EARLY_KEPT = 1000
_unconfigured: tuple[int, str | None] = (0, None)  # events lost without a bridge, and why


def configure(**settings: Any) -> Bridge:
    """Build the process's bridge and start its thread.

    Explicit keyword arguments win over environment variables, which win over defaults.
    A bridge configured earlier is shut down (flushed) first. Called on the main thread
    with ``install_signal_handlers`` (the default), it also installs, once per process,
    a SIGTERM handler that delivers what is queued, then chains to the previous handler.

    With ``enabled=False`` (or ``CUSTOMERIO_ENABLED=0``) nothing starts and nothing is
    needed: no thread, no network, no credentials. While a test fixture is active
    (``cio_events``, ``track_api_emulator``, ``cio_bridge``) it decides where the bridge
    sends: never to a real workspace.

    ``on_error=callback`` has the callback told of every event dropped, dead-lettered or
    failed, with an :class:`ErrorReport`, on a thread of the library's own.

    Raises:
        ConfigurationError: A setting is missing or malformed.
    """
    new = Bridge(Settings.from_env(**_routing.pinned(settings)))
    # One configure at a time, so that none returns a bridge another has already
    # replaced and shut down.
    with _configure_lock:
        old = swap_bridge(new)
        if old is not None and not _kept_for_after_the_test(old):
            old.shutdown()
        if new.settings.durability == "disk":
            new.open_spool()  # the first log call's event is on disk when it returns
        new.start()
    if new.settings.install_signal_handlers and new.settings.enabled:
        _lifecycle.install_sigterm_handler(_on_sigterm)
    return new


def get_bridge() -> Bridge:
    """The process's bridge; built from the environment on first use if never configured.

    Raises:
        ConfigurationError: No bridge was configured and the environment lacks settings.
    """
    bridge = _bridge
    if bridge is not None:
        return bridge
    return _bridge_from_env()


def current_bridge() -> Bridge | None:
    """The bridge if one exists, without building one."""
    return _bridge


def submit_capture(capture: Snapshot) -> None:
    """Queue a tagged call on the process's bridge, built from the environment if need be.

    The path of every handler and processor without a bridge of its own. A tagged call
    made while this very thread is building the bridge (from a signal handler, or a
    ``__del__`` the garbage collector runs) is handed to that build, never waited for.

    Raises:
        ConfigurationError: No bridge was configured and the environment lacks settings.
    """
    bridge = _bridge
    if bridge is None:
        early: list[Snapshot] | None = getattr(_building, "early", None)
        if early is not None:
            if len(early) < _EARLY_KEPT:
                early.append(capture)
            else:
                note_lost(RuntimeError("too many tagged calls while building the bridge"))
            return
        bridge = _bridge_from_env()
    bridge.submit(capture)


def _bridge_from_env() -> Bridge:
    global _bridge
    # Built outside the lock: building imports the HTTP client (tens of milliseconds).
    # Another thread's first tagged call meanwhile builds its own: the first to finish
    # is kept, the others, never started, are dropped. This thread's own re-entrant
    # calls wait in `early` (see submit_capture).
    early: list[Snapshot] = []
    _building.early = early
    try:
        built = Bridge(Settings.from_env(**_routing.pinned({})))
    except Exception as exc:
        for _ in early:
            note_lost(exc)
        raise
    finally:
        _building.early = None
    with _bridge_lock:
        if _bridge is None:
            _bridge = built
            _routing.set_process_bridge_off(not built.settings.enabled)
        bridge = _bridge
    bridge.start()
    for capture in early:
        bridge.submit(capture)
    return bridge


def flush(timeout: float | None = None) -> bool:
    """Deliver everything queued so far; see :meth:`Bridge.flush`. True if nothing is set up.

    Args:
        timeout: Seconds to wait at most; the bridge's ``shutdown_timeout`` (5 by
            default) when None.
    """
    bridge = _bridge
    return True if bridge is None else bridge.flush(timeout)


def flush_or_spool(timeout: float) -> bool:
    """Deliver what is queued within ``timeout``; what is not delivered by then is on disk
    when this returns, and a fresh bridge (same settings) takes the process's next events.

    For a process that may be frozen or killed without warning as soon as this returns:
    a serverless handler's end. It takes ``timeout`` plus the few milliseconds the spool
    writes take (at most ``EXIT_MARGIN`` more when the spool is busy).

    Returns:
        True when everything was delivered (or nothing is set up).
    """
    global _bridge
    bridge = _bridge
    if bridge is None or bridge.flush(timeout):
        return True
    # Sending stops now: what is queued, and a batch still on the wire, go to the spool.
    bridge.shutdown(0.0)
    fresh = Bridge(bridge.settings)
    fresh.carry_counters(bridge.stats())
    with _bridge_lock:
        if _bridge is bridge:
            _bridge = fresh
    if _bridge is fresh:
        fresh.start()
    return False


def shutdown(timeout: float | None = None) -> None:
    """Flush and stop the bridge, within ``timeout`` seconds (``shutdown_timeout`` when
    None); idempotent."""
    bridge = _bridge
    if bridge is not None:
        bridge.shutdown(timeout)


def stats() -> Stats:
    """The bridge's counters; all zero if no bridge exists yet.

    Events logged while no bridge could be built (settings missing from the
    environment) are counted as ``dropped``, with the reason in ``last_error``.
    """
    bridge = _bridge
    if bridge is not None:
        return bridge.stats()
    with _bridge_lock:
        dropped, error = _unconfigured
    return Stats(enqueued=dropped, dropped=dropped, last_error=error)


def switched_off() -> bool:
    """True when the library is switched off: the process's bridge is, or none is built
    yet and ``CUSTOMERIO_ENABLED`` says so."""
    bridge = _bridge
    if bridge is not None and not _routing.diverted(bridge):
        return not bridge.settings.enabled
    return not enabled_in_env()  # none yet, or one from before a test fixture


def note_lost(error: Exception) -> None:
    """Count an event lost before it reached a queue: no bridge could be built, or a bug.

    Warns once when the cause is missing configuration; never raises.
    """
    global _unconfigured
    if isinstance(error, ConfigurationError):
        message = f"customerio_logging is not configured, event dropped: {error}"
    else:
        message = f"event dropped: {type(error).__name__} while capturing it"
    bridge = _bridge
    if bridge is not None:
        bridge.count_dropped(message)
        return
    with _bridge_lock:
        count, _ = _unconfigured
        _unconfigured = (count + 1, message)
    if count == 0:
        warn(message)


def app_api() -> Any:
    """The process's one official ``customerio.APIClient``, for the App API.

    Built on first use from the configured bridge's settings (``app_api_key``,
    ``app_url``, ``region``, ``request_timeout``), or from the environment when no bridge
    is configured (``CUSTOMERIO_APP_API_KEY``, ``CUSTOMERIO_APP_URL``,
    ``CUSTOMERIO_REGION``; the Track API's ``CUSTOMERIO_SITE_ID`` and
    ``CUSTOMERIO_TRACK_API_KEY`` too, as ``configure()`` needs them). Every thread gets
    the same client; a forked child builds its own; ``configure()`` with other settings
    replaces it. Its own retries are off: ``send_email`` and ``send_push`` retry only
    what is safe to send again.

    Raises:
        ConfigurationError: No App API key is set (the message names
            ``CUSTOMERIO_APP_API_KEY`` and ``app_api_key=``), or the settings are malformed.
    """
    return app_client().client


def app_client() -> _app_api.AppClient:
    """The App API client with the settings it was built from; see :func:`app_api`."""
    bridge = _bridge
    if bridge is not None and _routing.diverted(bridge):
        bridge = None  # built before a test fixture: the pinned environment's instead
    return _app_api.obtain(None if bridge is None else bridge.settings)


def reset() -> None:
    """For tests: shut down and forget the process's bridge and App API client.

    The bridge is flushed within its ``shutdown_timeout`` first. The next log call,
    ``get_bridge()`` or ``app_api()`` builds anew, from the environment unless
    ``configure()`` runs first; the counters start from zero.
    """
    with _configure_lock:
        old = forget_bridge()
        if old is not None and not _kept_for_after_the_test(old):
            old.shutdown()
    _app_api.reset()


def _kept_for_after_the_test(bridge: Bridge) -> bool:
    """True for a bridge from before an active test fixture: the fixture gives it back,
    running, when the test ends, so a ``configure()`` or ``reset()`` during the test
    must not stop it."""
    return _routing.diverted(bridge)


_APP_SETTINGS = ("events", "unknown_events", "user_attributes", "strict", "on_error")
"""What a test fixture's bridge keeps of the app's own: its schema and how it reports."""


def pinned_bridge(**settings: Any) -> Bridge:
    """For test fixtures: build a bridge under the innermost pin, with the app's schema
    (``_APP_SETTINGS``) of the process's current bridge, and make it the process's
    without stopping the one it replaces (:func:`swap_bridge` puts that back)."""
    previous = _bridge
    kept = {} if previous is None else {k: getattr(previous.settings, k) for k in _APP_SETTINGS}
    if not _routing.active:
        raise RuntimeError("pinned_bridge() needs a test fixture's pin")
    new = Bridge(Settings.from_env(**_routing.pinned({**kept, **settings})))
    swap_bridge(new)
    new.start()
    return new


def swap_bridge(new: Bridge | None) -> Bridge | None:
    """Make ``new`` the process's bridge, stopping none (the caller decides); the one it
    replaces. The switched-off flag the handler and processor read follows it."""
    global _bridge
    with _bridge_lock:
        old, _bridge = _bridge, new
        _routing.set_process_bridge_off(new is not None and not new.settings.enabled)
    return old


_divert_lock = threading.Lock()  # building a fixture's bridge for diverted calls, only


def _to_pinned_bridge(item: Any) -> bool:
    """A call made through a bridge built outside every active fixture: to the process's
    bridge if it was built under one, else to one built now (see :func:`pinned_bridge`).

    Never waits for ``configure()`` (which may be shutting a bridge down), and never
    waits on itself: a call made while this thread builds that bridge (a signal
    handler, a ``__del__``) is counted lost, as is one whose bridge cannot be built.
    """
    bridge = _bridge
    if bridge is not None and not _routing.diverted(bridge):
        return bridge.submit(item)
    if getattr(_building, "diverting", False):
        note_lost(RuntimeError("a tagged call while a test fixture's bridge was being built"))
        return False
    _building.diverting = True
    try:
        with _divert_lock:
            bridge = _bridge
            if bridge is None or _routing.diverted(bridge):
                if not _routing.active:
                    # The fixture ended meanwhile: the process's bridge sends it.
                    return (bridge or get_bridge()).submit(item)
                bridge = pinned_bridge()
    except Exception as exc:  # noqa: BLE001 - a log call must not fail because of us
        note_lost(exc)
        if isinstance(item, Direct):
            item.receipt.resolve(Outcome("dropped", None, None, f"{type(exc).__name__}: {exc}"))
        return False
    finally:
        _building.diverting = False
    return bridge.submit(item)


def forget_bridge() -> Bridge | None:
    """Forget the process's bridge without stopping it and return it (for tests)."""
    global _unconfigured
    with _bridge_lock:
        _unconfigured = (0, None)
        return swap_bridge(None)


# -- the process's hooks ---------------------------------------------------------------


def _flush_at_exit() -> None:
    bridge = _bridge
    if bridge is not None:
        bridge.shutdown(bridge.settings.shutdown_timeout)
        # A shutdown begun on another thread may still be under way: its sending, and
        # what it tells on_error, get until its deadline before the interpreter ends.
        bridge.wait_for_shutdown()


def _on_sigterm(final: bool) -> None:
    """SIGTERM: deliver what is queued within ``shutdown_timeout``; then the handler chains.

    When the process is about to die (``final``) the bridge is shut down: one deadline.
    Otherwise (the previous handler ignores SIGTERM, or is the app's own, which may
    drain requests before exiting) it is flushed and keeps running; the exit hook
    delivers what is logged afterwards.
    """
    bridge = _bridge
    if bridge is None:
        return
    if final:
        bridge.shutdown(bridge.settings.shutdown_timeout)
        # A shutdown already under way (the app's own, or configure() replacing this
        # bridge) returned at once above: let it finish within its deadline first.
        bridge.wait_for_shutdown()
    else:
        bridge.flush(bridge.settings.shutdown_timeout)


def _bridge_after_fork_in_child() -> None:
    global _bridge_lock, _configure_lock, _divert_lock
    # A parent thread may have held them at the fork: that thread does not exist here.
    _bridge_lock = threading.RLock()
    _configure_lock = threading.Lock()
    _divert_lock = threading.Lock()
    bridge = _bridge
    if bridge is not None:
        # Should it fail, the bridge's first submit in the child tries again.
        with contextlib.suppress(Exception):
            bridge.at_fork_reinit()


def _install_process_hooks() -> None:
    """Every exit and fork hook of the library, registered here once, in this order.

    At exit: the bridge is shut down (flushed) within its ``shutdown_timeout``. This
    runs when the package is imported: after ``logging`` is (atexit runs hooks last-in,
    first-out, so ours runs before ``logging.shutdown`` closes the handlers) and before
    the app registers its own hooks (events they log are still delivered).

    Around ``os.fork()``: before it, the spool waits (bounded) for a call in progress so
    that the child gets no half-held lock; in the child, the parent's request watchdog
    is forgotten, the ids get new randomness (a child must never repeat its parent's),
    the receipts' lock is new, the spools' locks and connections become the child's,
    the App API client is forgotten (the child's first use builds its own), and last
    the bridge is made the child's own (its first tagged call starts its thread). A
    hook that raises is
    reported on stderr; the next one still runs.
    """
    _lifecycle.install_exit_hook(_flush_at_exit)
    _lifecycle.install_fork_hooks(
        before=[_storage.before_fork],
        after_in_parent=[_storage.after_fork_in_parent],
        after_in_child=[
            _watchdog.forget_after_fork,
            reseed_ulids,
            _receipt.after_fork_in_child,
            _storage.after_fork_in_child,
            _app_api.after_fork_in_child,
            _routing.after_fork_in_child,
            _bridge_after_fork_in_child,
        ],
    )


_install_process_hooks()
_routing.divert = _to_pinned_bridge
