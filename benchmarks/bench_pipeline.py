"""Benchmark the log-call-to-Customer.io pipeline against the local Track API emulator.

What it measures (all in one run, baselines included, nothing hard-coded):

(a) µs per call on the app thread: a plain structlog JSON log call, no bridge.
(b) µs per call: the same call tagged ``cio_event=True`` with ``CustomerIOProcessor`` in
    the chain, while the dispatch thread batches and posts concurrently (GIL included).
    The queue is flushed between chunks, outside the timed region. A diagnostic row (b0)
    times the same chain against a bridge whose thread was never started: the processor's
    own cost on the app thread, without the dispatch thread competing for the GIL.
(t) µs per direct call: ``cio.track("u1", "plan_changed", from_=..., to=...)``, the
    receipt unused, while the dispatch thread batches and posts concurrently, as in (b);
    (t0) the same against a bridge whose thread was never started, as in (b0).
(c) µs that ``CustomerIOHandler`` adds to an untagged stdlib record: a logger with a
    ``NullHandler`` only, against one with ``NullHandler`` + ``CustomerIOHandler``.
(d) End-to-end events/s: N tagged structlog calls, then ``cio.flush()``; timed from the
    first call to the flush returning; the emulator must have received all N. (d'') the
    dispatch thread's CPU time (its own clock: user and system) over those runs, per event.
(e) The official client's one-request-per-event ``CustomerIO.track()``: µs per call and
    events/s against the emulator's v1 endpoint.
(g) The library switched off (``configure(enabled=False)``): µs a tagged stdlib record
    costs over an untagged one, both through ``NullHandler`` + ``CustomerIOHandler``.
(o) µs per call during an outage: the call of (b) against a bridge whose API cannot be
    reached (a closed port), spool on, queue full, so that every call spills; each chunk
    is timed until what it spilled is on disk. (n) is (b) again, paired with it.
(f1), (f4) µs per call with ``durability="disk"`` (a spool write before each call
    returns, as (f)): from one thread, and from 4 threads at once (group commit).
(s) An outage burst in a child process (``spool_outage.py``): 1,000,000 tagged calls
    with the API unreachable and the spool on; the spool's peak size on disk (with its
    ``-wal`` and ``-shm``) against ``max_spool_bytes``, and the peak RSS growth.

It prints a table (median and best of several timed chunks per metric) and the ratios
against their targets: (b)/(a) <= 2.0, (t)/(b) <= 1.0, (c) difference <= 0.3 µs,
(d'') dispatch-thread CPU <= 3 µs per event, (g) difference <= 0.1 µs, (d)/(e) >= 30,
(o)/(n) <= 2.0, (s) peak on disk <= 1.10 x max_spool_bytes and peak RSS growth <= 20 MB.

The emulator runs in a child process, so its request parsing does not compete for this
process's GIL (inside the process it costs about as much CPU per event as the bridge
itself). On a two-core machine it still competes for the cores.

Run it from the project root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_pipeline.py            # full run, about 3 min
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # short run, about 30 s
    .venv/bin/python benchmarks/bench_pipeline.py --check    # exit 1 if a target is missed

Exit status: 0 on success, 1 with ``--check`` when a target is missed, 2 when a sanity
check fails (events dropped or not all received), whatever the options.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TextIO

import structlog
from customerio import CustomerIO
from spool_outage import outage_problems, report_spool_outage, run_spool_outage_phase

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator

# Targets: the ratios a release should meet on a quiet 2-core machine.
TARGET_PROCESSOR_RATIO = 2.0  # (b)/(a), at most
TARGET_HANDLER_EXTRA_US = 0.3  # (c) difference in µs, at most
TARGET_DISPATCH_CPU_US = 3.0  # (d''): the dispatch thread's CPU per event in (d), at most
TARGET_DIRECT_RATIO = 1.0  # (t)/(b): a direct call costs no more than a tagged log call
TARGET_THROUGHPUT_RATIO = 30.0  # (d)/(e) events/s, at least
TARGET_OFF_EXTRA_US = 0.1  # (g): switched off, a tagged call costs what an untagged one does
TARGET_OUTAGE_RATIO = 2.0  # (o)/(n): during an outage a log call costs at most twice a normal one
OUTAGE_QUEUE = 100  # the outage bridge's queue (and batch): full from the start
DISK_THREADS = 4  # (f4)

EVENT = "plan_changed"
FLUSH_TIMEOUT = 60.0
BATCH_SIZE = 500  # the library's default
FLUSH_INTERVAL = 1.0  # the library's default


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work each phase does."""

    name: str
    warmup_chunks: int  # untimed chunks before (a)/(b) and (c)
    chunks: int  # timed chunks for (a)/(b) and (c)
    structlog_calls: int  # calls per chunk in (a)/(b)
    stdlib_calls: int  # calls per chunk in (c)
    e2e_events: int  # N in (d)
    e2e_runs: int
    client_calls: int  # calls per chunk in (e)
    client_chunks: int


