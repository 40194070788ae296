"""The SQLite spool: leases across processes, eviction, the dead letter, the file's safety.

Other processes are real ones: subprocesses (tests/programs/spool_*.py) and os.fork().
Time is an injected clock; waits have deadlines, never sleeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from customerio_logging import _spool
from customerio_logging._spool import (
    FRESH_LEASE,
    REPLAY_LEASE,
    DeadLetterRow,
    Spool,
    SpoolBusyError,
    SpoolUnavailableError,
    default_spool_path,
)
from customerio_logging._wire import Operation, batch_body

PROGRAMS = Path(__file__).parent / "programs"
TIMEOUT = 30.0  # hard limit for any other process; they normally take well under 1 s
SITE = "site"  # the site id tests/programs/spool_*.py open their spool with
URL = "https://track.example.test"
BIG = 100_000_000  # max_bytes that never evicts


def _body(size: int) -> bytes:
    """A JSON operation body of exactly ``size`` bytes (at least 8)."""
    head, tail = b'{"p":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def _op(op_id: str, size: int = 40, *, action: str = "event", name: str | None = "n") -> Operation:
    return Operation(op_id, action, name, _body(size))


def _ids(ops: list[Operation]) -> list[str]:
    return [op.id for op in ops]


def _letter(
    op_id: str | None,
    *,
    reason: str = "http_400",
    body: bytes | None = b'{"type":"person"}',
    at: float = 1_700_000_000.0,
) -> DeadLetterRow:
    return DeadLetterRow(0, op_id, "event", "n", reason, "attributes.plan", "rejected", at, body)


def _row_bytes(row: DeadLetterRow) -> int:
    """A dead letter's size as the spool bounds it: its body and its texts in UTF-8."""
    texts = (row.id, row.action, row.name, row.reason, row.field, row.message)
    return len(row.body or b"") + sum(len(t.encode()) for t in texts if t is not None)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _moved_aside(path: Path) -> list[Path]:
    """The copies of ``path`` moved aside as ``<name>.corrupt-<stamp>`` (not their -wal)."""
    pattern = re.compile(re.escape(path.name) + r"\.corrupt-\d{8}T\d{6}(-\d+)?")
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


class FakeClock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite3"


@pytest.fixture
def make_spool(spool_path: Path) -> Iterator[Callable[..., Spool]]:
    """Spool(path=spool_path, max_bytes=BIG, site_id=SITE, **overrides), closed at the end."""
    made: list[Spool] = []

    def make(**overrides: Any) -> Spool:
        options: dict[str, Any] = {"path": spool_path, "max_bytes": BIG, "site_id": SITE}
        options.update(overrides)
        spool = Spool(options.pop("path"), **options)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: what the spool makes private, it makes private itself."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- other processes ------------------------------------------------------------------


def _program(name: str, *args: object) -> list[str]:
    return [sys.executable, str(PROGRAMS / f"{name}.py"), *map(str, args)]


def _run(name: str, *args: object) -> str:
    """Run tests/programs/NAME.py to its end; its stdout."""
    result = subprocess.run(
        _program(name, *args), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def _children(*argvs: list[str]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start processes with piped stdio; kill them all at TIMEOUT, and at the end."""
    procs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as stack:
        for argv in argvs:
            procs.append(
                stack.enter_context(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            )

        def kill_all() -> None:
            for proc in procs:
                proc.kill()  # a no-op for one that has ended

        # A killed child closes its stdout: a blocked readline() returns "" and the test
        # fails on what it read, instead of hanging.
        watchdog = threading.Timer(TIMEOUT, kill_all)
        watchdog.name = "spool-test-watchdog"
        watchdog.daemon = True
        watchdog.start()
        stack.callback(kill_all)
        stack.callback(watchdog.cancel)
        yield procs


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        pytest.fail(f"the child ended without a line: {proc.stderr.read()}")
    return line


def _say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line)
    proc.stdin.flush()


def _in_fork(
    work: Callable[[], object],
    *,
    timeout: float,
    in_parent: Callable[[], None] = lambda: None,
) -> tuple[int | None, Any]:
    """Run ``work`` in a child made by os.fork(); its exit code and JSON-decoded result.

    ``in_parent`` runs in the parent right after the fork. The exit code is None when the
    child had not finished at ``timeout`` (it is killed then).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "w") as out:
                try:
                    out.write(json.dumps(work()))
                    code = 0
                except BaseException:
                    out.write(json.dumps({"error": traceback.format_exc()}))
        finally:
            os._exit(code)
    os.close(write_fd)
    in_parent()
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        # The pipe reaches its end when the child exits.
        while select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), json.loads(b"".join(chunks) or b"null")


# -- one process ----------------------------------------------------------------------


