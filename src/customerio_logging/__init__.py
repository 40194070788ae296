"""Send product events to Customer.io from your log calls.

Tag a log call with ``cio_event`` and add :class:`CustomerIOHandler` (stdlib logging) or
:class:`CustomerIOProcessor` (structlog); events are validated, batched and delivered to
the Track API from one background thread. Or call :func:`track` and the other direct
calls, on the same pipeline, each returning a :class:`Receipt`.
"""

from __future__ import annotations

from ._binding import bind
from ._bridge import Bridge
from ._calls import (
    add_device,
    delete,
    delete_device,
    identify,
    merge,
    page,
    screen,
    suppress,
    track,
    track_anonymous,
    unsuppress,
)
from ._config import Settings
from ._global import app_api, configure, flush, get_bridge, reset, shutdown, stats
from ._ledger import DeadLetter, Stats
from ._reasons import ErrorReport
from ._receipt import Outcome, Receipt
from ._schema import Event, UserAttributes
from ._transactional import send_email, send_push
from .exceptions import (
    ConfigurationError,
    CustomerIOLoggingError,
    DeliveryError,
    InvalidEventError,
)
from .handler import CustomerIOHandler
from .processor import CustomerIOProcessor

__all__ = [
    "Bridge",
    "ConfigurationError",
    "CustomerIOHandler",
    "CustomerIOLoggingError",
    "CustomerIOProcessor",
    "DeadLetter",
    "DeliveryError",
    "ErrorReport",
    "Event",
    "InvalidEventError",
    "Outcome",
    "Receipt",
    "Settings",
    "Stats",
    "UserAttributes",
    "add_device",
    "app_api",
    "bind",
    "configure",
    "delete",
    "delete_device",
    "flush",
    "get_bridge",
    "identify",
    "merge",
    "page",
    "reset",
    "screen",
    "send_email",
    "send_push",
    "shutdown",
    "stats",
    "suppress",
    "track",
    "track_anonymous",
    "unsuppress",
]