FULL = Plan("full", 2, 15, 20_000, 50_000, 30_000, 3, 250, 6)
QUICK = Plan("quick", 1, 7, 5_000, 20_000, 8_000, 2, 150, 3)


@dataclass(slots=True)
class Series:
    """One metric's samples, one per timed chunk (or run)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


# -- the emulator, in a child process -----------------------------------------------------


def _serve_emulator(conn: Connection) -> None:
    """Child process: run the emulator and answer the parent's commands over ``conn``."""
    with TrackAPIEmulator() as emu:
        conn.send((emu.url, emu.site_id, emu.api_key))
        while True:
            command, args = conn.recv()
            if command == "count":
                conn.send((len(emu.operations), len(emu.rejected)))
            elif command == "wait":
                conn.send(emu.wait_for_operations(*args))
            elif command == "reset":
                emu.reset()
                conn.send(None)
            else:  # "stop"
                conn.send(None)
                return


class RemoteEmulator:
    """A ``TrackAPIEmulator`` in a child process, driven over a pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_emulator, args=(child,), name="emulator", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30.0):
            raise RuntimeError("the emulator process did not start within 30 s")
        self.url, self.site_id, self.api_key = self._conn.recv()

    def _call(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        return self._conn.recv()

    def counts(self) -> tuple[int, int]:
        """Operations accepted and rejected since the last reset."""
        accepted, rejected = self._call("count")
        return int(accepted), int(rejected)

    def wait_for_operations(self, n: int, timeout: float) -> bool:
        return bool(self._call("wait", n, timeout))

    def reset(self) -> None:
        self._call("reset")

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._call("stop")
        self._process.join(10.0)
        self._conn.close()


# -- helpers ------------------------------------------------------------------------------


class Problems:
    """Sanity checks that failed: the numbers around them cannot be trusted."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.items.append(message)


def timed_ns(loop: Callable[[int], None], n: int, *, gc_off: bool) -> int:
    """Run ``loop(n)`` once and return the elapsed nanoseconds."""
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        start = time.perf_counter_ns()
        loop(n)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def structlog_logger(processors: Sequence[Any], out: TextIO) -> Any:
    """Configure structlog with ``processors`` and return a fresh logger for that chain.

    With ``cache_logger_on_first_use`` the logger keeps the chain it first ran with, so a
    later ``configure`` for the other variant does not change it.
    """
    structlog.configure(
        processors=list(processors),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()


def plain_chain() -> list[Any]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.JSONRenderer(),
    ]


def bridged_chain(bridge: cio.Bridge | None = None) -> list[Any]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        cio.CustomerIOProcessor(bridge=bridge),
        structlog.processors.JSONRenderer(),
    ]


def idle_bridge(emu: RemoteEmulator, capacity: int, spool: str | None = None) -> cio.Bridge:
    """A bridge that is never started: ``submit`` only queues, no thread takes the work.

    With ``spool`` (a file path), ``durability="disk"``: each call also writes its event
    to the spool before returning.
    """
    settings = cio.Settings(
        site_id=emu.site_id,
        api_key=emu.api_key,
        track_url=emu.url,
        batch_size=BATCH_SIZE,
        max_queue_size=capacity,
        spool_path=spool or False,
        durability="disk" if spool else "memory",
    )
    bridge = cio.Bridge(settings)
    if bridge.spool is not None:
        bridge.spool.prepare()  # as start() does: a log call never opens the spool
    return bridge


def plain_loop(log: Any) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            log.info(EVENT, user_id="u1", from_="free", to="pro")

    return loop


def tagged_loop(log: Any) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            log.info(EVENT, cio_event=True, user_id="u1", from_="free", to="pro")

    return loop


def direct_loop(track: Callable[..., object]) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            track("u1", EVENT, from_="free", to="pro")

    return loop


def stdlib_loop(logger: logging.Logger, *, tagged: bool = False) -> Callable[[int], None]:
    extra: dict[str, object] = {"user_id": "u1", "from_": "free", "to": "pro"}
    if tagged:
        extra["cio_event"] = True

    def loop(n: int) -> None:
        for _ in range(n):
            logger.info(EVENT, extra=extra)

    return loop


def stdlib_logger(name: str, handlers: Sequence[logging.Handler]) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    return logger


# -- (o), (n): an outage; (f1), (f4): durability="disk" from one thread and from several ---


