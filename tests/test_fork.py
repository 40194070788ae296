"""Fork safety, in subprocesses: each process's events arrive once, sent by that process."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

import pytest

from customerio_logging.testing import TrackAPIEmulator

from .helpers import assert_each_once, program, run_python, users

N = 25
TIMEOUT = 60.0


def _users(*prefixes: str) -> set[str]:
    return set().union(*(users(prefix, N) for prefix in prefixes))


def _fork_app(emulator: TrackAPIEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/programs/fork_app.py with N events and ``args``; it must exit with 0."""
    result = run_python(program("fork_app"), N, *args, emulator=emulator, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


def _child_stats(stdout: str) -> dict[str, Any]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("child-stats ")]
    stats: dict[str, Any] = json.loads(line.removeprefix("child-stats "))
    return stats


def _assert_zero(stats: dict[str, Any]) -> None:
    counters = {k: v for k, v in stats.items() if k not in ("last_error", "transport_closed_here")}
    assert set(counters.values()) == {0}, stats
    assert stats["last_error"] is None


def _assert_each_process_sent_its_own(emulator: TrackAPIEmulator, *args: str) -> None:
    """The child ended well with nothing counted, and the parent's events ("p", "q") and
    the child's ("c") each arrived once."""
    result = _fork_app(emulator, *args)
    assert "child-exit 0" in result.stdout, result.stderr
    _assert_zero(_child_stats(result.stdout))
    assert_each_once(emulator, _users("p", "c", "q"))


class TestOsFork:
    """configure() in the parent, then fork: gunicorn --preload's pattern."""

    @pytest.mark.parametrize("child_exit", ["flush-sys-exit", "flush-os-exit", "return"])
    def test_the_parents_queued_events_go_once_and_the_childs_arrive(
        self, emulator: TrackAPIEmulator, child_exit: str
    ) -> None:
        # The parent's events are still queued at the fork (flush_interval is 60 s); the
        # child ends with flush() then sys.exit() or os._exit(), or returns without
        # flushing (its exit hook delivers).
        _assert_each_process_sent_its_own(emulator, "--child-exit", child_exit)

    def test_a_batch_in_flight_at_the_fork_is_sent_by_the_parent_only(
        self, emulator: TrackAPIEmulator
    ) -> None:
        # The parent's dispatch thread is inside send() with batch "p" when the process
        # forks, with "r" queued behind it; the child sends neither.
        stats = _child_stats(_fork_app(emulator, "--in-flight").stdout)
        _assert_zero(stats)
        assert stats["transport_closed_here"] is True, "the child kept the parent's session"
        assert_each_once(emulator, _users("p", "r", "c", "q"))

    @pytest.mark.parametrize("in_flight", [False, True])
    def test_a_fork_that_skips_os_fork_hooks_is_caught_on_submit(
        self, emulator: TrackAPIEmulator, in_flight: bool
    ) -> None:
        # libc's fork() runs no at-fork hook: the bridge sees its pid changed on the
        # child's first event and resets then.
        args = ["--via", "raw-fork", *(["--in-flight"] if in_flight else [])]
        result = _fork_app(emulator, *args)
        assert "child-exit 0" in result.stdout, result.stderr
        assert_each_once(emulator, _users("p", "c", "q", *(["r"] if in_flight else [])))


class TestMultiprocessing:
    """multiprocessing with the fork start method ends children with os._exit."""

    @pytest.mark.parametrize("child_exit", ["flush-sys-exit", "return"])
    def test_a_process_child_delivers_its_events_and_not_the_parents(
        self, emulator: TrackAPIEmulator, child_exit: str
    ) -> None:
        _assert_each_process_sent_its_own(
            emulator, "--via", "mp-process", "--child-exit", child_exit
        )

    def test_pool_workers_deliver_their_events_when_the_pool_closes(
        self, emulator: TrackAPIEmulator
    ) -> None:
        assert "pool-workers " in _fork_app(emulator, "--via", "mp-pool").stdout
        assert_each_once(emulator, _users("p", "q", "w0-", "w1-", "w2-", "w3-"))


def test_the_dispatch_threads_first_send_imports_nothing(emulator: TrackAPIEmulator) -> None:
    # A fork while a thread imports leaves that module's import lock held in the child,
    # whose own thread would then wait for it forever: what the first send needs is
    # imported when the bridge is built, on the app's thread.
    program = textwrap.dedent(
        f"""
        import sys
        import customerio_logging as cio

        cio.configure(site_id={emulator.site_id!r}, api_key={emulator.api_key!r},
                      track_url={emulator.url!r}, spool_path=False)
        before = set(sys.modules)
        cio.track("u1", "signed_up")
        assert cio.flush(10)
        print(sorted(set(sys.modules) - before))
        """
    )
    result = run_python("-c", program, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
