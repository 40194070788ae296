"""An app whose API cannot be reached and whose queue (10 events) is full: what it logs
beyond that spills (the spill buffer). Settings come from the environment (CUSTOMERIO_*;
the spool at CUSTOMERIO_SPOOL_PATH).

argv: MODE COUNT. Every line printed is one JSON object.

``exit``: logs COUNT events and exits at once, without flushing (the exit hook writes
what the buffer still holds). Prints whether a spill writer thread ran after configure()
and after the events.

``sigterm``: logs COUNT events and sends itself SIGTERM (the handler writes the buffer
before the process dies by the signal).

``stuck``: as ``exit``, with the spill writer stuck at its first write for good (a stalled
disk): the exit hook writes the rest on its own. After the library's exit hook, prints
the counters, the size of the stuck group and the exit's seconds.

``atexit``: logs 5 events, then COUNT from an atexit hook that runs before the library's
(the queue fills there): no thread may start in an exit hook. Prints from the hook
whether one did.

``fork``: logs COUNT events (users p0..) while the parent's spill writer is held at its
first write, and forks. The child prints its counters, logs COUNT of its own (c0..),
flushes, prints the users its writes carried, and exits; then the parent lets its
writer go, waits for the child, flushes and exits.
"""

import atexit
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

mode, count = sys.argv[1], int(sys.argv[2])
stuck: list[int] = []  # the size of the group the writer is stuck with
ended = 0.0


def after_the_library() -> None:
    if mode == "stuck":
        stats = dataclasses.asdict(cio.stats())
        say(stuck=stuck, stats=stats, exit_seconds=time.monotonic() - ended)


atexit.register(after_the_library)  # before the library's hook: runs after it

import customerio_logging as cio  # noqa: E402
from customerio_logging._spill import THREAD_NAME  # noqa: E402
from customerio_logging._wire import Operation  # noqa: E402

bridge = cio.configure(
    max_queue_size=10, batch_size=10, max_retries=0 if mode == "fork" else 5, shutdown_timeout=2.0
)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(cio.CustomerIOHandler())


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def writer_ran() -> bool:
    return any(thread.name == THREAD_NAME for thread in threading.enumerate())


def log_events(prefix: str, how_many: int) -> None:
    for i in range(how_many):
        log.info("job_done", extra={"cio_event": True, "user_id": f"{prefix}{i}"})


if mode == "stuck":
    spool = bridge.spool
    assert spool is not None
    real_add = spool.add

    def stall(ops: Sequence[Operation], **options: object) -> int:
        if threading.current_thread().name == THREAD_NAME:
            stuck.append(len(ops))
            threading.Event().wait(60)  # for good: the process ends first
        return real_add(ops, **options)  # type: ignore[arg-type]

    spool.add = stall  # type: ignore[method-assign]

if mode in ("exit", "stuck"):
    at_configure = writer_ran()
    log_events("u", count)
    say(at_configure=at_configure, after=writer_ran())
    ended = time.monotonic()
    sys.exit(0)

if mode == "sigterm":
    log_events("u", count)
    say(after=writer_ran())
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(60)  # the handler ends the process

if mode == "atexit":
    import atexit

    def late_events() -> None:
        log_events("late", count)
        say(in_hook=writer_ran(), stats=dataclasses.asdict(cio.stats()))

    atexit.register(late_events)  # after the library's: runs before it
    log_events("u", 5)
    sys.exit(0)

# fork
spool = bridge.spool
assert spool is not None
parent = os.getpid()
gate, held = threading.Event(), threading.Event()
users: list[str] = []  # whose events this process's writes carried
real_add = spool.add


def add(ops: Sequence[Operation], **options: object) -> int:
    if os.getpid() == parent and threading.current_thread().name == THREAD_NAME:
        held.set()
        gate.wait(30)
    users.extend(json.loads(op.body)["identifiers"]["id"] for op in ops)
    return real_add(ops, **options)  # type: ignore[arg-type]


spool.add = add  # type: ignore[method-assign]
log_events("p", count)
held.wait(30)
# Not while the dispatch thread makes its first request: it imports a module then, and a
# module's import lock held at the fork stays held in the child (a known hazard of its
# own, apart from the spill buffer's).
tick = threading.Event()
while cio.stats().batches == 0:
    tick.wait(0.01)
pid = os.fork()
if pid == 0:
    users.clear()  # the parent's dispatch thread's, before the fork
    say(child_start=dataclasses.asdict(cio.stats()))
    log_events("c", count)
    flushed = cio.flush(10)
    say(child_flushed=flushed, child_users=users, child_stats=dataclasses.asdict(cio.stats()))
    sys.exit(0)
gate.set()
_, status = os.waitpid(pid, 0)
flushed = cio.flush(10)
say(parent_flushed=flushed, child_exit=os.waitstatus_to_exitcode(status), parent_users=users)
sys.exit(0)
