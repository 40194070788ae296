"""One process of a fleet for the fleet-wide rate limit's test, configured from the
environment (its Redis too, when ``CUSTOMERIO_REDIS_URL`` is set).

``COUNT PREFIX``: configure with ``batch_size=50`` and ``max_requests_per_second=20``,
print ``ready``, wait for a line on stdin (so every process starts sending at once), log
COUNT tagged events (user ids PREFIX0..), flush, and print the counters as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import customerio_logging as cio

count, prefix = int(sys.argv[1]), sys.argv[2]
cio.configure(batch_size=50, max_requests_per_second=20, flush_interval=0.05)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"{prefix}{i}", "n": i})
flushed = cio.flush(timeout=60)
cio.shutdown()
print(json.dumps({"flushed": flushed, **dataclasses.asdict(cio.stats())}), flush=True)
