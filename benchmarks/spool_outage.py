"""Phase (s) of ``bench_pipeline.py``: the spool's size on disk through an API outage.

A burst of tagged structlog calls while the Track API is unreachable (a closed port on
127.0.0.1), the spool on with ``on_full="spill"`` and a ``max_spool_bytes`` small enough
that the oldest events are evicted many times over. It reports the spool's peak size on
disk (the database file, its ``-wal`` and its ``-shm`` together) against
``max_spool_bytes`` (target <= 1.10), and the process's peak RSS growth over the burst
(target <= 20 MB).

The burst runs in a child process of its own: a fresh process's peak RSS says what the
burst cost, whatever the other phases left behind, and its bridge is not the benchmark's.

Run alone (a phase of bench_pipeline.py otherwise)::

    .venv/bin/python benchmarks/spool_outage.py            # 1,000,000 events, 100 MiB
    .venv/bin/python benchmarks/spool_outage.py --quick    # 30,000 events, 4 MiB, queue 1,000
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

TARGET_DISK_RATIO = 1.10  # peak on-disk size / max_spool_bytes, at most
TARGET_RSS_GROWTH_MB = 20.0  # peak RSS over the burst, less RSS before it, at most
_MIB = 1024 * 1024
_SAMPLE_EVERY = 0.005  # seconds between two looks at the files and the RSS
_CHILD_WAIT = 3600.0  # seconds the parent waits for the burst's results


@dataclass(frozen=True, slots=True)
class OutagePlan:
    """How big the burst is, the spool's bound, and the queue's."""

    events: int
    max_spool_bytes: int
    max_queue_size: int


# Full: the defaults but for the spool's place. Quick: a spool and a queue a 25th and a
# 10th of that (what the queue holds at exit is spooled in one write, which the spool's
# write-ahead log holds whole until its next checkpoint).
OUTAGE_FULL = OutagePlan(1_000_000, 100 * _MIB, 10_000)
OUTAGE_QUICK = OutagePlan(30_000, 4 * _MIB, 1_000)


@dataclass(frozen=True, slots=True)
class OutageResult:
    """What the burst did to the spool and to the process."""

    plan: OutagePlan
    peak_disk: int  # bytes: database + -wal + -shm, at the largest sample
    peak_main: int  # bytes: the database file alone, at its largest
    peak_wal: int  # bytes: the -wal file alone, at its largest
    rss_growth_mb: float  # peak RSS during the burst less RSS before it, MB (10**6 bytes)
    call_us: float  # the app thread's CPU per log call (µs), spill writes included
    seconds: float  # the burst, from the first call to shutdown's end
    enqueued: int
    spooled: int
    evicted: int
    dropped: int
    failed: int
    pending: int  # operations left in the spool at the end

    @property
    def disk_ratio(self) -> float:
        return self.peak_disk / self.plan.max_spool_bytes


def run_spool_outage_phase(quick: bool) -> OutageResult:
    """Run the burst in a child process and return what it measured."""
    plan = OUTAGE_QUICK if quick else OUTAGE_FULL
    print(
        f"... (s): outage burst of {plan.events:,} events, "
        f"max_spool_bytes={plan.max_spool_bytes / _MIB:g} MiB, in a child process",
        file=sys.stderr,
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_burst_child, args=(child, plan), name="outage", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(_CHILD_WAIT):
            raise RuntimeError(f"the outage burst did not end within {_CHILD_WAIT:g} s")
        result: OutageResult = parent.recv()
    finally:
        process.join(30.0)
        parent.close()
    return result


def outage_problems(result: OutageResult) -> list[str]:
    """Sanity checks on the burst: every event accounted for, eviction did happen."""
    r = result
    found: list[str] = []
    if r.enqueued != r.plan.events + _WARM_UP:
        found.append(f"(s) {r.enqueued} events enqueued of {r.plan.events + _WARM_UP}")
    if r.spooled + r.dropped + r.failed != r.enqueued:
        found.append(
            f"(s) {r.enqueued} enqueued, but {r.spooled} spooled + {r.dropped} dropped + "
            f"{r.failed} failed"
        )
    if r.evicted == 0:
        found.append("(s) nothing was evicted: the burst did not fill the spool")
    if r.pending + r.evicted != r.spooled:
        found.append(f"(s) {r.pending} left + {r.evicted} evicted != {r.spooled} spooled")
    return found


def report_spool_outage(result: OutageResult) -> bool:
    """Print the burst's figures and targets; True when both are met."""
    r = result
    plan = r.plan
    ok_disk = r.disk_ratio <= TARGET_DISK_RATIO
    ok_rss = r.rss_growth_mb <= TARGET_RSS_GROWTH_MB
    mode = "full" if plan == OUTAGE_FULL else "quick: fewer events and a smaller spool"
    print()
    print(
        f"(s) outage burst ({mode}): {plan.events:,} tagged structlog calls, API unreachable, "
        f"on_full='spill', max_spool_bytes={plan.max_spool_bytes / _MIB:g} MiB, "
        f"max_queue_size={plan.max_queue_size:,}"
    )
    print(
        f"    peak on disk {r.peak_disk / _MIB:.1f} MiB (database {r.peak_main / _MIB:.1f}, "
        f"-wal {r.peak_wal / _MIB:.2f} at their largest); {r.spooled:,} spooled, "
        f"{r.evicted:,} evicted, {r.pending:,} left, {r.dropped:,} dropped, {r.failed:,} failed"
    )
    print(
        f"    app thread {r.call_us:.1f} µs CPU per call (spill writes included); "
        f"{r.seconds:.1f} s to shutdown's end"
    )
    print(f"{'spool (s)':<24}  {'value':>10}  {'target':<10}  result")
    print(
        f"{'peak on disk / max':<24}  {r.disk_ratio:>9.2f}x  "
        f"{f'<= {TARGET_DISK_RATIO:.2f}x':<10}  {'PASS' if ok_disk else 'MISS'}"
    )
    print(
        f"{'peak RSS growth':<24}  {r.rss_growth_mb:>7.1f} MB  "
        f"{f'<= {TARGET_RSS_GROWTH_MB:g} MB':<10}  {'PASS' if ok_rss else 'MISS'}"
    )
    return ok_disk and ok_rss


