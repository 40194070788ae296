"""The dispatcher alone: batching by count, bytes and time; flush; stop; the bounded queue."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from customerio_logging._dispatch import THREAD_NAME, Dispatcher
from customerio_logging._wire import BODY_OVERHEAD, Operation


def _op(i: int, size: int = 10) -> Operation:
    return Operation(id=f"{i:026d}", action="event", name="e", body=b"x" * size)


class Recorder:
    """A `send` that records batches, optionally held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[Operation]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: list[Operation]) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(batch))

    @property
    def ops(self) -> list[Operation]:
        return [op for batch in self.batches for op in batch]


def _dispatcher(send: Recorder, **kwargs: object) -> Dispatcher[Operation]:
    options: dict[str, object] = {
        "process": lambda op: op,
        "send": send,
        "batch_size": 10,
        "flush_interval": 60.0,
        "max_queue_size": 1000,
    }
    options.update(kwargs)
    return Dispatcher(**options)  # type: ignore[arg-type]


class TestBatching:
    def test_full_batches_go_without_waiting_for_the_interval(self) -> None:
        send = Recorder()
        dispatcher = _dispatcher(send, batch_size=10, flush_interval=60.0)
        dispatcher.start()
        for i in range(30):
            assert dispatcher.submit(_op(i))
        assert dispatcher.flush(5.0)
        assert [len(b) for b in send.batches] == [10, 10, 10]
        assert [op.id for op in send.ops] == [_op(i).id for i in range(30)]
        dispatcher.stop(1.0)

    def test_a_partial_batch_goes_after_flush_interval(self) -> None:
        send = Recorder()
        dispatcher = _dispatcher(send, batch_size=100, flush_interval=0.05)
        dispatcher.start()
        dispatcher.submit(_op(1))
        assert send.entered.wait(5.0), "the interval never sent the partial batch"
        assert len(send.ops) == 1
        dispatcher.stop(1.0)

    def test_rejected_items_are_not_batched(self) -> None:
        send = Recorder()
        dispatcher = _dispatcher(send, process=lambda op: None if int(op.id) % 2 else op)
        dispatcher.start()
        for i in range(10):
            dispatcher.submit(_op(i))
        assert dispatcher.flush(5.0)
        assert [int(op.id) for op in send.ops] == [0, 2, 4, 6, 8]
        assert dispatcher.taken == 10
        dispatcher.stop(1.0)

    def test_a_crashing_process_or_send_does_not_kill_the_thread(self) -> None:
        def process(op: Operation) -> Operation:
            if op.id.endswith("3"):
                raise RuntimeError("boom")
            return op

        calls: list[int] = []

        def send(batch: list[Operation]) -> None:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("boom")

        dispatcher = Dispatcher(
            process=process, send=send, batch_size=2, flush_interval=60.0, max_queue_size=100
        )
        dispatcher.start()
        for i in range(6):
            dispatcher.submit(_op(i))
        assert dispatcher.flush(5.0)
        assert dispatcher.thread is not None
        assert dispatcher.thread.is_alive()
        assert sum(calls) == 5
        dispatcher.stop(1.0)

    @settings(max_examples=60, deadline=None)
    @given(
        sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=120),
        batch_size=st.integers(min_value=1, max_value=50),
        body_limit=st.integers(min_value=400 + BODY_OVERHEAD, max_value=3000),
    )
    def test_batches_never_lose_duplicate_or_overflow(
        self, sizes: list[int], batch_size: int, body_limit: int
    ) -> None:
        send = Recorder()
        dispatcher = _dispatcher(
            send, batch_size=batch_size, body_limit=body_limit, max_queue_size=len(sizes)
        )
        dispatcher.start()
        for i, size in enumerate(sizes):
            assert dispatcher.submit(_op(i, size))
        assert dispatcher.flush(10.0)
        dispatcher.stop(1.0)
        assert [int(op.id) for op in send.ops] == list(range(len(sizes)))
        for batch in send.batches:
            assert 1 <= len(batch) <= batch_size
            body = BODY_OVERHEAD + sum(len(op.body) for op in batch) + len(batch) - 1
            assert body <= body_limit


