"""SIGTERM arrives while the app's own cio.shutdown() is delivering: it must finish first."""

import logging
import os
import signal
import threading

import customerio_logging as cio

cio.configure(shutdown_timeout=5.0, retry_base_delay=0.05)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())
for i in range(5):
    log.info("evt", extra={"cio_event": True, "user_id": f"u{i}"})
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
cio.shutdown()
