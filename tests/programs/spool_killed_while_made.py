"""Opens a new spool and is killed (SIGKILL) in the middle of making it.

argv: PATH. Every SQLite connection this process makes traces its statements; the
first CREATE TABLE the spool runs kills the process on the spot.
"""

import os
import signal
import sqlite3
import sys
from typing import Any

from customerio_logging._storage.sqlite import SQLiteSpool

path = sys.argv[1]


def kill_on_create(statement: str) -> None:
    if statement.lstrip().upper().startswith("CREATE TABLE"):
        os.kill(os.getpid(), signal.SIGKILL)


connect = sqlite3.connect


def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    conn = connect(*args, **kwargs)
    conn.set_trace_callback(kill_on_create)
    return conn


sqlite3.connect = traced_connect
SQLiteSpool(path, max_bytes=1 << 20, site_id="site").pending()
print("not killed", flush=True)