@dataclass(slots=True)
class OutageResults:
    outage_us: Series = field(default_factory=Series)  # (o) until spilled to disk
    normal_us: Series = field(default_factory=Series)  # (n), paired with (o)
    left_pct: Series = field(default_factory=Series)  # (o): chunk still spilling at its end
    disk_one_us: Series = field(default_factory=Series)  # (f1)
    disk_threads_us: Series = field(default_factory=Series)  # (f4)


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens: an API that cannot be reached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def outage_bridge(spool: str) -> cio.Bridge:
    """A started bridge whose API cannot be reached, with a spool and a queue of
    OUTAGE_QUEUE: its thread holds one batch in the retry backoff (the first retry 15-30 s
    away), the queue stays full, and every further call spills."""
    settings = cio.Settings(
        site_id="bench-site",
        api_key="bench-key",
        track_url=closed_port_url(),
        batch_size=OUTAGE_QUEUE,
        max_queue_size=OUTAGE_QUEUE,
        retry_base_delay=30.0,
        retry_max_delay=30.0,
        spool_path=spool,
        install_signal_handlers=False,
    )
    return cio.Bridge(settings).start()


def spilled(bridge: cio.Bridge) -> int:
    """Events in the outage bridge's memory beyond its queue and its batch in the backoff:
    those still in the spill buffer."""
    return max(0, bridge.stats().queue_depth - 2 * OUTAGE_QUEUE)


def outage_loop(log: Any, bridge: cio.Bridge, left: list[int]) -> Callable[[int], None]:
    """``n`` tagged calls, then the wait until the spill buffer is written: a backlog left
    to the writer thread would flatter the calls. What was left is appended to ``left``."""
    calls = tagged_loop(log)

    def loop(n: int) -> None:
        calls(n)
        left.append(spilled(bridge))
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while spilled(bridge) and time.monotonic() < deadline:
            time.sleep(0.0005)

    return loop


