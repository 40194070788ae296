"""The library's own log records: its warnings, and urllib3's kept off the dispatch thread."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING

from ._capture import ACTION
from ._dispatch import THREAD_NAME
from ._limits import MAX_NAME_BYTES

if TYPE_CHECKING:
    from ._capture import Snapshot
    from ._schema import Taxonomy

__all__ = ["UnknownEventWarnings", "inform", "quiet_http_logs_on_dispatch_thread", "warn"]

UNKNOWN_NAMES_KEPT = 1000  # undeclared event names warned about, remembered

# Fetched once here so that the dispatch thread never needs logging's module lock to
# find it. Its records are untagged: they never re-enter our handler, even when the app
# attaches it to the root logger.
_log = logging.getLogger("customerio_logging")


def warn(message: str) -> None:
    """Say ``message`` as a warning of the ``customerio_logging`` logger (app threads only:
    the dispatch thread never logs, see ``CustomerIOHandler.flush``); never raises."""
    try:
        if _log.disabled:
            # dictConfig's default disable_existing_loggers=True silences loggers created
            # before it ran, ours included; a warning about lost events must still be seen.
            sys.stderr.write(f"customerio_logging WARNING: {message}\n")
            return
        _log.warning(message)
    except Exception:  # noqa: BLE001, S110 - a warning must not become an error of its own
        # Some escape logging's handleError: a reentrant write to stderr, say, when the
        # SIGTERM handler's shutdown interrupted the main thread writing to it.
        pass


def inform(message: str) -> None:
    """Say ``message`` at INFO on the ``customerio_logging`` logger (app threads only, as
    :func:`warn`); never raises."""
    with contextlib.suppress(Exception):  # see warn
        _log.info(message)


class _NotOnDispatchThread(logging.Filter):
    """Drops records made on the dispatch thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


_HTTP_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
    "urllib3.poolmanager",
)
_quiet_filter = _NotOnDispatchThread()


def quiet_http_logs_on_dispatch_thread() -> None:
    """Keep urllib3's records about our own requests out of the app's handlers.

    Without this, each batch's debug lines reach the app's handlers from the dispatch
    thread, and a handler that waits for a flush would wait for itself.
    """
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet_filter not in logger.filters:
            logger.addFilter(_quiet_filter)


class UnknownEventWarnings:
    """With ``unknown_events="warn"``: one warning per event name not declared in
    ``configure(events=...)``, said on the app's thread that logs it."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self._taxonomy = taxonomy
        self.warned: set[str] = set()

    def check(self, snapshot: Snapshot, action: str | None = None) -> None:
        """Warn if ``snapshot`` is an event whose name was neither declared nor warned of
        (``action``: a direct call's, given apart from its fields)."""
        # Here on the app's thread rather than on the dispatch thread: that thread never
        # logs, so it never waits for logging's locks (see CustomerIOHandler.flush).
        # The names remembered are bounded: a longer one is invalid anyway (name_too_long),
        # and past UNKNOWN_NAMES_KEPT of them the last warning says no more will come.
        name = snapshot.tag if isinstance(snapshot.tag, str) else snapshot.message
        if not isinstance(name, str) or len(self.warned) >= UNKNOWN_NAMES_KEPT:
            return
        name = name.strip()
        if action is None:
            action = snapshot.fields.get(ACTION, "event")
        if (
            len(name) <= MAX_NAME_BYTES
            and isinstance(action, str)
            and action == "event"
            and name not in self.warned
            and not self._taxonomy.is_known(name)
        ):
            self.warned.add(name)
            last = len(self.warned) >= UNKNOWN_NAMES_KEPT
            warn(
                f"event {name!r} is not declared in configure(events=...); sent anyway"
                + (f" ({UNKNOWN_NAMES_KEPT} such names reported: no more will be)" if last else "")
            )
