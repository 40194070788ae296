"""An app that logs a tagged event from its own atexit hook, registered after import."""

import atexit
import logging

import customerio_logging as cio

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())


@atexit.register
def _goodbye() -> None:
    log.info("app_stopped", extra={"cio_event": True, "user_id": "u1"})


log.info("app_started", extra={"cio_event": True, "user_id": "u1"})
