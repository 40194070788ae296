"""Tagged log calls from a signal handler, landing in the middle of the main thread's own.

Settings come from the environment (CUSTOMERIO_*). A timer signal fires every few
milliseconds and its handler logs a tagged event of its own, while the main thread:

``first``: makes the first tagged call, which builds the bridge (nothing calls configure(),
as in an app configured by dictConfig alone); then flushes and prints the counters as one
JSON line.

``durable COUNT``: logs COUNT tagged events with durability="disk" (the API unreachable),
so some of the handler's land in the middle of the main thread's own spool writes; then
prints one JSON line (events logged, the counters) and waits to be killed.
"""

import dataclasses
import json
import logging
import signal
import sys
import threading

import customerio_logging as cio

durable = sys.argv[1] == "durable"
if durable:
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
interval = 0.001 if durable else 0.002
signal.setitimer(signal.ITIMER_REAL, interval, interval)
if durable:
    count = int(sys.argv[2])
    for i in range(count):
        log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}"})
else:
    log.info("first", extra={"cio_event": True, "user_id": "u1"})
signal.setitimer(signal.ITIMER_REAL, 0)
if durable:
    print(json.dumps({"logged": count + fired, **dataclasses.asdict(cio.stats())}), flush=True)
    threading.Event().wait(60)  # until SIGKILL
else:
    delivered = cio.flush(10)
    print(json.dumps({"fired": fired, "delivered": delivered, **dataclasses.asdict(cio.stats())}))
