"""An app whose Redis hangs while it exits, configured from the environment.

``COUNT``: configure with ``shutdown_timeout=1``, log COUNT tagged events (user ids
u0..), print ``logged``, wait for a line on stdin (the test stops Redis meanwhile), then
shut down and print the seconds the shutdown took and the counters as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time

import customerio_logging as cio

count = int(sys.argv[1])
cio.configure(batch_size=50, flush_interval=0.01, shutdown_timeout=1.0)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for i in range(count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}"})
print("logged", flush=True)
sys.stdin.readline()
start = time.monotonic()
cio.shutdown()
took = time.monotonic() - start
print(json.dumps({"took": took, **dataclasses.asdict(cio.stats())}), flush=True)
