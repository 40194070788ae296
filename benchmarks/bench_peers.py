"""Benchmark the library against the server-side analytics SDKs people use instead.

Each contender sends the same event (``plan_changed`` for user ``u1`` with
``{"from": "free", "to": "pro"}``) through its normal call, then flushes:

- ours: a structlog call tagged ``cio_event=True`` through ``CustomerIOProcessor``, the
  bridge configured with ``track_url`` pointed at the sink; ``cio.flush()``;
- segment-analytics-python: ``analytics.track(user_id, event, properties)`` with
  ``analytics.host`` pointed at the sink; ``analytics.flush()``;
- posthog: ``Posthog(key, host=sink).capture(event, distinct_id=..., properties=...)``;
  ``flush()``.

All of them post to ONE stdlib HTTP sink on 127.0.0.1, in a child process, which answers
200 ``{}`` to any path and counts the events in the bodies it receives, so the benchmark
checks that every event arrived. Rounds are interleaved and their order rotates, so drift
on a shared machine hits every contender alike. Per contender and round it measures the
app thread's µs per call and the end-to-end events/s (first call to flush returning, the
sink having received all N), and prints the median and best over the rounds, with the
ratio ours / fastest peer against the target (end to end >= 3.0 x).

The peers are not project dependencies: on its first run the script creates its own
environment, ``benchmarks/.peers-venv`` (stdlib ``venv``; pip installs the peers and this
project with ``-e .[structlog]``), and re-runs itself there. Any Python 3.11+ can start it::

    python benchmarks/bench_peers.py            # full run, about 90 s
    python benchmarks/bench_peers.py --quick    # short run, about 10 s
    python benchmarks/bench_peers.py --check    # exit 1 if the target is missed

Exit status: 0 on success, 1 with ``--check`` when the target is missed, 2 when a sanity
check fails (an event lost, a flush that did not finish) or the environment cannot be
set up, whatever the options.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import hashlib
import inspect
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

TARGET_END_TO_END_RATIO = 3.0  # ours / the fastest peer, events/s medians, at least

EVENT = "plan_changed"
FLUSH_TIMEOUT = 120.0

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".peers-venv"
# What pip installs into VENV; written to MARKER once installed, so a change reinstalls.
REQUIREMENTS = ("segment-analytics-python", "posthog", "-e", f"{ROOT}[structlog]")
MARKER = VENV / "bench-peers-requirements.txt"
# Versions printed with the table.
DISTRIBUTIONS = (
    "customerio-logging",
    "structlog",
    "customerio",
    "segment-analytics-python",
    "posthog",
    "requests",
    "urllib3",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work a run does."""

    name: str
    events: int  # N per contender and round
    rounds: int  # timed rounds, after one untimed warm-up round
    warmup_events: int


FULL = Plan("full", 50_000, 7, 2_000)
QUICK = Plan("quick", 10_000, 3, 1_000)


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


# -- the environment ----------------------------------------------------------------------


