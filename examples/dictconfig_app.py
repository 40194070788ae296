"""An app configured only through logging.config.dictConfig.

The handler reads its settings from the environment, so this file names no credentials:

    CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... python examples/dictconfig_app.py

Without them it runs against the local emulator.
"""

import atexit
import logging
import logging.config
import os


def _report() -> None:
    if emulator is not None:
        print("emulator received:", emulator.operations)


# Registered before customerio_logging is imported, so it runs after the library's exit
# hook (atexit runs hooks last-in, first-out) and sees what was delivered.
atexit.register(_report)

from customerio_logging.testing import TrackAPIEmulator  # noqa: E402 - after the hook above

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "customerio": {"class": "customerio_logging.CustomerIOHandler", "level": "INFO"},
    },
    "root": {"level": "INFO", "handlers": ["console", "customerio"]},
}

emulator = None
if "CUSTOMERIO_SITE_ID" not in os.environ:
    emulator = TrackAPIEmulator().start()
    os.environ.update(
        CUSTOMERIO_SITE_ID=emulator.site_id,
        CUSTOMERIO_TRACK_API_KEY=emulator.api_key,
        CUSTOMERIO_TRACK_URL=emulator.url,
    )

logging.config.dictConfig(LOGGING)
logging.getLogger("shop").info(
    "order_placed", extra={"cio_event": True, "email": "buyer@example.com", "total": 42.5}
)
# No flush needed: the exit hook delivers what is queued, within shutdown_timeout.
