"""durability="disk" in a forked child whose sibling holds the spool's open lock.

argv: PATH. Settings come from the environment (CUSTOMERIO_TRACK_URL). The parent logs
once, then another process takes the spool's open lock (as a sibling worker opening the
same file would) and holds it for 3 s; the parent forks; the child times its first
tagged call. Prints one JSON line: that time and the child's exit status.
"""

import json
import logging
import os
import subprocess
import sys
import time

import customerio_logging as cio

path = sys.argv[1]
cio.configure(
    site_id="site",
    api_key="key",
    spool_path=path,
    durability="disk",
    max_retries=0,
    shutdown_timeout=1.0,
    install_signal_handlers=False,
)
log = logging.getLogger("app")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())
log.info("job_done", extra={"cio_event": True, "user_id": "parent"})
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + ".lock", os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(3)
"""
holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, text=True)
assert holder.stdout is not None
assert holder.stdout.readline().strip() == "held"
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    started = time.perf_counter()
    log.info("job_done", extra={"cio_event": True, "user_id": "child"})
    os.write(write, f"{time.perf_counter() - started}".encode())
    os._exit(0)
os.close(write)
took = float(os.read(read, 100))
_, status = os.waitpid(pid, 0)
holder.wait()
cio.shutdown(1.0)
print(json.dumps({"child_call": took, "child_exit": os.waitstatus_to_exitcode(status)}))
