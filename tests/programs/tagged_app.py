"""An app that logs COUNT events named NAME, for users PREFIX0 to PREFIX<COUNT - 1>, and one
``heartbeat`` event, then shuts down and prints its counters as JSON.

Settings come from the environment (the emulator command prints them); argv: NAME PREFIX
COUNT. Retries are quick and many, so that a faulty emulator delays delivery but cannot
stop it.
"""

import dataclasses
import json
import logging
import sys

import customerio_logging as cio

name, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
cio.configure(
    batch_size=20,
    flush_interval=0.05,
    # Retry-After is honoured but capped: keeps the waits short.
    max_retry_after=0.25,
    retry_base_delay=0.05,
    retry_max_delay=0.5,
    max_retries=30,
    shutdown_timeout=60.0,
)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())

log.info("heartbeat", extra={"cio_event": True, "user_id": f"{prefix}heartbeat"})
for i in range(count):
    log.info(name, extra={"cio_event": True, "user_id": f"{prefix}{i}", "n": i})
cio.shutdown(timeout=60.0)
print(json.dumps(dataclasses.asdict(cio.stats())), flush=True)