def in_peers_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_environment(argv: Sequence[str]) -> None:
    """Re-run this script inside ``VENV``, creating it first when it is missing or stale.

    Returns only when already running there.
    """
    if in_peers_venv():
        return
    python = VENV / "bin" / "python"
    # The project's own dependencies count too: a changed pyproject.toml reinstalls.
    project = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wanted = " ".join((*REQUIREMENTS, f"pyproject.toml:{project}"))
    if not python.exists() or not MARKER.exists() or MARKER.read_text() != wanted:
        progress(f"creating {VENV} and installing: {wanted}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*command, *REQUIREMENTS], check=True)  # noqa: S603 (our own venv's pip)
        MARKER.write_text(wanted)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(python, [str(python), str(Path(__file__).resolve()), *argv])  # noqa: S606


def versions() -> str:
    found = []
    for name in DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


# -- the sink, in a child process ---------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the sink received since its last reset."""

    events: int = 0  # batch items for EVENT carrying the event's data
    foreign: int = 0  # any other batch item: another event, or one missing its data
    requests: int = 0
    body_bytes: int = 0  # as sent, compressed or not
    unreadable: int = 0  # bodies that were not a JSON object with a "batch" list


def _count(body: bytes, encoding: str | None, tally: Tally) -> None:
    """Add the events of one request body to ``tally``."""
    tally.requests += 1
    tally.body_bytes += len(body)
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        batch = json.loads(body)["batch"]
    except (OSError, ValueError, KeyError, TypeError):
        tally.unreadable += 1
        return
    for item in batch:
        # Ours names the event "name" and its data "attributes"; segment and posthog
        # say "event" and "properties".
        name = item.get("name", item.get("event"))
        data = item.get("attributes", item.get("properties")) or {}
        if name == EVENT and data.get("to") == "pro":
            tally.events += 1
        else:
            tally.foreign += 1


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.lock = threading.Lock()
        self.tally = Tally()


class _SinkHandler(BaseHTTPRequestHandler):
    """Counts what any path receives and answers 200 ``{}``, keeping the connection."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a real API offers
    # The headers and the body go out in two writes: without TCP_NODELAY the second
    # waits for the client's delayed ACK, about 40 ms per request.
    disable_nagle_algorithm = True
    server: _SinkServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            # Counted before answering: once an SDK's flush has its reply, the tally has it.
            _count(body, self.headers.get("Content-Encoding"), self.server.tally)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""


def _run_sink(conn: Connection) -> None:
    """Child process: serve until told to stop; answer "tally" and "reset" over ``conn``."""
    with _SinkServer() as server:
        threading.Thread(target=server.serve_forever, name="sink", daemon=True).start()
        host, port = server.server_address[:2]
        conn.send(f"http://{host}:{port}")
        for command in iter(conn.recv, "stop"):
            with server.lock:
                conn.send(server.tally)
                if command == "reset":
                    server.tally = Tally()
        server.shutdown()


class Sink:
    """The HTTP sink, in a child process so its parsing does not take this process's GIL."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_run_sink, args=(child,), name="sink", daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(30.0):
            raise RuntimeError("the sink process did not start within 30 s")
        self.url: str = self._conn.recv()

    def tally(self) -> Tally:
        self._conn.send("tally")
        tally: Tally = self._conn.recv()
        return tally

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(10.0)
        self._conn.close()


# -- the contenders -----------------------------------------------------------------------


@dataclass(slots=True)
class Contender:
    """One SDK, configured against the sink: how to send N events, flush and stop."""

    name: str
    settings: str  # what was set, for the report
    send: Callable[[int], None]
    flush: Callable[[float], bool]  # True when it returned within the timeout
    close: Callable[[], None]
    is_ours: bool = False


def ours(url: str, capacity: int, out: TextIO) -> Contender:
    """customerio-logging through structlog, as an app that logs with it would send."""
    import structlog
    from bench_pipeline import bridged_chain, structlog_logger, tagged_loop

    import customerio_logging as cio

    bridge = cio.configure(
        site_id="bench-site",
        api_key="bench-key",
        track_url=url,
        max_queue_size=capacity,
        spool_path=False,  # the peers have no disk spool either
    )
    log = structlog_logger(bridged_chain(), out)

    def close() -> None:
        cio.shutdown()
        structlog.reset_defaults()

    chosen = bridge.settings
    settings = (
        f"max_queue_size={capacity}, spool_path=False; defaults otherwise: "
        f"batch_size={chosen.batch_size}, flush_interval={chosen.flush_interval:g}, "
        f"max_retries={chosen.max_retries}, "
        f"max_requests_per_second={chosen.max_requests_per_second:g}; structlog chain "
        "add_log_level, TimeStamper(fmt='iso'), CustomerIOProcessor(), JSONRenderer() to os.devnull"
    )
    return Contender(
        "customerio-logging (structlog)",
        settings,
        tagged_loop(log),
        cio.flush,
        close,
        is_ours=True,
    )


def ours_direct() -> Contender:
    """customerio-logging's direct call, ``cio.track(...)``: the call that matches the
    peers' own (no log line rendered). Uses the bridge :func:`ours` configured."""
    import customerio_logging as cio

    def send(n: int) -> None:
        track = cio.track
        for _ in range(n):
            track("u1", "plan_changed", from_="free", to="pro")

    return Contender(
        "customerio-logging (cio.track)",
        "the bridge above; cio.track('u1', 'plan_changed', from_='free', to='pro'), receipt unused",
        send,
        cio.flush,
        lambda: None,  # shut down with the structlog contender's bridge
        is_ours=True,
    )


def segment(url: str, capacity: int) -> Contender:
    """segment-analytics-python through its module-level API, as its README shows."""
    import segment.analytics as analytics

    analytics.write_key = "bench-write-key"
    analytics.host = url
    analytics.max_queue_size = capacity

    def send(n: int) -> None:
        for _ in range(n):
            analytics.track("u1", EVENT, {"from": "free", "to": "pro"})

    settings = f"max_queue_size={capacity}; defaults otherwise: " + defaults(
        analytics.Client, ("upload_size", "upload_interval", "gzip", "max_retries", "thread")
    )
    # Its flush() waits on queue.join() with no time limit: bounded here by a thread.
    flush = bounded(analytics.flush)
    return Contender("segment-analytics-python", settings, send, flush, analytics.shutdown)


def posthog(url: str, capacity: int) -> Contender:
    """posthog through a client instance, as its README shows."""
    from posthog import Posthog

    client = Posthog("bench-project-key", host=url, max_queue_size=capacity)

    def send(n: int) -> None:
        for _ in range(n):
            client.capture(EVENT, distinct_id="u1", properties={"from": "free", "to": "pro"})

    def flush(timeout: float) -> bool:
        client.flush(timeout_seconds=timeout)
        # It returns quietly when the time runs out; the sink's tally says whether it did.
        return True

    settings = f"max_queue_size={capacity}; defaults otherwise: " + defaults(
        Posthog, ("flush_at", "flush_interval", "gzip", "max_retries", "thread")
    )
    return Contender("posthog", settings, send, flush, client.shutdown)


def defaults(factory: Callable[..., object], names: Sequence[str]) -> str:
    """``names`` with their default values in ``factory``'s signature: "name=value, ..."."""
    parameters = inspect.signature(factory).parameters
    return ", ".join(f"{name}={parameters[name].default!r}" for name in names)


def bounded(flush: Callable[[], object]) -> Callable[[float], bool]:
    """``flush`` run on a helper thread, waited for at most the timeout."""

    def run(timeout: float) -> bool:
        helper = threading.Thread(target=flush, name="bench-flush", daemon=True)
        helper.start()
        helper.join(timeout)
        return not helper.is_alive()

    return run


# -- the rounds ---------------------------------------------------------------------------


@dataclass(slots=True)
class Samples:
    """One contender's measurements, one per timed round."""

    call_us: list[float] = field(default_factory=list)  # app thread, wall time per call
    app_cpu_us: list[float] = field(default_factory=list)  # app thread CPU per call
    process_cpu_us: list[float] = field(default_factory=list)  # every thread's CPU per event
    rate: list[float] = field(default_factory=list)  # events/s, first call to flush returned
    requests: list[int] = field(default_factory=list)
    body_bytes: list[float] = field(default_factory=list)  # per event


def run_once(contender: Contender, n: int, sink: Sink, problems: list[str]) -> Samples:
    """N events through ``contender`` and its flush; the sink must have all N after it."""
    sink.reset()
    gc.collect()
    cpu_start = time.process_time_ns()
    app_cpu_start = time.thread_time_ns()
    start = time.perf_counter_ns()
    contender.send(n)
    sent = time.perf_counter_ns()
    app_cpu = time.thread_time_ns() - app_cpu_start
    flushed = contender.flush(FLUSH_TIMEOUT)
    end = time.perf_counter_ns()
    cpu = time.process_time_ns() - cpu_start
    tally = sink.tally()
    if not flushed:
        problems.append(f"{contender.name}: flush did not return within {FLUSH_TIMEOUT:g} s")
    if tally.events != n or tally.foreign or tally.unreadable:
        problems.append(
            f"{contender.name}: the sink had {tally.events} of {n} events when flush returned "
            f"({tally.foreign} other items, {tally.unreadable} unreadable bodies)"
        )
    return Samples(
        [(sent - start) / n / 1000],
        [app_cpu / n / 1000],
        [cpu / n / 1000],
        [n / ((end - start) / 1e9)],
        [tally.requests],
        [tally.body_bytes / n],
    )


def run_rounds(
    plan: Plan, sink: Sink, contenders: Sequence[Contender], problems: list[str]
) -> dict[str, Samples]:
    """One untimed warm-up round, then the timed ones, each in a rotated order."""
    results = {contender.name: Samples() for contender in contenders}
    for index in range(plan.rounds + 1):
        n = plan.events if index else plan.warmup_events
        shift = index % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        progress(f"round {index}/{plan.rounds}{' (warm-up)' if not index else ''}: {n:,} each")
        for contender in order:
            run = run_once(contender, n, sink, problems)
            if index:
                kept = results[contender.name]
                kept.call_us += run.call_us
                kept.app_cpu_us += run.app_cpu_us
                kept.process_cpu_us += run.process_cpu_us
                kept.rate += run.rate
                kept.requests += run.requests
                kept.body_bytes += run.body_bytes
    return results


# -- the report ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(results: dict[str, Samples]) -> None:
    headers = (
        "sdk",
        "µs/call median",
        "best",
        "app CPU µs/call",
        "all threads CPU µs/event",
        "events/s median",
        "best",
        "POSTs/round",
        "bytes/event",
    )
    rows = [headers]
    for name, s in results.items():
        rows.append(
            (
                name,
                f"{statistics.median(s.call_us):.2f}",
                f"{min(s.call_us):.2f}",
                f"{statistics.median(s.app_cpu_us):.2f}",
                f"{statistics.median(s.process_cpu_us):.2f}",
                f"{statistics.median(s.rate):,.0f}",
                f"{max(s.rate):,.0f}",
                f"{statistics.median(s.requests):,.0f}",
                f"{statistics.median(s.body_bytes):,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    for number, row in enumerate(rows):
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        print("  ".join(cells))
        if number == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def print_ratios(contenders: Sequence[Contender], results: dict[str, Samples]) -> bool:
    """Print ours against each peer and the target lines; True when every target is met."""
    mine = [c.name for c in contenders if c.is_ours]
    peers = [c.name for c in contenders if not c.is_ours]
    rate = {name: statistics.median(s.rate) for name, s in results.items()}
    call = {name: statistics.median(s.call_us) for name, s in results.items()}
    width = max(len(name) for name in [*mine, *peers]) + len(" / ") + max(map(len, peers))
    print()
    print(f"{'ours / peer, medians':<{width}}  events/s  µs/call (informative)")
    for ours_name in mine:
        for peer in peers:
            faster, cheaper = rate[ours_name] / rate[peer], call[ours_name] / call[peer]
            print(f"{ours_name + ' / ' + peer:<{width}}  {faster:>7.2f}x  {cheaper:>6.2f}x")
    fastest = max(peers, key=rate.__getitem__)
    target = ">= " + format(TARGET_END_TO_END_RATIO, "g") + "x"
    print()
    print(f"{'target, medians':<{width}}  {'value':>6}  {'target':<6}  result")
    met = True
    for ours_name in mine:
        ratio = rate[ours_name] / rate[fastest]
        met = met and ratio >= TARGET_END_TO_END_RATIO
        print(
            f"{'end to end, ' + ours_name + ' / fastest peer':<{width}}  {ratio:>5.2f}x  "
            f"{target:<6}  {verdict(ratio >= TARGET_END_TO_END_RATIO)}"
        )
    print(f"(the fastest peer: {fastest})")
    return met


def report(plan: Plan, contenders: Sequence[Contender], results: dict[str, Samples]) -> bool:
    """Print the table, the ratios and how it was run; True when the target is met."""
    print()
    print_table(results)
    met = print_ratios(contenders, results)
    print()
    print(
        f"mode: {plan.name}, {plan.rounds} rounds x {plan.events:,} events per SDK after a "
        f"{plan.warmup_events:,}-event warm-up round; order rotated each round; gc on; "
        "best = min µs/call, max events/s"
    )
    print("sink: stdlib ThreadingHTTPServer (HTTP/1.1) in a child process on 127.0.0.1")
    for contender in contenders:
        print(f"{contender.name}: {contender.settings}")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}")
    print(f"versions: Python {platform.python_version()}, {versions()}")
    return met


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (about 10 s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        ensure_environment(argv)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"SETUP FAILED: could not prepare {VENV}: {error}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    problems: list[str] = []
    sink = Sink()
    capacity = 2 * plan.events  # room for a whole round: nothing may drop
    contenders: list[Contender] = []
    try:
        with open(os.devnull, "w") as out:
            try:
                contenders += [ours(sink.url, capacity, out), ours_direct()]
                contenders += [segment(sink.url, capacity), posthog(sink.url, capacity)]
                results = run_rounds(plan, sink, contenders, problems)
            finally:
                for contender in contenders:
                    contender.close()
    finally:
        sink.close()
    met = report(plan, contenders, results)
    print(f"took {time.perf_counter() - started:.1f}s")
    if problems:
        for problem in problems:
            print(f"SANITY CHECK FAILED: {problem}", file=sys.stderr)
        return 2
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
