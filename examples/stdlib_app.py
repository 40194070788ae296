"""A stdlib-logging app sending events to the local emulator.

Run: python examples/stdlib_app.py
"""

import logging

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator

with TrackAPIEmulator() as emulator:
    # In production: cio.configure() with CUSTOMERIO_SITE_ID / CUSTOMERIO_TRACK_API_KEY set.
    cio.configure(site_id=emulator.site_id, api_key=emulator.api_key, track_url=emulator.url)

    logging.basicConfig(level=logging.INFO)
    logging.getLogger().addHandler(cio.CustomerIOHandler())
    log = logging.getLogger("billing")

    log.info(
        "plan_changed",
        extra={"cio_event": True, "user_id": "u1", "from_": "free", "to": "pro"},
    )
    log.info(
        "profile updated",
        extra={
            "cio_event": True,
            "cio_action": "identify",
            "user_id": "u1",
            "email": "u1@example.com",
            "plan": "pro",
        },
    )
    log.info("an ordinary line, not sent")

    cio.flush()
    for op in emulator.operations:
        print(op)
    print(cio.stats())