class TestQueue:
    def test_submit_refuses_when_full_and_never_blocks(self) -> None:
        send = Recorder()
        send.gate.clear()  # hold the first batch in "the network"
        dispatcher = _dispatcher(send, batch_size=1, max_queue_size=5)
        dispatcher.start()
        assert dispatcher.submit(_op(0))
        assert send.entered.wait(5.0)
        accepted = [dispatcher.submit(_op(i)) for i in range(1, 20)]
        assert accepted == [True] * 5 + [False] * 14
        assert dispatcher.depth == 6  # five queued and one in the held batch
        send.gate.set()
        assert dispatcher.flush(5.0)
        assert len(send.ops) == 6
        dispatcher.stop(1.0)

    def test_the_thread_is_named_and_a_daemon(self) -> None:
        dispatcher = _dispatcher(Recorder())
        dispatcher.start()
        dispatcher.start()  # idempotent
        thread = dispatcher.thread
        assert thread is not None
        assert thread.name == THREAD_NAME
        assert thread.daemon
        dispatcher.stop(1.0)
        assert not thread.is_alive()


class TestFlushAndStop:
    def test_flush_times_out_while_the_network_hangs(self) -> None:
        send = Recorder()
        send.gate.clear()
        dispatcher = _dispatcher(send)
        dispatcher.start()
        dispatcher.submit(_op(0))
        assert dispatcher.flush(0.05) is False
        send.gate.set()
        assert dispatcher.flush(5.0) is True
        dispatcher.stop(1.0)

    def test_flush_without_a_thread_reports_whether_anything_waits(self) -> None:
        dispatcher = _dispatcher(Recorder())
        assert dispatcher.flush(0.1) is True
        dispatcher.submit(_op(0))
        assert dispatcher.flush(0.1) is False

    def test_stop_returns_what_could_not_be_sent_within_the_deadline(self) -> None:
        send = Recorder()
        send.gate.clear()
        dispatcher = _dispatcher(send, batch_size=1)
        dispatcher.start()
        for i in range(4):
            dispatcher.submit(_op(i))
        assert send.entered.wait(5.0)
        left = dispatcher.stop(0.1)
        assert [int(op.id) for op in left] == [1, 2, 3]
        assert dispatcher.submit(_op(9)) is False
        send.gate.set()

    def test_stop_is_idempotent_and_flush_after_stop_returns_at_once(self) -> None:
        send = Recorder()
        dispatcher = _dispatcher(send)
        dispatcher.start()
        dispatcher.submit(_op(0))
        assert dispatcher.stop(5.0) == []
        assert dispatcher.stop(5.0) == []
        assert dispatcher.flush(5.0) is True
        assert len(send.ops) == 1


class TestStopWhileTheThreadIsBusy:
    def test_draining_beside_the_thread_never_kills_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # stop() with a reserve drains the queue while the thread still empties it.
        # Before the fix the thread's `while queue: queue.popleft()` could lose the race
        # and die of IndexError, its batch never settled (9 stops in 100 here).
        died: list[str] = []
        monkeypatch.setattr(threading, "excepthook", lambda args: died.append(str(args)))
        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often: the window is a few bytecodes
        op = Operation("01", "event", "x", b"{}")
        unsettled = 0
        try:
            for _ in range(60):
                dispatcher: Dispatcher[int] = Dispatcher(
                    process=lambda item: op,
                    send=lambda ops: None,
                    batch_size=10**9,
                    flush_interval=60,
                    max_queue_size=10**9,
                )
                dispatcher.start()
                for _ in range(200_000):
                    dispatcher.submit(1)
                dispatcher.request_flush()  # the thread starts taking items
                time.sleep(0.005)  # and is busy with them when stop() comes
                dispatcher.stop(0.1, reserve=lambda queued: 0.1)  # sending stops at once
                assert dispatcher.thread is not None
                dispatcher.thread.join(5)
                unsettled += dispatcher.depth > 0
        finally:
            sys.setswitchinterval(previous)
        assert died == []
        assert unsettled == 0
