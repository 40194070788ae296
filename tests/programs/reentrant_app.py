"""A tagged log call from a signal handler while the first tagged call builds the bridge.

Settings come from the environment (CUSTOMERIO_*); nothing calls configure(): the first
tagged record builds the bridge, as in an app configured by dictConfig alone. A timer
signal fires every 2 ms from just before that first call, and its handler logs a tagged
event of its own, until the first call returns. Prints the counters as one JSON line.
"""

import dataclasses
import json
import logging
import signal

import customerio_logging as cio

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
fired = 0


def on_alarm(signum: int, frame: object) -> None:
    global fired
    fired += 1
    log.info("from_signal", extra={"cio_event": True, "user_id": f"s{fired}"})


signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
log.info("first", extra={"cio_event": True, "user_id": "u1"})
signal.setitimer(signal.ITIMER_REAL, 0)
delivered = cio.flush(10)
print(json.dumps({"fired": fired, "delivered": delivered, **dataclasses.asdict(cio.stats())}))
