"""Looks, from outside, at the SQLite locks a process holds on a spool in WAL mode.

argv: PATH. Tries, without waiting, to take for itself the two locks every connection
holds for as long as it is open: the -shm file's DMS byte (offset 128) and the
database's SHARED range (0x40000002, 510 bytes). Prints one JSON line:
``{"shm": "held" | "free", "database": "held" | "free"}``; "held" means another
process holds it, as it must while it has the spool open.
"""

import fcntl
import json
import os
import sys

path = sys.argv[1]
found = {}
for key, name, start, length in (
    ("shm", path + "-shm", 128, 1),
    ("database", path, 0x40000002, 510),
):
    fd = os.open(name, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
    except OSError:
        found[key] = "held"
    else:
        found[key] = "free"
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
    finally:
        os.close(fd)
print(json.dumps(found), flush=True)