def run_outage_phase(
    plan: Plan, emu: RemoteEmulator, out: TextIO, results: OutageResults, problems: Problems
) -> None:
    """(o) against (n), chunk by chunk, alternating which goes first: the tagged call of
    (b) during an outage (API unreachable, spool on, queue full: it spills), timed until
    what it spilled is on disk; and the same call with the API up, as in (b)."""
    calls = max(1000, plan.structlog_calls // 2)
    progress(f"(o)/(n): {plan.chunks} x {calls:,} calls each")
    emu.reset()
    sent, left, warm = 0, [], 200
    with tempfile.TemporaryDirectory() as folder:
        bridge = outage_bridge(os.path.join(folder, "outage.sqlite3"))
        try:
            # Each logger is used at once: it keeps the chain configured at its first use.
            down = outage_loop(structlog_logger(bridged_chain(bridge), out), bridge, left)
            down(2 * OUTAGE_QUEUE + warm)  # the queue, the batch in the backoff, and spills
            up = tagged_loop(structlog_logger(bridged_chain(), out))
            up(warm)
            sent += warm
            for index in range(plan.warmup_chunks + plan.chunks):
                for variant in ("o", "n") if index % 2 == 0 else ("n", "o"):
                    if variant == "o":
                        ns = timed_ns(down, calls, gc_off=True)
                        series = results.outage_us
                    else:
                        up(warm)
                        problems.check(
                            cio.flush(FLUSH_TIMEOUT), "(n) a warm-up flush did not finish"
                        )
                        ns = timed_ns(up, calls, gc_off=True)
                        problems.check(cio.flush(FLUSH_TIMEOUT), "(n) a flush did not finish")
                        sent += warm + calls
                        series = results.normal_us
                    if index >= plan.warmup_chunks:
                        series.samples.append(ns / calls / 1000)
                        if variant == "o":
                            results.left_pct.samples.append(100 * left[-1] / calls)
        finally:
            bridge.shutdown(2.0)
        stats = bridge.stats()
        problems.check(
            stats.spooled == stats.enqueued and stats.queue_depth == 0,
            f"(o) {stats.spooled} of {stats.enqueued} events spooled, {stats.dropped} dropped",
        )
        assert bridge.spool is not None
        pending = bridge.spool.pending()
        problems.check(pending == stats.enqueued, f"(o) {pending} events on disk")
    accepted, rejected = emu.counts()
    problems.check(
        accepted == sent and rejected == 0,
        f"(n) the emulator accepted {accepted} of {sent} events ({rejected} rejected)",
    )
    emu.reset()


def threaded(loop: Callable[[int], None], threads: int) -> Callable[[int], None]:
    """``loop``, its ``n`` calls shared out among ``threads`` threads running at once."""

    def run(n: int) -> None:
        workers = [threading.Thread(target=loop, args=(n // threads,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


def run_disk_threads_phase(
    plan: Plan, emu: RemoteEmulator, out: TextIO, results: OutageResults, problems: Problems
) -> None:
    """(f1) against (f4): durability="disk" calls from one thread, and the same number from
    DISK_THREADS threads at once (their spool writes grouped: group commit)."""
    calls = max(1000, plan.structlog_calls // 5)
    progress(f"(f1)/(f4): {plan.chunks} x {calls:,} calls each, 1 and {DISK_THREADS} threads")
    warm = 200
    with tempfile.TemporaryDirectory() as folder:
        for index in range(plan.warmup_chunks + plan.chunks):
            for variant in ("f1", "f4") if index % 2 else ("f4", "f1"):
                spool = os.path.join(folder, f"threads-{index}-{variant}.sqlite3")
                idle = idle_bridge(emu, calls + warm, spool)
                loop = tagged_loop(structlog_logger(bridged_chain(idle), out))
                loop(warm)
                run = loop if variant == "f1" else threaded(loop, DISK_THREADS)
                ns = timed_ns(run, calls, gc_off=True)
                assert idle.spool is not None
                written = idle.spool.pending()
                idle.spool.close()
                problems.check(written == calls + warm, f"({variant}) {written} events on disk")
                if index >= plan.warmup_chunks:
                    series = results.disk_one_us if variant == "f1" else results.disk_threads_us
                    series.samples.append(ns / calls / 1000)


def outage_rows(plan: Plan, r: OutageResults) -> list[tuple[str, str, str, str, str]]:
    """The table's rows for (o), (n), (f1) and (f4)."""
    outage = f"{plan.chunks} x {max(1000, plan.structlog_calls // 2):,}"
    disk = f"{plan.chunks} x {max(1000, plan.structlog_calls // 5):,}"
    return [
        (label, f"{series.median:.2f}", f"{series.min:.2f}", "µs/call", size)
        for label, series, size in (
            ("(o) outage: (b) with the API unreachable, spilling", r.outage_us, outage),
            ("(n) (b), paired with (o)", r.normal_us, outage),
            ("(f1) durability='disk', 1 thread", r.disk_one_us, disk),
            (f"(f4) durability='disk', {DISK_THREADS} threads at once", r.disk_threads_us, disk),
        )
    ]


def outage_check(r: OutageResults) -> tuple[str, str, str, bool]:
    """(o)/(n) against its target, as the report's checks are."""
    ratio = r.outage_us.median / r.normal_us.median
    return (
        "(o)/(n)",
        f"{ratio:.2f}x",
        f"<= {TARGET_OUTAGE_RATIO:g}x",
        ratio <= TARGET_OUTAGE_RATIO,
    )


def outage_notes(r: OutageResults) -> None:
    print(
        f"(o): API unreachable (a closed port), spool on, queue of {OUTAGE_QUEUE} full; each "
        f"chunk timed until its spills are on disk (median {r.left_pct.median:.0f}% of a "
        f"chunk was still in the spill buffer when its last call returned)"
    )
    print(
        f"(f4): {r.disk_threads_us.median:.1f} µs per call from {DISK_THREADS} threads at once "
        f"against (f1) {r.disk_one_us.median:.1f} µs from one (group commit); no target"
    )


# -- the phases ---------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    plain_us: Series = field(default_factory=Series)  # (a)
    processor_us: Series = field(default_factory=Series)  # (b)
    idle_us: Series = field(default_factory=Series)  # (b0): no dispatch thread
    direct_us: Series = field(default_factory=Series)  # (t): cio.track(...)
    direct_idle_us: Series = field(default_factory=Series)  # (t0): no dispatch thread
    backlog_pct: Series = field(default_factory=Series)  # (b): chunk still queued at its end
    processor_dropped: int = 0
    null_us: Series = field(default_factory=Series)  # (c) NullHandler only
    handler_us: Series = field(default_factory=Series)  # (c) + CustomerIOHandler
    handler_extra_us: Series = field(default_factory=Series)  # (c) paired differences
    e2e_rate: Series = field(default_factory=Series)  # (d) events/s per run
    e2e_app_us: Series = field(default_factory=Series)  # (d) app-thread µs per call
    e2e_dispatch_us: Series = field(default_factory=Series)  # (d) dispatch-thread CPU µs/event
    e2e_dropped: int = 0
    disk_us: Series = field(default_factory=Series)  # (f) (b0) with durability="disk"
    memory_us: Series = field(default_factory=Series)  # (f0) (b0), paired with (f)
    client_us: Series = field(default_factory=Series)  # (e) µs per call
    client_rate: Series = field(default_factory=Series)  # (e) events/s per chunk
    off_untagged_us: Series = field(default_factory=Series)  # (g) switched off, untagged
    off_tagged_us: Series = field(default_factory=Series)  # (g) switched off, tagged
    off_extra_us: Series = field(default_factory=Series)  # (g) paired differences
    outage: OutageResults = field(default_factory=OutageResults)  # (o), (n), (f1), (f4)


def run_structlog_phase(
    plan: Plan, emu: RemoteEmulator, out: TextIO, results: Results, problems: Problems
) -> None:
    """(a), (b), (b0), (t) and (t0), chunk by chunk, rotating which goes first."""
    progress(f"(a)/(b)/(b0)/(t)/(t0): {plan.chunks} x {plan.structlog_calls:,} calls each")
    emu.reset()
    before = cio.stats()
    tagged = 0
    warm = 200
    for index in range(plan.warmup_chunks + plan.chunks):
        timed = index >= plan.warmup_chunks
        variants = ("a", "b", "b0", "t", "t0")
        order = variants[index % 5 :] + variants[: index % 5]
        for variant in order:
            if variant in ("t", "t0"):
                tagged += run_direct_chunk(variant, plan, emu, results, problems, timed, warm)
                continue
            if variant == "a":
                log = structlog_logger(plain_chain(), out)
                plain_loop(log)(warm)
                ns = timed_ns(plain_loop(log), plan.structlog_calls, gc_off=True)
                if timed:
                    results.plain_us.samples.append(ns / plan.structlog_calls / 1000)
                continue
            if variant == "b0":
                idle = idle_bridge(emu, plan.structlog_calls + warm)
                log = structlog_logger(bridged_chain(idle), out)
                tagged_loop(log)(warm)
                ns = timed_ns(tagged_loop(log), plan.structlog_calls, gc_off=True)
                problems.check(idle.stats().dropped == 0, "(b0) the idle bridge dropped events")
                if timed:
                    results.idle_us.samples.append(ns / plan.structlog_calls / 1000)
                continue
            log = structlog_logger(bridged_chain(), out)
            tagged_loop(log)(warm)
            problems.check(cio.flush(FLUSH_TIMEOUT), "(b) a warm-up flush did not finish")
            ns = timed_ns(tagged_loop(log), plan.structlog_calls, gc_off=True)
            backlog = cio.stats().queue_depth
            problems.check(cio.flush(FLUSH_TIMEOUT), "(b) a flush did not finish")
            tagged += warm + plan.structlog_calls
            if timed:
                results.processor_us.samples.append(ns / plan.structlog_calls / 1000)
                results.backlog_pct.samples.append(100 * backlog / plan.structlog_calls)
    after = cio.stats()
    results.processor_dropped = after.dropped - before.dropped
    problems.check(results.processor_dropped == 0, f"(b) dropped {results.processor_dropped}")
    accepted, rejected = emu.counts()
    problems.check(
        accepted == tagged and rejected == 0,
        f"(b) the emulator accepted {accepted} of {tagged} events ({rejected} rejected)",
    )
    emu.reset()


def run_direct_chunk(
    variant: str,
    plan: Plan,
    emu: RemoteEmulator,
    results: Results,
    problems: Problems,
    timed: bool,
    warm: int,
) -> int:
    """One chunk of (t) or (t0); the events it sent to the emulator."""
    n = plan.structlog_calls
    if variant == "t0":
        idle = idle_bridge(emu, n + warm)
        direct_loop(idle.track)(warm)
        ns = timed_ns(direct_loop(idle.track), n, gc_off=True)
        problems.check(idle.stats().dropped == 0, "(t0) the idle bridge dropped events")
        if timed:
            results.direct_idle_us.samples.append(ns / n / 1000)
        return 0
    direct_loop(cio.track)(warm)
    problems.check(cio.flush(FLUSH_TIMEOUT), "(t) a warm-up flush did not finish")
    ns = timed_ns(direct_loop(cio.track), n, gc_off=True)
    problems.check(cio.flush(FLUSH_TIMEOUT), "(t) a flush did not finish")
    if timed:
        results.direct_us.samples.append(ns / n / 1000)
    return warm + n


def run_durability_phase(
    plan: Plan, emu: RemoteEmulator, out: TextIO, results: Results, problems: Problems
) -> None:
    """(f): what durability="disk" adds to a call: (b0) with a spool write, against (b0)."""
    calls = max(1000, plan.structlog_calls // 5)
    progress(f"(f): {plan.chunks} x {calls:,} calls each, disk and memory")
    warm = 200
    with tempfile.TemporaryDirectory() as folder:
        for index in range(plan.warmup_chunks + plan.chunks):
            timed = index >= plan.warmup_chunks
            for variant in ("f", "f0") if index % 2 else ("f0", "f"):
                spool = os.path.join(folder, f"spool-{index}.sqlite3") if variant == "f" else None
                idle = idle_bridge(emu, calls + warm, spool)
                log = structlog_logger(bridged_chain(idle), out)
                tagged_loop(log)(warm)
                ns = timed_ns(tagged_loop(log), calls, gc_off=True)
                if variant == "f":
                    assert idle.spool is not None
                    written = idle.spool.pending()
                    idle.spool.close()
                    problems.check(written == calls + warm, f"(f) {written} events on disk")
                if timed:
                    series = results.disk_us if variant == "f" else results.memory_us
                    series.samples.append(ns / calls / 1000)


def run_handler_phase(plan: Plan, results: Results) -> None:
    """(c): NullHandler only against NullHandler + CustomerIOHandler, untagged records."""
    progress(f"(c): {plan.chunks} x {plan.stdlib_calls:,} calls each")
    bare = stdlib_loop(stdlib_logger("bench.null", [logging.NullHandler()]))
    bridged = stdlib_loop(
        stdlib_logger("bench.cio", [logging.NullHandler(), cio.CustomerIOHandler()])
    )
    paired(plan, bare, bridged, (results.null_us, results.handler_us, results.handler_extra_us))


def run_switched_off_phase(plan: Plan, results: Results) -> None:
    """(g): the library switched off (``enabled=False``): a tagged record against an
    untagged one, both through NullHandler + CustomerIOHandler. Run last: it replaces
    the benchmark's bridge."""
    progress(f"(g): {plan.chunks} x {plan.stdlib_calls:,} calls each")
    cio.configure(enabled=False)
    logger = stdlib_logger("bench.off", [logging.NullHandler(), cio.CustomerIOHandler()])
    untagged, tagged = stdlib_loop(logger), stdlib_loop(logger, tagged=True)
    tagged(1)  # the first tagged record finds the switched-off bridge
    series = (results.off_untagged_us, results.off_tagged_us, results.off_extra_us)
    paired(plan, untagged, tagged, series)


def paired(
    plan: Plan,
    base: Callable[[int], None],
    other: Callable[[int], None],
    series: tuple[Series, Series, Series],
) -> None:
    """Time ``base`` and ``other`` chunk by chunk, alternating which goes first; their
    µs per call, and the paired differences, go to ``series``."""
    bare, bridged = base, other
    n = plan.stdlib_calls
    for index in range(plan.warmup_chunks + plan.chunks):
        first, second = (bare, bridged) if index % 2 == 0 else (bridged, bare)
        first(1000)
        first_us = timed_ns(first, n, gc_off=True) / n / 1000
        second(1000)
        second_us = timed_ns(second, n, gc_off=True) / n / 1000
        if index < plan.warmup_chunks:
            continue
        bare_us, bridged_us = (first_us, second_us) if first is bare else (second_us, first_us)
        series[0].samples.append(bare_us)
        series[1].samples.append(bridged_us)
        series[2].samples.append(bridged_us - bare_us)


def run_end_to_end_phase(
    plan: Plan, emu: RemoteEmulator, out: TextIO, results: Results, problems: Problems
) -> None:
    """(d): N tagged calls, then flush; from the first call to the flush returning."""
    n = plan.e2e_events
    progress(f"(d): {plan.e2e_runs} runs of {n:,} events")
    log = structlog_logger(bridged_chain(), out)
    loop = tagged_loop(log)
    before = cio.stats()
    loop(1000)  # warm-up: the logger, the session's connection, the emulator
    problems.check(cio.flush(FLUSH_TIMEOUT), "(d) the warm-up flush did not finish")
    thread = cio.get_bridge().thread
    assert thread is not None
    assert thread.ident is not None
    # The dispatch thread's own CPU clock (user and system time, Linux and macOS).
    dispatch_clock = time.pthread_getcpuclockid(thread.ident)
    for _ in range(plan.e2e_runs):
        emu.reset()
        gc.collect()
        cpu_before = time.clock_gettime_ns(dispatch_clock)
        start = time.perf_counter_ns()
        loop(n)
        logged = time.perf_counter_ns()
        flushed = cio.flush(FLUSH_TIMEOUT)
        end = time.perf_counter_ns()
        cpu_after = time.clock_gettime_ns(dispatch_clock)
        results.e2e_dispatch_us.samples.append((cpu_after - cpu_before) / n / 1000)
        problems.check(flushed, "(d) flush did not finish")
        accepted, rejected = emu.counts()
        problems.check(
            accepted == n and rejected == 0,
            f"(d) the emulator accepted {accepted} of {n} events ({rejected} rejected)",
        )
        results.e2e_rate.samples.append(n / ((end - start) / 1e9))
        results.e2e_app_us.samples.append((logged - start) / n / 1000)
    results.e2e_dropped = cio.stats().dropped - before.dropped
    problems.check(results.e2e_dropped == 0, f"(d) dropped {results.e2e_dropped}")
    emu.reset()


def run_client_phase(plan: Plan, emu: RemoteEmulator, results: Results, problems: Problems) -> None:
    """(e): the official client, one POST per event, to the emulator's v1 endpoint."""
    progress(f"(e): {plan.client_chunks} x {plan.client_calls:,} track() calls")
    emu.reset()
    client = CustomerIO(site_id=emu.site_id, api_key=emu.api_key, retries=0)
    # Its URL builder forces https://; this makes track() post to the emulator instead.
    client.base_url = emu.url + "/api/v1"
    data = {"from": "free", "to": "pro"}

    def loop(n: int) -> None:
        for _ in range(n):
            client.track(customer_id="u1", name=EVENT, data=data)

    calls = 20
    try:
        loop(calls)
        for _ in range(plan.client_chunks):
            ns = timed_ns(loop, plan.client_calls, gc_off=False)
            calls += plan.client_calls
            per_call_us = ns / plan.client_calls / 1000
            results.client_us.samples.append(per_call_us)
            results.client_rate.samples.append(1e6 / per_call_us)
    finally:
        client.close()
    accepted, rejected = emu.counts()
    problems.check(
        accepted == calls and rejected == 0,
        f"(e) the emulator accepted {accepted} of {calls} events ({rejected} rejected)",
    )
    emu.reset()


# -- the report ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(plan: Plan, results: Results) -> bool:
    """Print the table and the ratios; return True when every target is met."""
    r = results
    rows: list[tuple[str, str, str, str, str]] = []

    def us_row(label: str, series: Series, size: str) -> None:
        rows.append((label, f"{series.median:.2f}", f"{series.min:.2f}", "µs/call", size))

    chunk = f"{plan.chunks} x {plan.structlog_calls:,}"
    stdlib = f"{plan.chunks} x {plan.stdlib_calls:,}"
    us_row("(a) structlog JSON call, no bridge", r.plain_us, chunk)
    us_row("(b) same, cio_event=True + CustomerIOProcessor", r.processor_us, chunk)
    us_row("(b0) diagnostic: (b) with no dispatch thread", r.idle_us, chunk)
    us_row("(t) direct cio.track(...), receipt unused", r.direct_us, chunk)
    us_row("(t0) diagnostic: (t) with no dispatch thread", r.direct_idle_us, chunk)
    disk = f"{plan.chunks} x {max(1000, plan.structlog_calls // 5):,}"
    us_row("(f) (b0) with durability='disk' (a spool write per call)", r.disk_us, disk)
    us_row("(f0) (b0), paired with (f)", r.memory_us, disk)
    rows.extend(outage_rows(plan, r.outage))
    us_row("(c1) stdlib untagged, NullHandler", r.null_us, stdlib)
    us_row("(c2) stdlib untagged, NullHandler + CustomerIOHandler", r.handler_us, stdlib)
    us_row("(c) CustomerIOHandler extra (paired c2 - c1)", r.handler_extra_us, stdlib)
    us_row("(g1) switched off: untagged, Null + CustomerIOHandler", r.off_untagged_us, stdlib)
    us_row("(g2) switched off: tagged, Null + CustomerIOHandler", r.off_tagged_us, stdlib)
    us_row("(g) switched off: tagged extra (paired g2 - g1)", r.off_extra_us, stdlib)
    rows.append(
        (
            "(d) end to end: N calls + flush()",
            f"{r.e2e_rate.median:,.0f}",
            f"{r.e2e_rate.max:,.0f}",
            "events/s",
            f"{plan.e2e_runs} x {plan.e2e_events:,}",
        )
    )
    e2e = f"{plan.e2e_runs} x {plan.e2e_events:,}"
    us_row("(d') app thread during (d)", r.e2e_app_us, e2e)
    rows.append(
        (
            "(d'') dispatch thread CPU during (d), per event",
            f"{r.e2e_dispatch_us.median:.2f}",
            f"{r.e2e_dispatch_us.min:.2f}",
            "µs/event",
            e2e,
        )
    )
    client = f"{plan.client_chunks} x {plan.client_calls:,}"
    us_row("(e) official client track(), 1 POST/event", r.client_us, client)
    rows.append(
        (
            "(e) official client track()",
            f"{r.client_rate.median:,.0f}",
            f"{r.client_rate.max:,.0f}",
            "events/s",
            client,
        )
    )

    headers = ("metric", "median", "best", "unit", "chunks x calls")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(5)]

    def line(row: Sequence[str]) -> str:
        return (
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  "
            f"{row[3]:<{widths[3]}}  {row[4]}"
        )

    print()
    print(line(headers))
    print("-" * len(line(headers)))
    for row in rows:
        print(line(row))

    processor_ratio = r.processor_us.median / r.plain_us.median
    direct_ratio = r.direct_us.median / r.processor_us.median
    extra = r.handler_extra_us.median
    throughput_ratio = r.e2e_rate.median / r.client_rate.median
    checks = [
        (
            "(b)/(a)",
            f"{processor_ratio:.2f}x",
            f"<= {TARGET_PROCESSOR_RATIO:g}x",
            processor_ratio <= TARGET_PROCESSOR_RATIO,
        ),
        (
            "(t)/(b)",
            f"{direct_ratio:.2f}x",
            f"<= {TARGET_DIRECT_RATIO:g}x",
            direct_ratio <= TARGET_DIRECT_RATIO,
        ),
        (
            "(c) difference",
            f"{extra:+.2f} µs",
            f"<= {TARGET_HANDLER_EXTRA_US:g} µs",
            extra <= TARGET_HANDLER_EXTRA_US,
        ),
        (
            "(g) difference",
            f"{r.off_extra_us.median:+.2f} µs",
            f"<= {TARGET_OFF_EXTRA_US:g} µs",
            r.off_extra_us.median <= TARGET_OFF_EXTRA_US,
        ),
        (
            "(d'') dispatch CPU",
            f"{r.e2e_dispatch_us.median:.2f} µs",
            f"<= {TARGET_DISPATCH_CPU_US:g} µs",
            r.e2e_dispatch_us.median <= TARGET_DISPATCH_CPU_US,
        ),
        (
            "(d)/(e) events/s",
            f"{throughput_ratio:,.1f}x",
            f">= {TARGET_THROUGHPUT_RATIO:g}x",
            throughput_ratio >= TARGET_THROUGHPUT_RATIO,
        ),
        outage_check(r.outage),
    ]
    print()
    print(f"{'ratio (medians)':<18}  {'value':>10}  {'target':<10}  result")
    for name, value, target, ok in checks:
        print(f"{name:<18}  {value:>10}  {target:<10}  {verdict(ok)}")

    print()
    print(
        f"durability='disk' adds {r.disk_us.median - r.memory_us.median:+.1f} µs per call "
        f"({r.disk_us.median / r.memory_us.median:.1f}x (f0)); no target, a figure for the README"
    )
    outage_notes(r.outage)
    print(f"mode: {plan.name}; best = min time (max events/s); Python {sys.version.split()[0]}")
    print(
        "gc: disabled inside the timed chunks of (a), (b), (b0), (t), (t0), (c), (f), (o), "
        "(n), (f1), (f4); enabled in (d), (e)"
    )
    print("emulator: child process on 127.0.0.1")
    print(
        f"bridge: batch_size={BATCH_SIZE}, flush_interval={FLUSH_INTERVAL:g}s, "
        f"spool off; (b) dropped={r.processor_dropped}, (d) dropped={r.e2e_dropped}"
    )
    print(
        f"(b) still queued when a chunk ended (sent during the untimed flush): median "
        f"{r.backlog_pct.median:.0f}% of the chunk (min {r.backlog_pct.min:.0f}%)"
    )
    return all(ok for *_, ok in checks)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    problems = Problems()
    results = Results()
    emu = RemoteEmulator()
    try:
        with open(os.devnull, "w") as out:
            cio.configure(
                site_id=emu.site_id,
                api_key=emu.api_key,
                track_url=emu.url,
                batch_size=BATCH_SIZE,
                flush_interval=FLUSH_INTERVAL,
                # Room for every event of a chunk or run: nothing may drop while timed.
                max_queue_size=max(100_000, 2 * plan.structlog_calls, 2 * plan.e2e_events),
                spool_path=False,
            )
            try:
                run_structlog_phase(plan, emu, out, results, problems)
                run_durability_phase(plan, emu, out, results, problems)
                run_disk_threads_phase(plan, emu, out, results.outage, problems)
                run_outage_phase(plan, emu, out, results.outage, problems)
                run_handler_phase(plan, results)
                run_end_to_end_phase(plan, emu, out, results, problems)
                run_client_phase(plan, emu, results, problems)
                run_switched_off_phase(plan, results)
            finally:
                cio.shutdown()
                structlog.reset_defaults()
    finally:
        emu.close()
    outage = run_spool_outage_phase(args.quick)
    problems.items.extend(outage_problems(outage))
    met = report(plan, results)
    met = report_spool_outage(outage) and met
    print(f"took {time.perf_counter() - started:.1f}s")
    if problems.items:
        for problem in problems.items:
            print(f"SANITY CHECK FAILED: {problem}", file=sys.stderr)
        return 2
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
