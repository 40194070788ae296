"""CustomerIOHandler: the stdlib logging handler that hands tagged records to the bridge."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from . import _routing
from ._capture import TAG, capture_record
from ._global import current_bridge, note_lost, submit_capture
from .exceptions import ConfigurationError, InvalidEventError

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["CustomerIOHandler"]

# Records already taken by a CustomerIOHandler. Two handlers on one logger chain (one on
# the root, one on "app") see the same record; the record itself is not ours to mark.
# Weak: a record leaves this set when logging is done with it.
_taken: weakref.WeakSet[logging.LogRecord] = weakref.WeakSet()


class CustomerIOHandler(logging.Handler):
    """Sends log records tagged ``cio_event`` to Customer.io; ignores all others.

    Works from ``dictConfig`` with no arguments (``"class":
    "customerio_logging.CustomerIOHandler"``): the bridge is found, or built from the
    environment, on the first tagged record, never at construction. Untagged records
    cost one attribute lookup and a type check; so do tagged ones when the library is
    switched off (``CUSTOMERIO_ENABLED=0``). ``emit`` never raises into the app (but
    in a test fixture's strict mode, for an invalid event) and never blocks on the
    network.

    Tag with ``extra``::

        log.info("plan_changed", extra={"cio_event": True, "user_id": "u1", "to": "pro"})

    structlog event dicts that reach stdlib through ``ProcessorFormatter`` are
    recognised too; one already taken by ``CustomerIOProcessor`` is not sent twice.

    Args:
        level: The handler's level, as for any ``logging.Handler``.
        bridge: The bridge to use; the process's (``get_bridge()``) when None.
    """

    def __init__(self, level: int | str = logging.NOTSET, *, bridge: Bridge | None = None) -> None:
        super().__init__(level)
        self._bridge = bridge

    def handle(self, record: logging.LogRecord) -> bool:
        """Skip untagged records before logging's filters and lock cost anything."""
        try:
            if not record.__dict__.get(TAG):
                msg = record.msg
                if type(msg) is not dict or not msg.get(TAG):
                    return False
        except Exception:  # noqa: BLE001, S110 - a tag with no truth value (a numpy array):
            pass  # emit takes it, and the bridge counts it invalid
        if _routing.muted and self._bridge is None:
            return False  # switched off: a tagged record costs what an untagged one does
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        """Capture the record and queue it; O(1) and never raises."""
        if record in _taken:
            return  # another CustomerIOHandler up the logger chain already took it
        try:
            capture = capture_record(record)
            if capture is None:
                return
            _taken.add(record)
            if self._bridge is None:
                submit_capture(capture)
            else:
                self._bridge.submit(capture)
        except ConfigurationError as exc:
            note_lost(exc)
        except InvalidEventError:
            raise  # only a test fixture's strict mode raises it: the test fails at the call
        except Exception as exc:  # noqa: BLE001 - logging's contract: report, never raise
            note_lost(exc)
            self.handleError(record)

    def flush(self) -> None:
        """Ask the dispatch thread to send what is queued now; never waits.

        ``logging`` calls this while holding its module lock (``dictConfig``,
        ``logging.shutdown``), and the dispatch thread may need that lock to log:
        waiting here could stall the app's logging. To wait for delivery, call
        ``customerio_logging.flush()``; at exit the exit hook does.
        """
        bridge = self._bridge or current_bridge()
        if bridge is not None:
            bridge.request_flush()

    def __repr__(self) -> str:
        return f"<CustomerIOHandler ({logging.getLevelName(self.level)})>"
