"""One of several processes draining one spool: claim, ack, until nothing is left.

argv: PATH BATCH. Claims a first batch and prints ``holding``, then waits for a line on
stdin: the test lets every drainer go once all hold a claim at the same time. Then it
acks, and claims and acks until a claim comes back empty (what is left then is leased by
the other drainers, who ack it). Prints one JSON line: the ids it claimed, in order.
"""

import json
import sys
import time

from customerio_logging._storage import SpoolBusyError
from customerio_logging._storage.sqlite import SQLiteSpool

path, batch = sys.argv[1], int(sys.argv[2])
spool = SQLiteSpool(path, max_bytes=100_000_000, site_id="site")
ops = spool.claim(batch)
print("holding", flush=True)
sys.stdin.readline()
got: list[str] = []
deadline = time.monotonic() + 30.0
while ops and time.monotonic() < deadline:
    got.extend(op.id for op in ops)
    spool.ack([op.id for op in ops])
    while True:
        try:
            ops = spool.claim(batch)
            break
        except SpoolBusyError:
            continue  # another drainer held the lock past the busy timeout: try again
print(json.dumps(got), flush=True)
