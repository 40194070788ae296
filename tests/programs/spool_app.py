"""An app for the spool's end-to-end tests, configured from the environment.

``log N``: log N tagged events (user ids PREFIX0..), then either exit without flushing
(``--end exit``: the exit hook spools what cannot be sent) or print ``logged`` and wait to
be killed (``--end wait``). ``replay``: start a bridge, wait until the spool is empty (or
``--timeout`` passes), print the counters as JSON and exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time

import customerio_logging as cio

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["log", "replay"])
parser.add_argument("count", type=int, nargs="?", default=0)
parser.add_argument("--prefix", default="u")
parser.add_argument("--end", choices=["exit", "wait"], default="exit")
parser.add_argument("--durability", choices=["memory", "disk"], default="memory")
parser.add_argument("--timeout", type=float, default=30.0)
args = parser.parse_args()

bridge = cio.configure(
    durability=args.durability,
    flush_interval=0.05,
    batch_size=200,
    max_retries=1,
    retry_base_delay=0.01,
    retry_max_delay=0.05,
    retry_budget=0.5,
    shutdown_timeout=2.0,
)

if args.mode == "log":
    log = logging.getLogger("app")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(cio.CustomerIOHandler())
    for i in range(args.count):
        log.info("job_done", extra={"cio_event": True, "user_id": f"{args.prefix}{i}", "n": i})
    if args.end == "wait":
        print("logged", flush=True)
        threading.Event().wait(args.timeout)  # until SIGKILL
    sys.exit(0)

spool = bridge.spool
assert spool is not None
deadline = time.monotonic() + args.timeout
done = threading.Event()
while spool.pending() and time.monotonic() < deadline:
    done.wait(0.05)  # the dispatch thread replays; this only watches
cio.shutdown()
print(json.dumps(dataclasses.asdict(cio.stats())), flush=True)