# -- the child process --------------------------------------------------------------------

_WARM_UP = 200  # calls before the RSS baseline: the logger, the queue, the spool's pages


class _Sampler:
    """A thread that looks at the spool's files and the process's RSS every few ms."""

    def __init__(self, spool: Path) -> None:
        self._files = [spool.with_name(spool.name + suffix) for suffix in ("", "-wal", "-shm")]
        self.peak_disk = self.peak_main = self.peak_wal = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outage-sampler", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        sizes = []
        for path in self._files:
            try:
                sizes.append(os.stat(path).st_size)
            except FileNotFoundError:
                sizes.append(0)
        self.peak_disk = max(self.peak_disk, sum(sizes))
        self.peak_main = max(self.peak_main, sizes[0])
        self.peak_wal = max(self.peak_wal, sizes[1])
        self.peak_rss = max(self.peak_rss, _rss())


def _rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Start the kernel's peak RSS (VmHWM) afresh; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    """VmHWM: the most this process was resident since start (or the last reset)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _burst_child(conn: Connection, plan: OutagePlan) -> None:
    """Child process: the burst, then its result sent over ``conn``."""
    import structlog

    import customerio_logging as cio

    with tempfile.TemporaryDirectory() as folder:
        spool = Path(folder) / "spool.sqlite3"
        bridge = cio.configure(
            site_id="bench-site",
            api_key="bench-key",
            track_url=f"http://127.0.0.1:{_closed_port()}",
            spool_path=spool,
            max_spool_bytes=plan.max_spool_bytes,
            max_queue_size=plan.max_queue_size,
            on_full="spill",
            install_signal_handlers=False,
        )
        with open(os.devnull, "w") as out:
            structlog.configure(
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    cio.CustomerIOProcessor(),
                    structlog.processors.JSONRenderer(),
                ],
                logger_factory=structlog.WriteLoggerFactory(file=out),
                cache_logger_on_first_use=True,
            )
            log = structlog.get_logger()
            for _ in range(_WARM_UP):
                log.info("plan_changed", cio_event=True, user_id="u1", from_="free", to="pro")
            gc.collect()
            rss_before = _rss()
            hwm_reset = _reset_peak_rss()
            with _Sampler(spool) as sampler:
                start = time.perf_counter()
                cpu = time.thread_time_ns()
                for _ in range(plan.events):
                    log.info("plan_changed", cio_event=True, user_id="u1", from_="free", to="pro")
                cpu = time.thread_time_ns() - cpu
                cio.shutdown()
                seconds = time.perf_counter() - start
            peak_rss = max(sampler.peak_rss, _peak_rss() if hwm_reset else 0)
            stats = cio.stats()
            assert bridge.spool is not None
            pending = bridge.spool.pending()  # opens the file again, after shutdown closed it
            bridge.spool.close()
        conn.send(
            OutageResult(
                plan=plan,
                peak_disk=sampler.peak_disk,
                peak_main=sampler.peak_main,
                peak_wal=sampler.peak_wal,
                rss_growth_mb=(peak_rss - rss_before) / 1e6,
                call_us=cpu / plan.events / 1000,
                seconds=seconds,
                enqueued=stats.enqueued,
                spooled=stats.spooled,
                evicted=stats.evicted,
                dropped=stats.dropped,
                failed=stats.failed,
                pending=pending,
            )
        )
    conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="30,000 events, a 4 MiB spool, a 1,000 queue"
    )
    args = parser.parse_args(argv)
    result = run_spool_outage_phase(args.quick)
    met = report_spool_outage(result)
    problems = outage_problems(result)
    for problem in problems:
        print(f"SANITY CHECK FAILED: {problem}", file=sys.stderr)
    return 2 if problems else 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
