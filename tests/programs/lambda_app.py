"""A Lambda-style handler under ``flush_after``, invoked INVOCATIONS times, then os._exit.

Settings come from the environment (CUSTOMERIO_*). Each invocation logs EVENTS tagged
events. The context says ``REMAINING`` ms are left. Prints one JSON line: how long each
invocation took, and the counters; then ends with os._exit(0), as a sandbox that is
frozen for good or killed would: no atexit hook, no flush after the last return.
"""

import dataclasses
import json
import logging
import os
import sys
import time

import customerio_logging as cio
from customerio_logging.integrations.aws_lambda import flush_after

invocations, events, remaining = (int(a) for a in sys.argv[1:4])
log = logging.getLogger("handler")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return remaining


@flush_after
def handler(event: dict[str, int], context: object) -> str:
    for i in range(events):
        log.info("invoked", extra={"cio_event": True, "user_id": f"u{event['n']}-{i}"})
    return "ok"


took = []
for n in range(invocations):
    started = time.monotonic()
    assert handler({"n": n}, Context()) == "ok"
    took.append(time.monotonic() - started)
print(json.dumps({"took": took, **dataclasses.asdict(cio.stats())}), flush=True)
os._exit(0)
