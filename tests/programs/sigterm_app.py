"""An app that queues tagged events, says it is ready, then waits on stdin for SIGTERM.

Settings come from the environment (CUSTOMERIO_*). It prints one JSON line when ready:
its pid and whether configure() replaced the SIGTERM handler. Each "more" line on stdin
logs more events and flushes them (to show the bridge still works after a SIGTERM that
did not end the process).
"""

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import customerio_logging as cio

parser = argparse.ArgumentParser()
parser.add_argument("count", type=int)
parser.add_argument("--previous", choices=["default", "python", "ignore"], default="default")
parser.add_argument("--opt-out", action="store_true")
parser.add_argument("--configure-twice", action="store_true")
parser.add_argument("--shutdown-timeout", type=float, default=5.0)
parser.add_argument("--request-timeout", type=float, default=10.0)
parser.add_argument("--batch-size", type=int, default=500)
parser.add_argument(
    "--hold",
    choices=["counters", "markers", "wake", "shutdown", "receipts"],
    help="SIGTERM itself while the main thread holds this lock of the bridge (receipts: "
    "the receipts' lock, with 10 direct calls queued after the events)",
)
parser.add_argument("--busy", action="store_true", help="log and read stats until killed")
parser.add_argument("--self-term", action="store_true", help="send itself SIGTERM when ready")
parser.add_argument(
    "--term-during-exit",
    action="store_true",
    help="exit normally; SIGTERM arrives while the exit hook is delivering",
)
args = parser.parse_args()


def previous_handler(signum: int, frame: object) -> None:
    # Runs after the library's flush: what was queued is already counted as sent.
    print(f"previous handler ran: signum={signum} sent={cio.stats().sent}", flush=True)
    sys.exit(3)


if args.previous == "python":
    signal.signal(signal.SIGTERM, previous_handler)
elif args.previous == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
before = signal.getsignal(signal.SIGTERM)


class TermDuringExit:
    """Posts batches to the emulator; once the app is exiting, each send brings SIGTERM."""

    def __init__(self) -> None:
        import requests

        self.session = requests.Session()
        self.session.auth = (
            os.environ["CUSTOMERIO_SITE_ID"],
            os.environ["CUSTOMERIO_TRACK_API_KEY"],
        )
        self.url = os.environ["CUSTOMERIO_TRACK_URL"] + "/api/v2/batch"
        self.exiting = False

    def send(self, body: bytes) -> Any:
        from customerio_logging._wire import Response

        if self.exiting:
            # Handled by the main thread, which is inside the exit hook waiting for
            # this very send.
            os.kill(os.getpid(), signal.SIGTERM)
        reply = self.session.post(self.url, data=body, timeout=10)
        return Response(reply.status_code, dict(reply.headers), reply.content)

    def close(self) -> None:
        self.session.close()


options: dict[str, Any] = {
    "flush_interval": 60.0,  # nothing goes before the signal unless asked
    "shutdown_timeout": args.shutdown_timeout,
    "request_timeout": args.request_timeout,
    "batch_size": args.batch_size,
    "install_signal_handlers": not args.opt_out,
}
if args.term_during_exit:
    options["transport"] = transport = TermDuringExit()
cio.configure(**options)
installed = signal.getsignal(signal.SIGTERM)
if args.configure_twice:
    cio.configure(**options)
    assert signal.getsignal(signal.SIGTERM) is installed, "a second handler was installed"

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())
for i in range(args.count):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}", "n": i})

print(
    json.dumps({"pid": os.getpid(), "replaced": installed is not before, "queued": args.count}),
    flush=True,
)

if args.hold:
    from customerio_logging import _receipt

    bridge = cio.get_bridge()
    if args.hold == "receipts":
        # Held by a main thread that resolves a receipt, or waits on one (result(),
        # await): the receipts settled by the shutdown need it too.
        receipts = [cio.track(f"d{i}", "job_done") for i in range(10)]
    locks: dict[str, Any] = {
        "counters": bridge._ledger.lock,
        "markers": bridge._dispatcher._markers_lock,
        "wake": bridge._dispatcher._wake._cond,
        "shutdown": bridge._shutdown_lock,
        "receipts": _receipt._lock,
    }
    lock = locks[args.hold]
    with lock:
        # The handler runs right here, on this thread, the lock still held.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    print("survived", flush=True)
    sys.exit(0)

if args.term_during_exit:
    import atexit

    # Registered after the library's exit hook, so it runs just before it.
    atexit.register(lambda: setattr(transport, "exiting", True))
    sys.exit(0)

if args.self_term:
    # As PID 1 of a PID namespace (a container), a signal with the default disposition
    # sent from inside is dropped by the kernel: the library must still end the process.
    os.kill(os.getpid(), signal.SIGTERM)
    print("survived", flush=True)
    sys.exit(0)

if args.busy:
    # The main thread keeps taking the bridge's locks until the signal lands.
    i = 0
    while True:
        log.info("tick", extra={"cio_event": True, "user_id": f"b{i}"})
        cio.stats()
        i += 1

for line in sys.stdin:
    if line.strip() == "more":
        for i in range(args.count):
            log.info("job_done", extra={"cio_event": True, "user_id": f"m{i}", "n": i})
        print(f"more flushed={cio.flush(5.0)} sent={cio.stats().sent}", flush=True)
