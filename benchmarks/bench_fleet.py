"""Benchmark the fleet rows: what a log call costs with ``redis_url``, Redis up or down.

What it measures (all in one run, baselines included, nothing hard-coded):

(r0) µs per tagged stdlib call with ``durability="disk"`` (each call writes its event to
     the spool before it returns: the one configuration whose log call touches the
     storage), the spool file only, no Redis. The baseline.
(r)  The same with ``redis_url`` pointing at a running ``redis-server`` (started here, on
     a free port): the event is written to Redis from the log call.
(rx) The same with Redis down: ``redis_url`` pointing at a closed port (refused at once).
(rh) The same with Redis hung: a port that accepts connections and never answers, so
     every Redis call would wait out its timeout.

Each row's bridge sends to the local Track API emulator (in this process), so events
are sent and their reservations acked as in production. Targets: (rx)/(r0) <= 1.5 and
(rh)/(r0) <= 1.5: while Redis is down, the log call's cost does not grow with Redis's
timeout (the first call of an outage waits at most the log call's short spool wait,
reported apart as "first call").

Run it from the project root with the project's virtualenv (needs ``redis-server``)::

    .venv/bin/python benchmarks/bench_fleet.py            # about 40 s
    .venv/bin/python benchmarks/bench_fleet.py --quick    # about 15 s
    .venv/bin/python benchmarks/bench_fleet.py --check    # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator
from customerio_logging.testing._redis import RedisServer

TARGET_DOWN_RATIO = 1.5


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A Redis URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def hung_port() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def time_calls(
    emulator: TrackAPIEmulator, spool: Path, redis_url: str | None, chunks: int, calls: int
) -> tuple[list[float], float]:
    """µs per call in each timed chunk, and the first call's µs."""
    bridge = cio.configure(
        site_id=emulator.site_id,
        api_key=emulator.api_key,
        track_url=emulator.url,
        spool_path=str(spool),
        redis_url=redis_url,
        durability="disk",
        install_signal_handlers=False,
        flush_interval=0.05,
    )
    logger = logging.getLogger(f"bench-fleet-{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(cio.CustomerIOHandler(bridge=bridge))
    extra = {"cio_event": True, "user_id": "u1", "plan": "pro"}
    start = time.perf_counter_ns()
    logger.info("plan_changed", extra=extra)
    first = (time.perf_counter_ns() - start) / 1000
    samples = []
    for _ in range(chunks):
        start = time.perf_counter_ns()
        for _ in range(calls):
            logger.info("plan_changed", extra=extra)
        samples.append((time.perf_counter_ns() - start) / 1000 / calls)
        bridge.flush(30.0)
    lost = bridge.stats().dropped + bridge.stats().failed
    cio.shutdown(10.0)
    if lost:
        raise SystemExit(f"{lost} events were dropped or failed: the figures mean nothing")
    return samples, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter chunks")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    chunks, calls = (3, 2_000) if args.quick else (5, 5_000)
    logging.getLogger("customerio_logging").setLevel(logging.ERROR)  # the outage warnings
    rows: dict[str, tuple[list[float], float]] = {}
    with (
        TrackAPIEmulator() as emulator,
        RedisServer() as redis,
        tempfile.TemporaryDirectory() as folder,
        closed_port() as refused,
        hung_port() as hung,
    ):
        cases = {"r0": None, "r": redis.url, "rx": refused, "rh": hung}
        # Twice round, alternating the order, so a drift of the machine hits every row.
        for round_ in range(2):
            for name in cases if round_ == 0 else reversed(list(cases)):
                print(f"... ({name}) round {round_ + 1}", file=sys.stderr, flush=True)
                spool = Path(folder) / f"{name}-{round_}.sqlite3"
                samples, first = time_calls(emulator, spool, cases[name], chunks, calls)
                before = rows.get(name, ([], 0.0))
                rows[name] = (before[0] + samples, max(before[1], first))
    labels = {
        "r0": "durability='disk', spool file only",
        "r": "the same, Redis up",
        "rx": "the same, Redis down (port closed)",
        "rh": "the same, Redis hung (never answers)",
    }
    print(f"{'row':<6}{'what':<40}{'median µs':>11}{'best µs':>10}{'first call µs':>15}")
    for name, (samples, first) in rows.items():
        median = statistics.median(samples)
        print(f"({name}){'':<{4 - len(name)}}{labels[name]:<40}{median:>11.1f}"
              f"{min(samples):>10.1f}{first:>15.0f}")  # fmt: skip
    base = statistics.median(rows["r0"][0])
    missed = False
    print()
    for name in ("rx", "rh"):
        ratio = statistics.median(rows[name][0]) / base
        verdict = "PASS" if ratio <= TARGET_DOWN_RATIO else "MISS"
        missed |= verdict == "MISS"
        print(f"({name})/(r0) = {ratio:.2f}  target <= {TARGET_DOWN_RATIO}  {verdict}")
    ratio = statistics.median(rows["r"][0]) / base
    print(f"(r)/(r0)  = {ratio:.2f}  (no target: a Redis round trip against a file write)")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
