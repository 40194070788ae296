"""durability="disk" under tagged calls from a signal handler, then SIGKILL.

Settings come from the environment (CUSTOMERIO_*, the API unreachable). The main thread
logs COUNT tagged events while a timer signal every millisecond logs one more from its
handler, so some land in the middle of the main thread's own spool writes. Then it
prints one JSON line (events logged, the counters) and waits to be killed.
"""

import dataclasses
import json
import logging
import signal
import sys
import threading

import customerio_logging as cio

count = int(sys.argv[1])
cio.configure(durability="disk", shutdown_timeout=1.0)
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
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
for i in range(count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}"})
signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps({"logged": count + fired, **dataclasses.asdict(cio.stats())}), flush=True)
threading.Event().wait(60)  # until SIGKILL
