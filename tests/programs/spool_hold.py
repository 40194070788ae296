"""Takes rows of a spool for this process, prints their ids, then exits or stays alive.

argv: PATH MODE COUNT [--wait]. MODE ``claim`` claims COUNT waiting operations (a replay);
MODE ``lease`` adds COUNT operations ``held-0``... with ``lease=True`` (durability="disk").
Prints one JSON line: the ids, in order. With ``--wait`` the process stays alive until
its stdin closes, so its leases belong to a live process; without, it exits at once and
leaves its leases behind (nothing is released or acked).
"""

import json
import sys

from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation

path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
spool = SQLiteSpool(path, max_bytes=10_000_000, site_id="site")
if mode == "claim":
    ids = [op.id for op in spool.claim(count)]
else:
    ids = [f"held-{i}" for i in range(count)]
    spool.add([Operation(i, "event", "held", b'{"id":"%s"}' % i.encode()) for i in ids], lease=True)
print(json.dumps(ids), flush=True)
if "--wait" in sys.argv:
    sys.stdin.read()
