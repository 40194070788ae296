"""The shared wire types: Operation, its ULID, the batch body, shorten."""

from __future__ import annotations

import json
import sys
import textwrap
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ulid import ULID

from customerio_logging._wire import (
    BODY_OVERHEAD,
    Operation,
    batch_body,
    new_ulid,
    shorten,
    status_phrase,
)

from .helpers import run_python

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
LEAK = "LEAKED-PAYLOAD-7731"


class TestShorten:
    @given(text=st.text(), limit=st.integers(min_value=1, max_value=300))
    def test_shorten_is_bounded_and_printable(self, text: str, limit: int) -> None:
        short = shorten(text, limit)
        assert len(short) <= limit
        assert short.isprintable()
        line = " ".join(text.split())
        if line == text and text.isprintable() and len(text) <= limit:
            assert short == text  # what needs no shortening is kept as it is


class TestBatchBody:
    def test_joins_the_bodies_and_frames_them(self) -> None:
        ops = [Operation(f"id{i}", "event", "e", b'{"n":%d}' % i) for i in range(3)]
        body = batch_body(ops)
        assert json.loads(body) == {"batch": [{"n": 0}, {"n": 1}, {"n": 2}]}
        commas = len(ops) - 1
        assert len(body) == BODY_OVERHEAD + sum(len(op.body) for op in ops) + commas

    @given(st.lists(st.binary(max_size=20), max_size=6))
    def test_it_is_the_framed_join_of_the_bodies_which_stay_as_they_were(
        self, bodies: list[bytes]
    ) -> None:
        ops = [Operation(f"id{i}", "event", "e", body) for i, body in enumerate(bodies)]
        assert batch_body(ops) == b'{"batch":[' + b",".join(bodies) + b"]}"
        assert [op.body for op in ops] == bodies


class TestOperation:
    op = Operation(
        id="01HF0000000000000000000000",
        action="event",
        name="signup",
        body=b'{"attributes":{"card":"' + LEAK.encode() + b'"}}',
    )

    def test_repr_leaves_out_the_body(self) -> None:
        assert repr(self.op) == (
            "Operation(id='01HF0000000000000000000000', action='event', name='signup')"
        )
        assert LEAK not in repr(self.op)
        assert LEAK not in str(self.op)
        assert LEAK not in f"{self.op}"
        assert LEAK not in repr([self.op])

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            self.op.body = b""  # type: ignore[misc]

    def test_equality_is_by_value(self) -> None:
        assert self.op == self.op._replace()
        assert self.op != self.op._replace(id="01HF0000000000000000000001")


class TestNewUlid:
    @pytest.mark.parametrize(
        "timestamp", [0.0, 1.0, 1_700_000_000.75, 1_234_567_890.001, 2**48 / 1000 - 0.001]
    )
    def test_shape_and_time(self, timestamp: float) -> None:
        value = new_ulid(timestamp)
        assert len(value) == 26
        assert set(value) <= CROCKFORD
        assert value[0] in "01234567"  # 128 bits: the first character holds 3
        parsed = ULID.from_str(value)
        assert str(parsed) == value
        assert parsed.milliseconds == int(timestamp * 1000)

    @settings(max_examples=300)
    @given(timestamp=st.floats(min_value=0, max_value=2**48 / 1000 - 1))
    def test_time_part_matches_python_ulid(self, timestamp: float) -> None:
        value = new_ulid(timestamp)
        assert ULID.from_str(value).milliseconds == int(timestamp * 1000)
        assert value[:10] == str(ULID.from_int(int(timestamp * 1000) << 80))[:10]

    @settings(max_examples=300)
    @given(
        first=st.floats(min_value=0, max_value=2**47 / 1000),
        gap_ms=st.integers(min_value=1, max_value=10**9),
    )
    def test_time_part_is_monotone(self, first: float, gap_ms: int) -> None:
        later = first + gap_ms / 1000
        if int(later * 1000) <= int(first * 1000):  # float rounding: not a later millisecond
            return
        a, b = new_ulid(first), new_ulid(later)
        assert a[:10] < b[:10]
        assert a < b  # the time part leads, so ids sort by time

    def test_sorted_ids_are_in_time_order(self) -> None:
        stamps = [1_700_000_000 + i * 0.001 for i in range(0, 5000, 7)]
        ids = [new_ulid(t) for t in stamps]
        assert ids == sorted(ids)

    def test_unique_within_one_millisecond(self) -> None:
        ids = {new_ulid(1_700_000_000.5) for _ in range(10_000)}
        assert len(ids) == 10_000

    def test_unique_across_threads_drawing_at_once(self) -> None:
        # The random parts are drawn ahead and shared: threads taking them at once (the
        # dispatch thread, direct calls) and refilling them must never get the same one.
        ids: list[list[str]] = [[] for _ in range(8)]
        start = threading.Barrier(8)

        def make(out: list[str]) -> None:
            start.wait()
            out.extend(new_ulid(1_700_000_000.5) for _ in range(5_000))

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        try:
            threads = [threading.Thread(target=make, args=(out,)) for out in ids]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        made = [value for out in ids for value in out]
        assert len(made) == 40_000
        assert len(set(made)) == 40_000

    def test_random_part_varies(self) -> None:
        randoms = {new_ulid(1.0)[10:] for _ in range(100)}
        assert len(randoms) == 100

    def test_forked_child_does_not_repeat_the_parent(self) -> None:
        # Forked in a fresh interpreter, so this test process (and its threads) never forks.
        program = textwrap.dedent(
            """
            import json, os, sys
            from customerio_logging._wire import new_ulid

            T = 1_700_000_000.5
            new_ulid(T)  # the generator has state before the fork
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                ids = [new_ulid(T) for _ in range(200)]
                os.write(write_end, json.dumps(ids).encode())
                os._exit(0)
            os.close(write_end)
            parent = [new_ulid(T) for _ in range(200)]
            chunks = []
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
            child = json.loads(b"".join(chunks))
            print(json.dumps({"parent": parent, "child": child, "status": status}))
            """
        )
        result = run_python("-c", program, timeout=60, check=True)
        report = json.loads(result.stdout)
        assert report["status"] == 0
        parent, child = report["parent"], report["child"]
        assert len(parent) == len(child) == 200
        assert not set(parent) & set(child)
        assert parent[0] != child[0]
        for value in child:
            assert ULID.from_str(value).milliseconds == 1_700_000_000_500


class TestStatusPhrase:
    @pytest.mark.parametrize(
        ("status", "phrase"),
        [
            (200, "OK"),
            (207, "Multi-Status"),
            (404, "Not Found"),
            (429, "Too Many Requests"),
            (503, "Service Unavailable"),
            (299, ""),  # a status HTTP does not name
            (999, ""),
        ],
    )
    def test_the_phrase_http_gives_a_status(self, status: int, phrase: str) -> None:
        assert status_phrase(status) == phrase
