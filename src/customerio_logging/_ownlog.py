"""The library's own log records: its warnings, and urllib3's kept off the dispatch thread."""

from __future__ import annotations

import logging
import sys

from ._dispatch import THREAD_NAME

__all__ = ["quiet_http_logs_on_dispatch_thread", "warn"]

# Fetched once here so that the dispatch thread never needs logging's module lock to
# find it. Its records are untagged: they never re-enter our handler, even when the app
# attaches it to the root logger.
_log = logging.getLogger("customerio_logging")


def warn(message: str) -> None:
    """Say ``message`` as a warning of the ``customerio_logging`` logger (app threads only:
    the dispatch thread never logs, see ``CustomerIOHandler.flush``)."""
    if _log.disabled:
        # dictConfig's default disable_existing_loggers=True silences loggers created
        # before it ran, ours included; a warning about lost events must still be seen.
        sys.stderr.write(f"customerio_logging WARNING: {message}\n")
        return
    _log.warning(message)


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
