"""An app that logs tagged events while the API cannot take them, then ends.

Settings come from the environment (CUSTOMERIO_*; the spool is the default one). argv:
``--count N`` events; ``--end exit`` (a normal exit: the exit hook) or ``--end sigterm``
(the app sends itself SIGTERM); ``--shutdown-timeout``; ``--queue`` (max_queue_size);
``--durability``. At a normal exit it prints the counters as one JSON line, from an
atexit hook registered before the library's (so it runs after it).
"""

import argparse
import atexit
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--count", type=int, default=50)
parser.add_argument("--end", choices=["exit", "sigterm"], default="exit")
parser.add_argument("--shutdown-timeout", type=float, default=None)
parser.add_argument("--queue", type=int, default=None)
parser.add_argument("--durability", default="memory")
args = parser.parse_args()


def report() -> None:
    stats = dataclasses.asdict(cio.stats())
    stats["exit_seconds"] = time.monotonic() - ended
    print(json.dumps(stats), flush=True)


atexit.register(report)  # before the library's hook: runs after it

import customerio_logging as cio  # noqa: E402

options: dict[str, object] = {"durability": args.durability}
if args.shutdown_timeout is not None:
    options["shutdown_timeout"] = args.shutdown_timeout
if args.queue is not None:
    options["max_queue_size"] = args.queue
cio.configure(**options)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for i in range(args.count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}", "n": i})
ended = time.monotonic()
print(f"ending at {time.time():.6f}", file=sys.stderr, flush=True)
if args.end == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(60)  # the handler ends the process
sys.exit(0)
