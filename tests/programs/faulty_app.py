"""An app logging N tagged events against a faulty Track API, then exiting (no flush).

Settings come from the environment; argv: N (default 5000), max_requests_per_second
(default 100), batch_size (default 50). Prints the slowest log call.
"""

import logging
import sys
import time

import customerio_logging as cio

count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
cio.configure(
    batch_size=int(sys.argv[3]) if len(sys.argv) > 3 else 50,
    max_requests_per_second=rate,
    # Retry-After is honoured but capped: keeps this test's waits short.
    max_retry_after=0.25,
    flush_interval=0.2,
    shutdown_timeout=90.0,
    retry_base_delay=0.05,
    retry_max_delay=1.0,
    max_retries=20,
)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())

slowest = 0.0
for i in range(count):
    started = time.perf_counter()
    log.info("order_placed", extra={"cio_event": True, "user_id": f"u{i}", "n": i})
    slowest = max(slowest, time.perf_counter() - started)
print(f"slowest log call: {slowest:.4f}s", flush=True)
