"""An app configured only through logging.config.dictConfig.

The handler reads its settings from the environment, so this file names no credentials:

    CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... python examples/dictconfig_app.py

Without them it runs against the local emulator.
"""

import atexit
import logging
import logging.config
import os

from customerio_logging.testing import TrackAPIEmulator

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "customerio": {"class": "customerio_logging.CustomerIOHandler", "level": "INFO"},
    },
    "root": {"level": "INFO", "handlers": ["console", "customerio"]},
}

if "CUSTOMERIO_SITE_ID" not in os.environ:
    emulator = TrackAPIEmulator().start()
    os.environ.update(
        CUSTOMERIO_SITE_ID=emulator.site_id,
        CUSTOMERIO_TRACK_API_KEY=emulator.api_key,
        CUSTOMERIO_TRACK_URL=emulator.url,
    )
    # Registered before the bridge exists, so it runs after the bridge's exit hook
    # (atexit runs hooks last-in, first-out) and sees what was delivered.
    atexit.register(lambda: print("emulator received:", emulator.operations))

logging.config.dictConfig(LOGGING)
logging.getLogger("shop").info(
    "order_placed", extra={"cio_event": True, "email": "buyer@example.com", "total": 42.5}
)
# No flush needed: the exit hook delivers what is queued, within shutdown_timeout.
