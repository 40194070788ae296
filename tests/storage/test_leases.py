"""Leases: who owns one, whether that owner is gone, and what that means across processes
(a dead process's rows come back at once, a live one's wait for the lease to end, two
drainers never share a row). The other processes are real ones (tests/programs/spool_*.py)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from customerio_logging._storage.leases import (
    FRESH_LEASE,
    REPLAY_LEASE,
    owner_is_gone,
    owner_token,
)
from customerio_logging._storage.sqlite import SQLiteSpool

from ..helpers import (
    CHILD_TIMEOUT,
    FakeClock,
    children,
    ids_of,
    in_fork,
    make_op,
    program,
    read_line,
    run_python,
    say,
)


class TestOwner:
    """One owner token per process; only a process on this host can be known to be gone."""

    def test_one_token_per_process_and_a_new_one_after_fork(self) -> None:
        token = owner_token()
        assert owner_token() == token
        host, namespace, pid, rand = token.split("|")
        assert (host, pid) == (socket.gethostname(), str(os.getpid()))
        code, child = in_fork(owner_token, timeout=CHILD_TIMEOUT)
        assert code == 0
        assert child != token
        assert child.split("|")[2] != pid
        assert owner_is_gone(child)  # the child has exited (and been waited for)
        parent = "|".join((host, namespace, str(os.getppid()), rand))
        assert not owner_is_gone(parent)  # alive

    def test_an_ended_process_on_this_host_is_gone(self) -> None:
        ended = run_python("-c", "import os; print(os.getpid())", timeout=CHILD_TIMEOUT, check=True)
        host, namespace, _pid, rand = owner_token().split("|")
        assert owner_is_gone("|".join((host, namespace, ended.stdout.strip(), rand)))

    @pytest.mark.parametrize(
        "owner",
        [
            "another-host|ns|1|ab",
            "garbage",
            "",
            "{host}|another-namespace|99999999|ab",
            "{host}|{namespace}|not-a-pid|ab",
        ],
        ids=["another-host", "garbage", "empty", "another-namespace", "no-pid"],
    )
    def test_an_owner_that_cannot_be_looked_up_is_never_gone(self, owner: str) -> None:
        host, namespace, _pid, _rand = owner_token().split("|")
        assert not owner_is_gone(owner.format(host=host, namespace=namespace))


class TestLeasesAcrossProcesses:
    """A dead process's rows come back at once; a live one's wait for its lease to end."""

    @pytest.mark.parametrize("mode", ["claim", "lease"])
    def test_rows_of_a_dead_process_are_claimable_at_once(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path, mode: str
    ) -> None:
        spool = make_spool()
        spool.add([make_op(f"r{i}") for i in range(10)])
        held = json.loads(
            run_python(
                program("spool_hold"), spool_path, mode, 4, timeout=CHILD_TIMEOUT, check=True
            ).stdout
        )
        assert len(held) == 4
        if mode == "claim":
            assert held == [f"r{i}" for i in range(4)]
            expected = [f"r{i}" for i in range(10)]
        else:
            expected = [f"r{i}" for i in range(10)] + held
        assert ids_of(spool.claim(100)) == expected

    @pytest.mark.parametrize(("mode", "lease"), [("claim", REPLAY_LEASE), ("lease", FRESH_LEASE)])
    def test_rows_of_a_live_process_wait_for_the_lease(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path, mode: str, lease: float
    ) -> None:
        # The other process leases by the real clock, from after this moment.
        started = time.time()
        clock = FakeClock(started)
        spool = make_spool(clock=clock)
        spool.add([make_op(f"r{i}") for i in range(10)])
        with children([program("spool_hold"), spool_path, mode, 4, "--wait"]) as (holder,):
            held = json.loads(read_line(holder))
            assert len(held) == 4
            free = [f"r{i}" for i in range(10) if f"r{i}" not in held]
            assert ids_of(spool.claim(100)) == free
            spool.release(free)
            if lease > REPLAY_LEASE:
                clock.advance(REPLAY_LEASE + 60)  # a replay lease's time is not enough
                assert ids_of(spool.claim(100)) == free
                spool.release(free)
            clock.now = started + lease - 1
            assert ids_of(spool.claim(100)) == free
            spool.release(free)
            assert holder.poll() is None  # the holder was alive all along
            clock.now = time.time() + lease + 1
            assert sorted(ids_of(spool.claim(100))) == sorted(free + held)
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(CHILD_TIMEOUT) == 0

    def test_two_processes_draining_one_file_share_it_without_overlap(
        self, make_spool: Callable[..., SQLiteSpool], spool_path: Path
    ) -> None:
        ids = [f"d{i:05d}" for i in range(5000)]
        make_spool().add([make_op(i, 60) for i in ids])
        drain = [program("spool_drain"), spool_path, 50]
        with children(drain, drain) as drainers:
            # Both hold a first claim at the same time, then drain side by side.
            for drainer in drainers:
                assert read_line(drainer) == "holding\n"
            for drainer in drainers:
                say(drainer, "go\n")
            got = [json.loads(read_line(drainer)) for drainer in drainers]
            for drainer in drainers:
                assert drainer.wait(CHILD_TIMEOUT) == 0
        first, second = got
        assert len(first) >= 50
        assert len(second) >= 50
        assert len(set(first)) == len(first)
        assert len(set(second)) == len(second)
        assert not set(first) & set(second)
        assert sorted(first + second) == ids
        assert make_spool().pending() == 0
