"""An app that queues tagged events and ends with them still queued, telling on_error's
reports on stdout.

Settings come from the environment (CUSTOMERIO_*). argv: ``--count N`` events;
``--end exit`` (a normal exit: the exit hook), ``sigterm`` (it sends itself SIGTERM),
``shutdown`` (it calls ``cio.shutdown()`` itself, then exits) or ``sigterm-in-emit``
(SIGTERM arrives while the main thread is inside a logging handler, holding its lock);
``--shutdown-timeout``; ``--no-spool``; ``--flush`` (deliver them before ending) and
``--after N`` (then log N more);
``--close-logging`` (an atexit hook of the app's, which runs before the library's, shuts
logging down first). Each on_error report is printed as one JSON line ``report {...}``
with the name of the thread that told it. Three handlers on one logger: logging.shutdown()
flushes each after the exit hook.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading

import customerio_logging as cio

parser = argparse.ArgumentParser()
parser.add_argument("--count", type=int, default=5)
parser.add_argument(
    "--end", choices=["exit", "sigterm", "shutdown", "sigterm-in-emit"], default="exit"
)
parser.add_argument("--shutdown-timeout", type=float, default=5.0)
parser.add_argument("--no-spool", action="store_true")
parser.add_argument("--flush", action="store_true")
parser.add_argument("--after", type=int, default=0)
parser.add_argument("--close-logging", action="store_true")
args = parser.parse_args()


def tell(report: cio.ErrorReport) -> None:
    line = {"thread": threading.current_thread().name, **report._asdict()}
    print(f"report {json.dumps(line)}", flush=True)


options: dict[str, object] = {
    "shutdown_timeout": args.shutdown_timeout,
    "flush_interval": 60.0,  # nothing leaves before the end unless flushed
    "on_error": tell,
}
if args.no_spool:
    options["spool_path"] = False
cio.configure(**options)

if args.close_logging:
    atexit.register(logging.shutdown)  # after the library's hook: runs before it


class TermInEmit(logging.StreamHandler):
    """Sends SIGTERM to its own process while emitting the record that asks for it: the
    signal handler runs with this handler's lock held by the interrupted thread."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.getMessage() == "terminate now":
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(60)  # the SIGTERM handler ends the process


root = logging.getLogger()
root.addHandler(TermInEmit(sys.stderr))
# The app logs at INFO, as most services do: the "pending" line is INFO, the "not
# delivered" line WARNING.
logging.getLogger("customerio_logging").setLevel(logging.INFO)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
for _ in range(3):
    log.addHandler(cio.CustomerIOHandler())
for i in range(args.count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}"})
if args.flush:
    print(f"flushed {cio.flush(10.0)}", flush=True)
for i in range(args.after):
    log.info("job_done", extra={"cio_event": True, "user_id": f"v{i}"})
print("ending", flush=True)
if args.end == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(60)  # the handler ends the process
elif args.end == "sigterm-in-emit":
    root.warning("terminate now")
elif args.end == "shutdown":
    cio.shutdown()
sys.exit(0)