class TestRoundTrip:
    """What goes in comes out unchanged, oldest first, once per lease."""

    @pytest.mark.parametrize(
        "op",
        [
            Operation("01HZX0000000000000000000AA", "event", "signed_up", b'{"type":"person"}'),
            Operation("u1", "identify", None, '{"name":"Zoë 🚀"}'.encode()),
            Operation("raw", "page", "/a", bytes(range(256))),  # not even UTF-8: still exact
            Operation("big", "event", "n", _body(32_000)),
            Operation("empty", "delete", None, b""),
        ],
        ids=["json", "utf8", "arbitrary-bytes", "32kb", "empty"],
    )
    def test_an_operation_comes_back_exactly_as_it_went_in(
        self, make_spool: Callable[..., Spool], op: Operation
    ) -> None:
        spool = make_spool()
        spool.add([op])
        (back,) = spool.claim(10)
        assert back == op
        assert type(back.body) is bytes

    def test_the_oldest_come_first_across_adds(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("c"), _op("a")])
        spool.add([_op("b")])
        spool.add([_op("d"), _op("e")])
        assert _ids(spool.claim(2)) == ["c", "a"]
        assert _ids(spool.claim(10)) == ["b", "d", "e"]
        assert spool.claim(10) == []

    def test_a_claimed_row_comes_back_only_when_its_lease_ends(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        clock = FakeClock()
        spool = make_spool(clock=clock)
        spool.add([_op("a"), _op("b")])
        assert _ids(spool.claim(10)) == ["a", "b"]
        assert spool.claim(10) == []
        clock.advance(REPLAY_LEASE - 1)
        assert spool.claim(10) == []
        clock.advance(1)  # the lease's last second is over
        assert _ids(spool.claim(10)) == ["a", "b"]

    def test_ack_removes_and_release_gives_back(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("a"), _op("b"), _op("c")])
        assert _ids(spool.claim(3)) == ["a", "b", "c"]
        spool.ack(["a"])
        spool.release(["b"])
        assert spool.pending() == 2
        assert _ids(spool.claim(10)) == ["b"]  # c is still leased
        spool.ack(["b", "c"])
        assert spool.pending() == 0
        assert spool.status().bytes == 0

    def test_unknown_ids_and_empty_lists_are_harmless(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        assert spool.add([]) == 0
        spool.ack([])
        spool.ack(["nope"])
        spool.release(["nope", "a"])  # a is not leased: nothing to give back
        spool.release([])
        assert _ids(spool.claim(10)) == ["a"]

    def test_status_counts_what_is_held(self, make_spool: Callable[..., Spool]) -> None:
        clock = FakeClock(1000.0)
        spool = make_spool(clock=clock, max_bytes=5000)
        spool.add([_op("a", 100), _op("b", 50)])
        clock.advance(10)
        spool.add([_op("c", 25)])
        spool.claim(1)
        spool.dead_letter([_letter("x")])
        status = spool.status()
        assert status.path == str(spool.path)
        assert (status.pending, status.leased, status.bytes) == (3, 1, 175)
        assert (status.oldest, status.newest) == (1000.0, 1010.0)
        assert (status.max_bytes, status.dead_letters, status.site_id) == (5000, 1, SITE)
        assert status.file_bytes > 0

    def test_purge_empties_the_spool_and_its_byte_count(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.add([_op(f"o{i}", 100) for i in range(5)])
        spool.claim(2)
        assert spool.purge() == 5
        assert (spool.pending(), spool.status().bytes) == (0, 0)

    def test_close_then_use_opens_again(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        spool.close()
        spool.close()
        assert _ids(spool.claim(1)) == ["a"]


class TestClaimBytes:
    """A claim is what one batch body can carry: never over max_bytes, unless one op alone."""

    @pytest.mark.parametrize(
        ("sizes", "limit", "slack", "expected"),
        [
            ([100, 100, 100], 10, 0, 3),  # body exactly max_bytes: all fit
            ([100, 100, 100], 10, -1, 2),  # one byte short: the last one waits
            ([100, 100, 100], 2, 0, 2),  # the count limit first
            ([100, 100, 100], 0, 0, 0),
            ([5000, 100], 10, -4900, 1),  # one op over the bound goes alone
            ([100, 5000, 100], 10, -4900, 1),  # no skipping ahead: order is kept
        ],
    )
    def test_table(
        self,
        make_spool: Callable[..., Spool],
        sizes: list[int],
        limit: int,
        slack: int,
        expected: int,
    ) -> None:
        spool = make_spool()
        ops = [_op(f"o{i}", size) for i, size in enumerate(sizes)]
        spool.add(ops)
        max_bytes = len(batch_body(ops)) + slack
        assert spool.claim(limit, max_bytes=max_bytes) == ops[:expected]

    @settings(max_examples=60, deadline=None)
    @given(
        sizes=st.lists(st.integers(8, 400), min_size=1, max_size=25),
        limit=st.integers(1, 30),
        max_bytes=st.integers(0, 3000),
    )
    def test_a_claim_fits_its_body_and_takes_all_that_fits(
        self, tmp_path_factory: pytest.TempPathFactory, sizes: list[int], limit: int, max_bytes: int
    ) -> None:
        spool = Spool(tmp_path_factory.mktemp("claim") / "s.sqlite3", max_bytes=BIG)
        try:
            ops = [_op(f"o{i:03d}", size) for i, size in enumerate(sizes)]
            spool.add(ops)
            got = spool.claim(limit, max_bytes=max_bytes)
            assert got == ops[: len(got)]
            assert 1 <= len(got) <= limit
            assert len(got) == 1 or len(batch_body(got)) <= max_bytes
            if len(got) < min(limit, len(ops)):  # stopped early: the next would not fit
                assert len(batch_body(ops[: len(got) + 1])) > max_bytes
        finally:
            spool.close()


_MODEL_IDS = [f"op{i:02d}" for i in range(16)]


def _model_size(op_id: str) -> int:
    return 20 + (int(op_id[2:]) * 53) % 240  # one size per id: an id is one operation


def _model_op(op_id: str) -> Operation:
    return _op(op_id, _model_size(op_id))


class _SpoolModel(RuleBasedStateMachine):
    """Any sequence of add/claim/ack/release/time against a model of what is waiting.

    Invariants: a claim never returns an id that an outstanding claim holds; nothing is
    lost but what was acked or evicted (evictions take the oldest, and only past the
    bound); the byte count is exact and within max_bytes.
    """

    MAX_BYTES = 1500

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory(prefix="spool-model-")
        self.clock = FakeClock()
        self.spool = Spool(
            Path(self.directory.name) / "s.sqlite3", max_bytes=self.MAX_BYTES, clock=self.clock
        )
        self.order: list[str] = []  # waiting ids, oldest first
        self.lease_until: dict[str, float | None] = {}
        self.claimed: set[str] = set()  # outstanding claims

    def teardown(self) -> None:
        self.spool.close()
        self.directory.cleanup()

    def _forget(self, ids: list[str]) -> None:
        for op_id in ids:
            self.order.remove(op_id)
            del self.lease_until[op_id]
            self.claimed.discard(op_id)

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), min_size=1, max_size=6), lease=st.booleans())
    def add(self, ids: list[str], lease: bool) -> None:
        evicted = self.spool.add([_model_op(i) for i in ids], lease=lease)
        for op_id in ids:
            if op_id not in self.lease_until:
                self.order.append(op_id)
            elif lease:
                # A reservation never takes back a row already there (spooled, or
                # claimed by replay): it stays as it is.
                continue
            # New, or added again without a lease: released, any claim on it over.
            self.lease_until[op_id] = self.clock.now + FRESH_LEASE if lease else None
            self.claimed.discard(op_id)
        used = sum(map(_model_size, self.order))
        assert (evicted > 0) == (used > self.MAX_BYTES)
        self._forget(self.order[:evicted])

    @rule(limit=st.integers(0, 8), max_bytes=st.integers(0, 800))
    def claim(self, limit: int, max_bytes: int) -> None:
        got = self.spool.claim(limit, max_bytes=max_bytes)
        ids = _ids(got)
        assert not set(ids) & self.claimed, "an id was claimed twice"
        now = self.clock.now
        free = [i for i in self.order if (self.lease_until[i] or 0.0) <= now]
        assert ids == free[: len(ids)], "not the oldest free rows, in order"
        assert got == [_model_op(i) for i in ids]
        assert len(ids) <= limit
        assert len(ids) <= 1 or len(batch_body(got)) <= max_bytes
        if len(ids) < min(limit, len(free)):
            assert len(batch_body([*got, _model_op(free[len(ids)])])) > max_bytes
        for op_id in ids:
            self.lease_until[op_id] = now + REPLAY_LEASE
        self.claimed.update(ids)

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def ack_claimed(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.claimed)), unique=True))
        self.spool.ack(ids)
        self._forget(ids)

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), unique=True))
    def ack_any(self, ids: list[str]) -> None:
        self.spool.ack(ids)
        self._forget([i for i in ids if i in self.lease_until])

    @rule(ids=st.lists(st.sampled_from(_MODEL_IDS), unique=True))
    def release(self, ids: list[str]) -> None:
        self.spool.release(ids)
        for op_id in ids:
            if op_id in self.lease_until:
                self.lease_until[op_id] = None
                self.claimed.discard(op_id)

    @rule(seconds=st.sampled_from([1.0, REPLAY_LEASE, FRESH_LEASE]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.claimed = {i for i in self.claimed if (self.lease_until[i] or 0.0) > self.clock.now}

    @invariant()
    def nothing_is_lost_and_bytes_are_exact(self) -> None:
        status = self.spool.status()
        assert status.pending == len(self.order)
        assert status.bytes == sum(map(_model_size, self.order)) <= self.MAX_BYTES
        leased = [i for i in self.order if (self.lease_until[i] or 0.0) > self.clock.now]
        assert status.leased == len(leased)


TestSpoolModel = _SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


class TestUpsert:
    """Adding an id that is already waiting keeps one row and gives it back to replay."""

    def test_a_leased_row_added_again_is_released_not_duplicated(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        op = _op("a", 100)
        spool.add([op], lease=True)  # durability="disk": reserved for the live queue
        assert spool.claim(10) == []
        assert spool.status().leased == 1
        assert spool.add([op]) == 0  # the queue gave up on it
        assert (spool.pending(), spool.status().bytes, spool.status().leased) == (1, 100, 0)
        assert spool.claim(10) == [op]

    def test_a_claimed_row_added_again_is_released(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("a"), _op("b")])
        spool.claim(10)
        spool.add([_op("b")])
        assert _ids(spool.claim(10)) == ["b"]
        assert spool.pending() == 2

    def test_an_id_twice_in_one_add_is_one_row(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("a", 60), _op("a", 60)])
        assert (spool.pending(), spool.status().bytes) == (1, 60)

    def test_adding_again_keeps_the_row_in_its_place(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.add([_op("a"), _op("b")])
        spool.add([_op("a")])
        assert _ids(spool.claim(10)) == ["a", "b"]


class TestEviction:
    """Past max_bytes the oldest rows go; the count says how many; the newest stay."""

    @pytest.mark.parametrize(
        ("max_bytes", "adds", "evicted", "survivors"),
        [
            # 100-byte ops. Within the bound nothing goes; past it, the oldest go, with a
            # twentieth of the bound to spare so that a full spool does not evict per write.
            (1000, [1] * 10, [0] * 10, range(10)),
            (1000, [1] * 11, [0] * 10 + [2], range(2, 11)),
            (1000, [20], [11], range(11, 20)),
            (1000, [5, 10], [0, 6], range(6, 15)),
            (50, [1], [1], range(0)),  # one op over the bound: it goes too
        ],
        ids=["at-the-bound", "one-past", "one-big-add", "second-add", "op-over-bound"],
    )
    def test_the_oldest_go(
        self,
        make_spool: Callable[..., Spool],
        max_bytes: int,
        adds: list[int],
        evicted: list[int],
        survivors: range,
    ) -> None:
        spool = make_spool(max_bytes=max_bytes)
        counts, n = [], 0
        for size in adds:
            counts.append(spool.add([_op(f"o{i:02d}", 100) for i in range(n, n + size)]))
            n += size
            assert spool.status().bytes <= max_bytes
        assert counts == evicted
        assert _ids(spool.claim(100)) == [f"o{i:02d}" for i in survivors]
        assert spool.status().bytes == 100 * len(survivors)

    def test_claimed_rows_can_be_evicted_and_their_ack_is_harmless(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool(max_bytes=300)
        spool.add([_op("a", 100), _op("b", 100)])
        claimed = spool.claim(1)
        assert spool.add([_op("c", 100), _op("d", 100)]) == 2
        spool.ack(_ids(claimed))
        assert _ids(spool.claim(10)) == ["c", "d"]


class TestDeadLetter:
    """Set-aside operations keep why; requeue puts the sendable ones back."""

    def test_a_row_keeps_everything(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        letter = DeadLetterRow(
            999, "a", "identify", None, "http_400", "attributes.plan", "too long", 12.5, b'{"x":1}'
        )
        invalid = DeadLetterRow(
            0, None, None, None, "invalid_event", "user_id", "missing", 13.0, None
        )
        spool.dead_letter([letter, invalid])
        first, second = spool.dead_letters()
        assert first.seq < second.seq  # the spool numbers them; the given seq is ignored
        assert first == dataclasses.replace(letter, seq=first.seq)
        assert second == dataclasses.replace(invalid, seq=second.seq)
        assert spool.pending() == 0  # the spool row went with it

    def test_as_json_decodes_the_operation(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        body = json.dumps({"type": "person", "name": "Zoë"}).encode()
        spool.dead_letter([_letter("a", body=body), _letter(None, body=None)])
        sent, invalid = (row.as_json() for row in spool.dead_letters())
        assert sent["operation"] == {"type": "person", "name": "Zoë"}
        assert {k: sent[k] for k in ("id", "reason", "field", "message", "at")} == {
            "id": "a",
            "reason": "http_400",
            "field": "attributes.plan",
            "message": "rejected",
            "at": 1_700_000_000.0,
        }
        assert invalid["operation"] is None
        json.dumps([sent, invalid])  # a JSON-lines export can write both

    def test_requeue_moves_what_has_an_operation(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.dead_letter(
            [_letter("a", body=b'{"a":1}'), _letter(None, body=None), _letter("b", body=b'{"b":2}')]
        )
        assert spool.requeue() == 2
        assert spool.claim(10) == [
            Operation("a", "event", "n", b'{"a":1}'),
            Operation("b", "event", "n", b'{"b":2}'),
        ]
        assert [(r.id, r.reason) for r in spool.dead_letters()] == [(None, "http_400")]

    @pytest.mark.parametrize(
        ("pick_seqs", "reason", "moved"),
        [
            (None, "http_400", ["a", "c"]),
            (None, "nope", []),
            ([1], None, ["b"]),
            ([0, 1], "http_400", ["a"]),  # both filters: the rows matching both
            ([], None, []),
        ],
    )
    def test_requeue_by_reason_and_seqs(
        self,
        make_spool: Callable[..., Spool],
        pick_seqs: list[int] | None,
        reason: str | None,
        moved: list[str],
    ) -> None:
        spool = make_spool()
        spool.dead_letter(
            [_letter("a"), _letter("b", reason="http_413"), _letter("c"), _letter(None, body=None)]
        )
        seqs = [r.seq for r in spool.dead_letters()]
        chosen = None if pick_seqs is None else [seqs[i] for i in pick_seqs]
        assert spool.requeue(chosen, reason=reason) == len(moved)
        assert _ids(spool.claim(10)) == moved
        assert [r.id for r in spool.dead_letters()] == [
            i for i in ("a", "b", "c", None) if i not in moved
        ]

    def test_requeue_of_an_id_already_waiting_keeps_one_row(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.dead_letter([_letter("a")])
        spool.add([_op("a")])
        spool.requeue()
        assert spool.pending() == 1

    def test_the_oldest_letters_go_beyond_the_maximum(
        self, make_spool: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_spool, "MAX_DEAD_LETTERS", 5)
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i}") for i in range(3)])
        spool.dead_letter([_letter(f"d{i}") for i in range(3, 7)])
        assert [r.id for r in spool.dead_letters()] == ["d2", "d3", "d4", "d5", "d6"]

    def test_trimming_counts_rows_not_seq_numbers(
        self, make_spool: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_spool, "MAX_DEAD_LETTERS", 5)
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i}") for i in range(5)])
        spool.requeue([r.seq for r in spool.dead_letters() if r.id in ("d1", "d2")])
        spool.dead_letter([_letter("d5")])
        assert [r.id for r in spool.dead_letters()] == ["d0", "d3", "d4", "d5"]

    def test_the_oldest_letters_go_beyond_the_byte_bound_and_are_counted(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool(max_bytes=400_000)  # the dead letter's share: 100,000 bytes
        assert spool.dead_letter_max_bytes == 100_000
        evicted = [spool.dead_letter([_letter(f"d{i}", body=_body(30_000))]) for i in range(10)]
        kept = list(spool.dead_letters())
        # The newest that fit in a twentieth less than the bound, the rest evicted.
        assert [r.id for r in kept] == ["d7", "d8", "d9"]
        assert sum(evicted) == 7
        status = spool.status()
        assert status.dead_letters_evicted == 7
        assert status.dead_letter_bytes == sum(_row_bytes(r) for r in kept)
        assert status.dead_letter_bytes <= status.dead_letter_max_bytes == 100_000

    @settings(max_examples=30, deadline=None)
    @given(
        writes=st.lists(
            st.lists(st.integers(min_value=8, max_value=30_000), min_size=1, max_size=5),
            min_size=1,
            max_size=8,
        )
    )
    def test_the_newest_are_kept_within_the_bound_and_every_eviction_counted(
        self, writes: list[list[int]]
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="dead-letter-") as directory:
            spool = Spool(Path(directory) / "s.sqlite3", max_bytes=200_000)
            try:
                written: list[str] = []
                evicted = 0
                for sizes in writes:
                    batch = [f"d{len(written) + i:03d}" for i in range(len(sizes))]
                    written += batch
                    letters = [_letter(i, body=_body(n)) for i, n in zip(batch, sizes, strict=True)]
                    evicted += spool.dead_letter(letters)
                kept = list(spool.dead_letters())
                status = spool.status()
            finally:
                spool.close()
        assert [r.id for r in kept] == written[len(written) - len(kept) :]  # the newest
        assert status.dead_letter_bytes == sum(map(_row_bytes, kept)) <= 50_000
        assert status.dead_letters_evicted == evicted == len(written) - len(kept)

    def test_one_write_larger_than_the_bound_keeps_its_newest_rows(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool(max_bytes=400_000)
        assert spool.dead_letter([_letter(f"d{i}", body=_body(30_000)) for i in range(5)]) == 2
        assert [r.id for r in spool.dead_letters()] == ["d2", "d3", "d4"]

    def test_texts_are_cut_whoever_writes_them(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        huge = "r" * 5_000_000
        spool.dead_letter([DeadLetterRow(0, "a", "event", "n", huge, huge, huge, 1.0, b"{}")])
        (row,) = spool.dead_letters()
        assert (len(row.reason), len(row.field or ""), len(row.message)) == (200, 200, 1000)
        assert spool.status().dead_letter_bytes == _row_bytes(row)

    def test_the_byte_count_follows_every_change(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i}", body=_body(100 + i)) for i in range(6)])
        spool.dead_letter([_letter(None, body=None)])
        spool.requeue([next(spool.dead_letters()).seq])
        spool.purge_dead_letters(reason="nope")
        spool.purge_dead_letters([list(spool.dead_letters())[-1].seq])
        assert spool.status().dead_letter_bytes == sum(_row_bytes(r) for r in spool.dead_letters())
        spool.purge_dead_letters()
        assert spool.status().dead_letter_bytes == 0

    def test_a_file_from_before_the_byte_count_is_counted_when_opened(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i}", body=_body(1000)) for i in range(4)])
        spool.close()
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            # As an earlier version left it: no triggers, no count.
            conn.execute("DROP TRIGGER dead_letter_bytes_added")
            conn.execute("DROP TRIGGER dead_letter_bytes_removed")
            conn.execute("DELETE FROM meta WHERE key LIKE 'dead_letter%'")
            conn.commit()
        reopened = make_spool()
        assert reopened.status().dead_letter_bytes == 4 * _row_bytes(next(reopened.dead_letters()))

    @pytest.mark.parametrize(
        ("limit", "expected"),
        [(None, 1203), (0, 0), (1, 1), (500, 500), (501, 501), (1203, 1203), (5000, 1203)],
    )
    def test_reading_in_pages_returns_every_row_once_in_order(
        self, make_spool: Callable[..., Spool], limit: int | None, expected: int
    ) -> None:
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i:04d}") for i in range(1203)])
        ids = [r.id for r in spool.dead_letters(limit=limit)]
        assert ids == [f"d{i:04d}" for i in range(expected)]

    def test_reading_by_reason(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.dead_letter([_letter(f"d{i:04d}", reason=f"r{i % 2}") for i in range(1203)])
        odd = [r.id for r in spool.dead_letters(reason="r1")]
        assert odd == [f"d{i:04d}" for i in range(1, 1203, 2)]

    def test_purge_dead_letters(self, make_spool: Callable[..., Spool]) -> None:
        spool = make_spool()
        spool.dead_letter([_letter("a"), _letter("b", reason="x"), _letter("c"), _letter("d")])
        first = next(spool.dead_letters()).seq
        assert spool.purge_dead_letters(reason="x") == 1
        assert spool.purge_dead_letters([first]) == 1
        assert spool.purge_dead_letters() == 2
        assert spool.status().dead_letters == 0


# -- the file -------------------------------------------------------------------------


class TestFile:
    """Private to its user, bound to one workspace, holding no secret."""

    def test_the_directory_and_files_are_private_whatever_the_umask(
        self, tmp_path: Path, open_umask: None
    ) -> None:
        path = tmp_path / "state" / "customerio-logging" / "spool.sqlite3"
        spool = Spool(path, max_bytes=BIG, site_id=SITE)
        try:
            spool.add([_op("a")])
            assert _mode(path.parent) == 0o700
            for suffix in ("", "-wal", "-shm", ".lock"):
                assert _mode(_sibling(path, suffix)) == 0o600, suffix
        finally:
            spool.close()

    def test_a_process_killed_while_making_the_file_leaves_no_half_made_spool(
        self, spool_path: Path
    ) -> None:
        result = subprocess.run(
            _program("spool_killed_while_made", spool_path),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
        # Before the fix the file was marked ours, with no tables: half made. Now the
        # marks and the tables come in one transaction, and the kill undid it all.
        conn = sqlite3.connect(spool_path)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
        assert (app_id, tables) == (0, 0)
        # And the next process makes it a whole spool.
        spool = Spool(spool_path, max_bytes=BIG, site_id=SITE)
        try:
            spool.add([_op("a")])
            assert spool.pending() == 1
        finally:
            spool.close()

    def test_a_readable_file_is_made_private_again(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        spool.close()
        spool_path.chmod(0o644)
        assert make_spool().pending() == 1
        assert _mode(spool_path) == 0o600

    def test_the_file_holds_the_workspace_and_nothing_secret(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        spool = make_spool(track_url=URL)
        spool.add([_op("a")])
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {
            "site_id": SITE,
            "track_url": URL,
            "spool_bytes": 40,
            "dead_letter_bytes": 0,
            "dead_letters_evicted": 0,
        }

    @pytest.mark.parametrize(
        ("site_id", "track_url"),
        [("other-site", URL), (SITE, "https://track-eu.example.test")],
        ids=["site", "track-url"],
    )
    def test_another_workspaces_file_is_refused_and_left_alone(
        self,
        make_spool: Callable[..., Spool],
        spool_path: Path,
        site_id: str,
        track_url: str,
    ) -> None:
        owner = make_spool(track_url=URL)
        owner.add([_op("kept")])
        owner.close()
        before = spool_path.read_bytes()
        notices: list[str] = []
        other = make_spool(site_id=site_id, track_url=track_url, notice=notices.append)
        with pytest.raises(SpoolUnavailableError, match="another workspace") as caught:
            other.add([_op("mine")])
        assert caught.value.first
        other.close()
        assert notices == []
        assert _moved_aside(spool_path) == []
        assert spool_path.read_bytes() == before
        assert _ids(make_spool(track_url=URL).claim(10)) == ["kept"]

    def test_no_site_id_opens_any_workspaces_file_without_claiming_it(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        make_spool(site_id="a-site", track_url=URL).add([_op("kept")])
        viewer = make_spool(site_id=None)
        assert viewer.status().site_id == "a-site"
        assert _ids(viewer.claim(10)) == ["kept"]

    def test_a_fresh_file_opened_without_site_id_is_claimed_by_the_first_site(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        assert make_spool(site_id=None).pending() == 0
        make_spool(site_id="first", track_url=URL).add([_op("a")])
        with pytest.raises(SpoolUnavailableError):
            make_spool(site_id="second", track_url=URL).pending()

    def test_a_file_written_without_track_url_accepts_the_same_site_with_one(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        make_spool(track_url=None).add([_op("a")])
        assert _ids(make_spool(track_url=URL).claim(10)) == ["a"]


def _foreign_bytes(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 a zip, say, not a database" * 100)


def _half_header(path: Path) -> None:
    path.write_bytes(b"SQLite fo")


def _foreign_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('another app''s data')")
        conn.commit()


def _truncated_spool(path: Path) -> None:
    spool = Spool(path, max_bytes=BIG, site_id=SITE)
    spool.add([_op(f"o{i:04d}", 2000) for i in range(1000)])  # about 2 MB
    spool.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    assert size > 1_500_000
    os.truncate(path, size // 2)


class TestCorruption:
    """A damaged or foreign file is moved aside, once, with a notice; a newer one is refused."""

    @pytest.mark.parametrize(
        "spoil",
        [_foreign_bytes, _half_header, _foreign_database, _truncated_spool],
        ids=["foreign-bytes", "half-header", "foreign-database", "truncated-spool"],
    )
    def test_it_is_moved_aside_and_a_fresh_spool_works(
        self, make_spool: Callable[..., Spool], spool_path: Path, spoil: Callable[[Path], None]
    ) -> None:
        spoil(spool_path)
        original = spool_path.read_bytes()
        notices: list[str] = []
        spool = make_spool(notice=notices.append)
        assert spool.pending() == 0
        (moved,) = _moved_aside(spool_path)
        assert moved.read_bytes() == original
        assert len(notices) == 1
        assert str(spool_path) in notices[0]
        assert moved.name in notices[0]
        spool.add([_op("a")])
        assert _ids(spool.claim(10)) == ["a"]
        make_spool(notice=notices.append).status()  # another opener finds it sound
        assert len(notices) == 1

    def test_a_file_from_a_newer_version_is_refused_and_left_alone(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([_op("kept")])
        spool.close()
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            conn.execute("PRAGMA user_version = 99")
        notices: list[str] = []
        with pytest.raises(SpoolUnavailableError, match="newer") as caught:
            make_spool(notice=notices.append).pending()
        assert caught.value.first
        assert notices == []
        assert _moved_aside(spool_path) == []
        with contextlib.closing(sqlite3.connect(spool_path)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (99,)
            assert conn.execute("SELECT id FROM spool").fetchall() == [("kept",)]

    def test_two_bad_files_in_one_second_are_both_kept(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        with freeze_time("2030-01-01 00:00:00"):
            for spoil in (_foreign_bytes, _half_header):
                spoil(spool_path)
                spool = make_spool()
                spool.pending()
                spool.close()
        assert len(_moved_aside(spool_path)) == 2


class TestUnusablePath:
    """A path that cannot hold a spool fails with words, once, then fast."""

    @pytest.mark.parametrize(
        "layout", ["parent-is-a-file", "grandparent-is-a-file", "path-is-a-directory"]
    )
    def test_it_fails_fast_after_the_first_error(self, tmp_path: Path, layout: str) -> None:
        blocker = tmp_path / "blocker"
        if layout == "path-is-a-directory":
            blocker.mkdir()
            path = blocker
        else:
            blocker.write_text("a file")
            path = blocker / "spool.sqlite3"
            if layout == "grandparent-is-a-file":
                path = blocker / "state" / "spool.sqlite3"
        spool = Spool(path, max_bytes=BIG, site_id=SITE)
        with pytest.raises(SpoolUnavailableError) as first:
            spool.add([_op("a")])
        message = str(first.value)
        assert first.value.first
        assert str(path) in message
        assert "directory" in message.lower()
        assert "\n" not in message
        # Even with the obstacle gone, the next call does not touch the disk: no retry
        # storm from a logging call per event.
        if blocker.is_dir():
            blocker.rmdir()
        else:
            blocker.unlink()
        with pytest.raises(SpoolUnavailableError) as second:
            spool.pending()
        assert not second.value.first
        assert str(second.value) == message
        assert not blocker.exists()


OTHER_UID = 65534  # "nobody": a user other than this one
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="making a file another user's (chown) needs root",
)


def _shared_group() -> int:
    """A group other than this user's own: one others can be in."""
    for name in ("users", "nogroup", "staff"):
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(name).gr_gid
            if gid != os.getegid():
                return gid
    pytest.skip("no shared group on this machine")


def _state(path: Path) -> tuple[int, int, bytes]:
    """A file's mode, owner and bytes: what the spool must leave as it found them."""
    info = os.lstat(path)
    return info.st_mode, info.st_uid, path.read_bytes()


def _app_database(path: Path) -> None:
    _foreign_database(path)
    path.chmod(0o644)


def _refusal(spool: Spool) -> SpoolUnavailableError:
    """The error the first use of ``spool`` raises (it must raise one, and at once)."""
    outcome: list[object] = []

    def use() -> None:
        try:
            outcome.append(spool.pending())
        except Exception as exc:  # handed to the test to judge
            outcome.append(exc)

    worker = threading.Thread(target=use, name="spool-test-opener", daemon=True)
    worker.start()
    worker.join(10.0)
    if worker.is_alive():
        pytest.fail("opening the spool hung (on a FIFO?)")
    (result,) = outcome
    if not isinstance(result, SpoolUnavailableError):
        pytest.fail(f"the spool was used, or failed otherwise: {result!r}")
    return result


class TestUnsafePlace:
    """A link, another user's file or folder, a folder others can write: refused, left alone."""

    @pytest.mark.parametrize(
        "target",
        [
            pytest.param(lambda p: (p.write_bytes(b""), p.chmod(0o644)), id="empty-file"),
            pytest.param(_app_database, id="another-apps-database"),
            pytest.param(None, id="dangling"),
        ],
    )
    def test_a_symbolic_link_is_refused_and_its_target_left_alone(
        self, tmp_path: Path, target: Callable[[Path], object] | None
    ) -> None:
        victim = tmp_path / "elsewhere" / "victim.db"
        victim.parent.mkdir()
        if target is not None:
            target(victim)
        before = _state(victim) if target is not None else None
        folder = tmp_path / "spool"
        folder.mkdir(mode=0o700)
        link = folder / "spool.sqlite3"
        link.symlink_to(victim)
        spool = Spool(link, max_bytes=BIG, site_id=SITE)
        refused = _refusal(spool)
        assert refused.first
        assert str(link) in str(refused)
        assert "symbolic link" in str(refused)
        if before is None:
            assert not victim.exists()  # not made through the link
        else:
            assert _state(victim) == before
        assert os.listdir(victim.parent) == ([] if before is None else ["victim.db"])
        assert os.listdir(folder) == ["spool.sqlite3"]  # nothing made beside it, nothing moved
        assert link.is_symlink()

    @pytest.mark.parametrize(
        ("mode", "usable"),
        [(0o700, True), (0o755, True), (0o1777, True), (0o777, False), (0o770, False)],
    )
    def test_a_folder_others_can_write_needs_the_sticky_bit(
        self, tmp_path: Path, mode: int, usable: bool
    ) -> None:
        folder = tmp_path / "shared"
        folder.mkdir()
        if mode & 0o020:
            # Group-writable: by a group others are in (a shared one), not this user's own.
            if os.geteuid() != 0:
                pytest.skip("giving a folder to another group needs root")
            os.chown(folder, -1, _shared_group())
        folder.chmod(mode)
        spool = Spool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE)
        try:
            if usable:
                spool.add([_op("a")])
                assert _mode(folder / "spool.sqlite3") == 0o600
                return
            refused = _refusal(spool)
            assert "other users can write" in str(refused)
            assert f"{mode:04o}" in str(refused)
            assert os.listdir(folder) == []
        finally:
            spool.close()

    @pytest.mark.skipif(os.geteuid() != 0, reason="root's own group is a private one")
    def test_a_folder_writable_by_this_users_own_private_group_is_fine(
        self, tmp_path: Path
    ) -> None:
        # A umask of 002 with user private groups makes folders 0775: the group is the
        # user alone (here root, whose group has no other member).
        folder = tmp_path / "mine"
        folder.mkdir()
        folder.chmod(0o775)
        assert folder.stat().st_gid == os.getegid()
        spool = Spool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE)
        try:
            spool.add([_op("a")])
            assert spool.pending() == 1
        finally:
            spool.close()

    def test_a_hard_linked_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "spool.sqlite3"
        _foreign_database(path)
        os.link(path, tmp_path / "another-name")
        before = _state(path)
        refused = _refusal(Spool(path, max_bytes=BIG, site_id=SITE))
        assert "hard link" in str(refused)
        assert _state(path) == before
        assert _moved_aside(path) == []

    def test_a_fifo_is_refused_without_hanging(self, tmp_path: Path) -> None:
        path = tmp_path / "spool.sqlite3"
        os.mkfifo(path)
        try:
            refused = _refusal(Spool(path, max_bytes=BIG, site_id=SITE))
        finally:
            # Let a reader stuck in open() go, should there be one.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert "not a regular file" in str(refused)

    def test_a_file_swapped_for_a_link_while_sqlite_opens_it_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "spool.sqlite3"
        victim = tmp_path / "victim.db"
        _app_database(victim)
        before = _state(victim)
        connect = sqlite3.connect

        def swap_then_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            # Between the spool's checks and SQLite's own open: a link in its place.
            swapped = tmp_path / "swap"
            swapped.symlink_to(victim)
            os.replace(swapped, path)
            return connect(*args, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", swap_then_connect)
        refused = _refusal(Spool(path, max_bytes=BIG, site_id=SITE))
        assert "replaced" in str(refused)
        assert _state(victim) == before

    @needs_root
    @pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal", ".lock"])
    def test_another_users_file_in_a_sticky_folder_is_refused_and_left_alone(
        self, tmp_path: Path, suffix: str
    ) -> None:
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o1777)
        path = folder / "spool.sqlite3"
        theirs = _sibling(path, suffix)
        theirs.write_bytes(b"")
        theirs.chmod(0o666)
        os.chown(theirs, OTHER_UID, OTHER_UID)
        before = _state(theirs)
        refused = _refusal(Spool(path, max_bytes=BIG, site_id=SITE))
        assert "another user" in str(refused)
        assert _state(theirs) == before
        assert os.listdir(folder) == [theirs.name]

    @needs_root
    def test_a_folder_owned_by_another_user_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "theirs"
        folder.mkdir(mode=0o700)
        os.chown(folder, OTHER_UID, OTHER_UID)
        refused = _refusal(Spool(folder / "spool.sqlite3", max_bytes=BIG, site_id=SITE))
        assert "owned by another user" in str(refused)
        assert os.listdir(folder) == []

    @pytest.mark.parametrize("problem", ["symbolic-link", "another-workspace"])
    def test_a_refusal_is_tried_again_quietly_and_the_fixed_path_is_used(
        self,
        make_spool: Callable[..., Spool],
        spool_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        problem: str,
    ) -> None:
        monkeypatch.setattr(_spool, "_RETRY_OPEN_AFTER", 0.0)  # try again on every call
        if problem == "symbolic-link":
            spool_path.symlink_to(spool_path.with_name("elsewhere"))
        else:
            make_spool(site_id="another-site").add([_op("theirs")])
        spool = make_spool()
        first = _refusal(spool)
        assert first.first
        for _ in range(3):  # each one opens again, and fails the same way: no new warning
            with pytest.raises(SpoolUnavailableError) as again:
                spool.add([_op("a")])
            assert not again.value.first
            assert str(again.value) == str(first)
        spool_path.unlink()
        spool.add([_op("a")])
        assert spool.pending() == 1


class TestBusy:
    """Another holder of the write lock means busy, not broken; re-entry is refused."""

    def test_a_write_held_elsewhere_is_busy_and_writes_nothing(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        with contextlib.closing(sqlite3.connect(spool_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SpoolBusyError):
                spool.add([_op("b")])  # after SQLite's busy timeout
            other.execute("ROLLBACK")
        assert spool.pending() == 1
        spool.add([_op("b")])
        assert _ids(spool.claim(10)) == ["a", "b"]

    def test_a_write_held_elsewhere_at_first_open_is_busy_not_unavailable(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        make_spool().add([_op("a")])
        spool = make_spool()
        with contextlib.closing(sqlite3.connect(spool_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SpoolBusyError):
                spool.add([_op("b")])
            other.execute("ROLLBACK")
        spool.add([_op("b")])
        assert spool.pending() == 2

    def test_a_call_from_inside_a_call_on_the_same_thread_is_refused(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        # A notice runs inside the spool's transaction, as a signal handler could.
        _foreign_bytes(spool_path)
        refused: list[BaseException] = []

        def notice(message: str) -> None:
            try:
                spool.pending()
            except SpoolBusyError as exc:
                refused.append(exc)

        spool = make_spool(notice=notice)
        spool.add([_op("a")])
        assert len(refused) == 1
        assert _ids(spool.claim(10)) == ["a"]


# -- other processes ------------------------------------------------------------------


class TestLeasesAcrossProcesses:
    """A dead process's rows come back at once; a live one's wait for its lease to end."""

    @pytest.mark.parametrize("mode", ["claim", "lease"])
    def test_rows_of_a_dead_process_are_claimable_at_once(
        self, make_spool: Callable[..., Spool], spool_path: Path, mode: str
    ) -> None:
        spool = make_spool()
        spool.add([_op(f"r{i}") for i in range(10)])
        held = json.loads(_run("spool_hold", spool_path, mode, 4))
        assert len(held) == 4
        if mode == "claim":
            assert held == [f"r{i}" for i in range(4)]
            expected = [f"r{i}" for i in range(10)]
        else:
            expected = [f"r{i}" for i in range(10)] + held
        assert _ids(spool.claim(100)) == expected

    @pytest.mark.parametrize(("mode", "lease"), [("claim", REPLAY_LEASE), ("lease", FRESH_LEASE)])
    def test_rows_of_a_live_process_wait_for_the_lease(
        self, make_spool: Callable[..., Spool], spool_path: Path, mode: str, lease: float
    ) -> None:
        # The other process leases by the real clock, from after this moment.
        started = time.time()
        clock = FakeClock(started)
        spool = make_spool(clock=clock)
        spool.add([_op(f"r{i}") for i in range(10)])
        with _children(_program("spool_hold", spool_path, mode, 4, "--wait")) as (holder,):
            held = json.loads(_line(holder))
            assert len(held) == 4
            free = [f"r{i}" for i in range(10) if f"r{i}" not in held]
            assert _ids(spool.claim(100)) == free
            spool.release(free)
            if lease > REPLAY_LEASE:
                clock.advance(REPLAY_LEASE + 60)  # a replay lease's time is not enough
                assert _ids(spool.claim(100)) == free
                spool.release(free)
            clock.now = started + lease - 1
            assert _ids(spool.claim(100)) == free
            spool.release(free)
            assert holder.poll() is None  # the holder was alive all along
            clock.now = time.time() + lease + 1
            assert sorted(_ids(spool.claim(100))) == sorted(free + held)
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(TIMEOUT) == 0

    def test_two_processes_draining_one_file_share_it_without_overlap(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        ids = [f"d{i:05d}" for i in range(5000)]
        make_spool().add([_op(i, 60) for i in ids])
        drain = _program("spool_drain", spool_path, 50)
        with _children(drain, drain) as drainers:
            # Both hold a first claim at the same time, then drain side by side.
            for drainer in drainers:
                assert _line(drainer) == "holding\n"
            for drainer in drainers:
                _say(drainer, "go\n")
            got = [json.loads(_line(drainer)) for drainer in drainers]
            for drainer in drainers:
                assert drainer.wait(TIMEOUT) == 0
        first, second = got
        assert len(first) >= 50
        assert len(second) >= 50
        assert len(set(first)) == len(first)
        assert len(set(second)) == len(second)
        assert not set(first) & set(second)
        assert sorted(first + second) == ids
        assert make_spool().pending() == 0

    def test_opening_keeps_the_sqlite_locks_this_process_holds(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        # POSIX locks are the process's: closing any descriptor on a file drops them all,
        # SQLite's too. Another process could then take the file for unused, and
        # checkpoint or reset its -wal and -shm under the open connection.
        first = make_spool()
        first.add([_op("a")])
        assert json.loads(_run("spool_locks", spool_path)) == {"shm": "held", "database": "held"}
        second = make_spool()  # in this same process, as a CLI view or a test helper is
        assert second.pending() == 1
        assert json.loads(_run("spool_locks", spool_path)) == {"shm": "held", "database": "held"}
        first.close()
        assert second.pending() == 1
        assert json.loads(_run("spool_locks", spool_path)) == {"shm": "held", "database": "held"}

    def test_a_full_disk_is_unavailable_in_plain_words_and_keeps_what_was_written(
        self, make_spool: Callable[..., Spool], spool_path: Path
    ) -> None:
        report = json.loads(_run("spool_full_disk", spool_path, 300_000))
        print(report["message"])
        assert report["error"] == "SpoolUnavailableError"
        assert report["first"] is True
        assert report["again_first"] is False
        message: str = report["message"]
        assert str(spool_path) in message
        assert "\n" not in message
        assert "Traceback" not in message
        assert re.search(r"full|too large|disk I/O error", message), message
        assert report["added"] > 0
        notices: list[str] = []
        assert make_spool(notice=notices.append).pending() == report["added"]
        assert notices == []


class TestFork:
    """A forked child uses its parent's Spool object through its own connection."""

    def test_a_child_adds_and_claims_and_the_parent_goes_on(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.add([_op("a"), _op("b"), _op("c")])
        assert _ids(spool.claim(1)) == ["a"]  # the parent's connection is open

        def child() -> object:
            spool.add([_op("d")])
            return {"claimed": _ids(spool.claim(10)), "pending": spool.pending()}

        code, result = _in_fork(child, timeout=TIMEOUT)
        assert code == 0, result
        assert result == {"claimed": ["b", "c", "d"], "pending": 4}  # a: the parent's lease
        spool.ack(["a"])
        assert _ids(spool.claim(10)) == ["b", "c", "d"]  # the child is gone: at once
        assert spool.pending() == 3

    def test_reset_after_fork_lets_a_child_close_and_reopen(
        self, make_spool: Callable[..., Spool]
    ) -> None:
        spool = make_spool()
        spool.add([_op("a")])
        spool.reset_after_fork()  # in the parent: nothing to do
        assert spool.pending() == 1

        def child() -> object:
            spool.reset_after_fork()  # what the bridge's fork hook does
            spool.close()
            spool.add([_op("b")])
            return spool.pending()

        assert _in_fork(child, timeout=TIMEOUT) == (0, 2)
        spool.add([_op("c")])
        assert _ids(spool.claim(10)) == ["a", "b", "c"]

    def test_a_fork_while_another_thread_opens_the_spool_does_not_hang_the_child(
        self, make_spool: Callable[..., Spool], spool_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # os.fork waits (a bounded time) for the call in progress; past that, the child
        # cannot trust SQLite's locks and runs without the spool rather than hang.
        monkeypatch.setattr(_spool, "_FORK_WAIT", 0.2)
        _foreign_bytes(spool_path)  # so that opening tells the notice, which holds it there
        inside, proceed = threading.Event(), threading.Event()

        def notice(message: str) -> None:
            inside.set()
            proceed.wait(TIMEOUT)

        spool = make_spool(notice=notice)
        opener = threading.Thread(target=spool.pending, name="spool-opener")
        opener.start()
        try:
            assert inside.wait(TIMEOUT)
            code, result = _in_fork(_pending_or_error(spool), timeout=2.0, in_parent=proceed.set)
        finally:
            proceed.set()
            opener.join(TIMEOUT)
        assert (code, result) == (0, "SpoolUnavailableError")
        assert spool.pending() == 0  # the parent's spool works on


def _pending_or_error(spool: Spool) -> Callable[[], object]:
    def run() -> object:
        try:
            return spool.pending()
        except (SpoolUnavailableError, SpoolBusyError) as exc:
            return type(exc).__name__

    return run


class TestDefaultSpoolPath:
    """One file per user, workspace and API host, under the XDG state directory."""

    pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="XDG paths: not macOS")

    def test_it_honours_xdg_state_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        path = default_spool_path(SITE, URL)
        assert path.parent == tmp_path / "state" / "customerio-logging"
        assert re.fullmatch(r"spool-[0-9a-f]{16}\.sqlite3", path.name)

    @pytest.mark.parametrize("value", [None, "", "  ", "relative/state"])
    def test_without_a_usable_xdg_state_home_it_is_under_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        monkeypatch.setenv("HOME", str(tmp_path))
        if value is None:
            monkeypatch.delenv("XDG_STATE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_STATE_HOME", value)
        path = default_spool_path(SITE, URL)
        assert path.parent == tmp_path / ".local" / "state" / "customerio-logging"

    def test_it_differs_per_site_and_per_host_and_is_stable(self) -> None:
        paths = {
            default_spool_path(SITE, URL),
            default_spool_path("other-site", URL),
            default_spool_path(SITE, "https://track-eu.example.test"),
        }
        assert len(paths) == 3
        assert default_spool_path(SITE, URL) == default_spool_path(SITE, URL)

    def test_without_a_home_it_is_a_private_folder_in_the_shared_temp_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shared = _homeless(tmp_path, monkeypatch)
        path = default_spool_path(SITE, URL)
        assert path.parent == shared / f"customerio-logging-{os.getuid()}"
        spool = Spool(path, max_bytes=BIG, site_id=SITE)
        try:
            spool.add([_op("a")])
            assert spool.pending() == 1
        finally:
            spool.close()
        assert _mode(path.parent) == 0o700
        assert _mode(path) == 0o600

    @needs_root
    def test_a_folder_another_user_made_there_first_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shared = _homeless(tmp_path, monkeypatch)
        theirs = shared / f"customerio-logging-{os.getuid()}"
        theirs.mkdir()
        theirs.chmod(0o777)
        os.chown(theirs, OTHER_UID, OTHER_UID)
        refused = _refusal(Spool(default_spool_path(SITE, URL), max_bytes=BIG, site_id=SITE))
        assert "owned by another user" in str(refused)
        assert os.listdir(theirs) == []


def _homeless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No XDG_STATE_HOME, no home: the temp dir, a sticky shared folder like /tmp, is used."""

    def no_home(cls: type[Path]) -> Path:
        raise RuntimeError("Could not determine home directory.")

    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared
