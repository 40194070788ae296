"""Fills a spool under a file size limit (RLIMIT_FSIZE): a full disk, for one process.

argv: PATH LIMIT_BYTES. Adds 10 KB operations until the spool refuses one, then tries
once more. Prints one JSON line: how many were added, the error's type and message, and
``first`` for both errors. Any other exception escapes (a traceback and exit status 1).
"""

import json
import resource
import signal
import sys

from customerio_logging._storage import SpoolUnavailableError
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation

path, limit = sys.argv[1], int(sys.argv[2])
# Past the limit write() fails with EFBIG, once SIGXFSZ no longer kills the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

spool = SQLiteSpool(path, max_bytes=1_000_000_000, site_id="site")
body = b'{"pad":"' + b"x" * 10_000 + b'"}'
added = 0
report: dict[str, object] = {}
try:
    while added < 10_000:
        spool.add([Operation(f"op-{added:05d}", "event", "filled", body)])
        added += 1
except SpoolUnavailableError as exc:
    report = {"error": type(exc).__name__, "message": str(exc), "first": exc.first}
    try:
        spool.add([Operation("one-more", "event", "filled", b"{}")])
    except SpoolUnavailableError as again:
        report["again_first"] = again.first
print(json.dumps({"added": added, **report}), flush=True)
