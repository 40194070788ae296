"""An app that configures, queues events, forks, and logs in both processes.

Settings come from the environment (CUSTOMERIO_*). The parent logs users p0.., forks,
the child logs c0.. and ends as told; then the parent logs q0.. and exits without
flushing (its exit hook delivers). The child prints ``child-stats {json}`` first thing:
its counters before it logs anything.

argv: --via os-fork | raw-fork (libc's fork(), which skips os.fork's hooks) | mp-process |
mp-pool; --child-exit flush-sys-exit | flush-os-exit |
return (no flush: the exit hook, or multiprocessing's finalizers, must deliver);
--in-flight: fork while the parent's dispatch thread is in the middle of sending a batch
(an injected transport holds it there until the fork is done).
"""

import argparse
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import threading

import requests

import customerio_logging as cio
from customerio_logging._wire import Response

parser = argparse.ArgumentParser()
parser.add_argument("count", type=int)
parser.add_argument(
    "--via", choices=["os-fork", "raw-fork", "mp-process", "mp-pool"], default="os-fork"
)
parser.add_argument(
    "--child-exit", choices=["flush-sys-exit", "flush-os-exit", "return"], default="return"
)
parser.add_argument("--in-flight", action="store_true")
args = parser.parse_args()
N = args.count


class HeldTransport:
    """Posts batches like the default transport; the parent's first send waits at a gate."""

    def __init__(self) -> None:
        self.url = os.environ["CUSTOMERIO_TRACK_URL"] + "/api/v2/batch"
        self.auth = (os.environ["CUSTOMERIO_SITE_ID"], os.environ["CUSTOMERIO_TRACK_API_KEY"])
        self.session = requests.Session()
        self.parent = os.getpid()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed_in: list[int] = []

    def send(self, body: bytes) -> Response:
        if os.getpid() == self.parent and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
        reply = self.session.post(
            self.url,
            data=body,
            auth=self.auth,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        return Response(reply.status_code, dict(reply.headers), reply.content)

    def close(self) -> None:
        self.closed_in.append(os.getpid())
        self.session = requests.Session()


transport = HeldTransport() if args.in_flight else None
# Nothing goes before the fork unless a full batch is wanted in flight.
options: dict[str, object] = {"flush_interval": 60.0, "batch_size": N if args.in_flight else 1000}
if transport is not None:
    options["transport"] = transport
cio.configure(**options)

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())


def log_events(prefix: str, count: int) -> None:
    for i in range(count):
        log.info("job_done", extra={"cio_event": True, "user_id": f"{prefix}{i}", "n": i})


def child_main(prefix: str = "c") -> None:
    stats = dataclasses.asdict(cio.stats())
    if transport is not None:
        stats["transport_closed_here"] = transport.closed_in == [os.getpid()]
    print(f"child-stats {json.dumps(stats)}", flush=True)
    log_events(prefix, N)
    if args.child_exit == "flush-sys-exit":
        assert cio.flush(5.0)
        sys.exit(0)
    if args.child_exit == "flush-os-exit":
        assert cio.flush(5.0)
        os._exit(0)
    # "return": no flush; the way out must deliver.


def pool_task(i: int) -> int:
    log_events(f"w{i}-", N)
    return os.getpid()


if args.in_flight:
    log_events("p", N)  # a full batch: the dispatch thread takes it and starts sending
    assert transport is not None
    assert transport.entered.wait(10), "the batch never went"
    log_events("r", N)  # and more still queued behind it
else:
    log_events("p", N)

if args.via in ("os-fork", "raw-fork"):
    # PyDLL keeps the GIL across the call, so no other thread holds it at the fork.
    pid = os.fork() if args.via == "os-fork" else ctypes.PyDLL(None).fork()
    if pid == 0:
        child_main()
        sys.exit(0)  # normal exit: atexit runs in the child
    _, status = os.waitpid(pid, 0)
    print(f"child-exit {os.waitstatus_to_exitcode(status)}", flush=True)
elif args.via == "mp-process":
    process = multiprocessing.get_context("fork").Process(target=child_main)
    process.start()
    process.join(30)
    print(f"child-exit {process.exitcode}", flush=True)
else:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pids = pool.map(pool_task, range(4), chunksize=1)
        pool.close()
        pool.join()
    print(f"pool-workers {len(set(pids))}", flush=True)

if transport is not None:
    transport.gate.set()
log_events("q", N)
# No flush: the parent's exit hook delivers.
