"""The direct API: cio.track(...) and friends, on the log path's pipeline, with receipts."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field
from ulid import ULID

import customerio_logging as cio
from customerio_logging import _receipt
from customerio_logging.exceptions import DeliveryError
from customerio_logging.testing import FaultPlan, MockTransport, Response, TrackAPIEmulator

from .helpers import (
    GatedTransport,
    balanced,
    closed_port_url,
    in_fork,
    program,
    run_python,
    spool_pending,
    wait_until,
    write_locked,
)


class PlanChanged(cio.Event, name="plan_changed"):
    from_: str
    to: Literal["free", "starter", "pro", "enterprise"]
    mrr: float


class Customer(cio.UserAttributes):
    email: str
    plan: str


def _wire(emulator: TrackAPIEmulator, receipt: cio.Receipt) -> dict[str, Any]:
    """The one operation the emulator accepted for ``receipt`` (named actions carry its
    id; for the others, the only one of its action)."""
    ops = [op for op in emulator.operations if op.get("id") == receipt.id]
    assert len(ops) == 1, ops
    return ops[0]


# (the call, the operation the emulator must have received, without id and timestamp)
CALLS: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "typed event",
        lambda: cio.track("u1", PlanChanged(from_="free", to="pro", mrr=49.0)),
        {
            "identifiers": {"id": "u1"},
            "action": "event",
            "name": "plan_changed",
            "attributes": {"from": "free", "to": "pro", "mrr": 49.0},
        },
    ),
    (
        "named event, int id",
        lambda: cio.track(42, "signed_up", plan="pro"),
        {
            "identifiers": {"id": "42"},
            "action": "event",
            "name": "signed_up",
            "attributes": {"plan": "pro"},
        },
    ),
    (
        "by email",
        lambda: cio.track({"email": "a@example.com"}, "signed_up"),
        {"identifiers": {"email": "a@example.com"}, "action": "event", "name": "signed_up"},
    ),
    (
        "anonymous",
        lambda: cio.track_anonymous("anon-7", "page_viewed", url="/pricing"),
        {
            "identifiers": {"anonymous_id": "anon-7"},
            "action": "event",
            "name": "page_viewed",
            "attributes": {"url": "/pricing"},
        },
    ),
    (
        "page",
        lambda: cio.page("u1", "/pricing", referrer="ads"),
        {
            "identifiers": {"id": "u1"},
            "action": "page",
            "name": "/pricing",
            "attributes": {"referrer": "ads"},
        },
    ),
    (
        "screen",
        lambda: cio.screen("u1", "Settings"),
        {"identifiers": {"id": "u1"}, "action": "screen", "name": "Settings"},
    ),
]

UNNAMED: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "identify",
        lambda: cio.identify("u1", Customer(email="a@example.com", plan="pro"), vip=True),
        {
            "identifiers": {"id": "u1"},
            "action": "identify",
            "attributes": {"email": "a@example.com", "plan": "pro", "vip": True},
        },
    ),
    ("suppress", lambda: cio.suppress("u1"), {"identifiers": {"id": "u1"}, "action": "suppress"}),
    (
        "unsuppress",
        lambda: cio.unsuppress("u1"),
        {"identifiers": {"id": "u1"}, "action": "unsuppress"},
    ),
    ("delete", lambda: cio.delete({"cio_id": "c9"}), {"identifiers": {"cio_id": "c9"}}),
    (
        "add_device",
        lambda: cio.add_device("u1", "tok-1", platform="android"),
        {"action": "add_device", "device": {"token": "tok-1", "platform": "android"}},
    ),
    (
        "delete_device",
        lambda: cio.delete_device("u1", "tok-1"),
        {"action": "delete_device", "device": {"token": "tok-1"}},
    ),
    (
        "merge",
        lambda: cio.merge(primary={"id": "u1"}, secondary={"email": "a@example.com"}),
        {"action": "merge", "primary": {"id": "u1"}, "secondary": {"email": "a@example.com"}},
    ),
]


class TestWireShape:
    @pytest.mark.parametrize(("label", "call", "expected"), CALLS, ids=[c[0] for c in CALLS])
    def test_named_actions(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        label: str,
        call: Any,
        expected: dict[str, Any],
    ) -> None:
        cio.configure(**settings)
        receipt = call()
        assert receipt.result(5.0) == cio.Outcome("sent")
        op = _wire(emulator, receipt)
        assert ULID.from_str(receipt.id)
        assert isinstance(op.pop("timestamp"), int)
        op.pop("id")
        assert op == {"type": "person", **expected}

    @pytest.mark.parametrize(("label", "call", "expected"), UNNAMED, ids=[c[0] for c in UNNAMED])
    def test_other_actions(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        label: str,
        call: Any,
        expected: dict[str, Any],
    ) -> None:
        cio.configure(**settings)
        receipt = call()
        assert receipt.result(5.0).status == "sent"
        (op,) = emulator.operations
        op.pop("timestamp", None)
        if "device" in op:
            op["device"].pop("last_used", None)
        assert {key: op[key] for key in expected} == expected

    def test_the_same_calls_exist_on_the_bridge(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        bridge = cio.configure(**settings)
        receipt = bridge.track("u1", "signed_up", plan="pro")
        assert receipt.result(5.0).status == "sent"
        assert _wire(emulator, receipt)["attributes"] == {"plan": "pro"}


class Paid(cio.Event, name="order_paid"):
    amount: float
    customer_id: str  # a payment provider's id: data, not the person


class Aliased(cio.Event, name="aliased"):
    plan_name: str = Field(alias="planName")


# (a direct call whose data has keys a log call reads as the person or the action, and
# the identifiers, action and attributes the Track API must get)
DATA_STAYS_DATA: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "customer_id attribute",
        lambda: cio.track("u1", "order_paid", amount=3, customer_id="cus_9"),
        {
            "identifiers": {"id": "u1"},
            "action": "event",
            "attributes": {"amount": 3, "customer_id": "cus_9"},
        },
    ),
    (
        "typed customer_id, person by email",
        lambda: cio.track({"email": "a@example.com"}, Paid(amount=3, customer_id="cus_9")),
        {
            "identifiers": {"email": "a@example.com"},
            "action": "event",
            "attributes": {"amount": 3.0, "customer_id": "cus_9"},
        },
    ),
    (
        "cio_action attribute",
        lambda: cio.track("u1", "imported", cio_action="delete"),
        {"identifiers": {"id": "u1"}, "action": "event", "attributes": {"cio_action": "delete"}},
    ),
    (
        "anonymous with user_id attribute",
        lambda: cio.track_anonymous("anon-7", "viewed", user_id="u1"),
        {
            "identifiers": {"anonymous_id": "anon-7"},
            "action": "event",
            "attributes": {"user_id": "u1"},
        },
    ),
    (
        "identify by cio_id, new email",
        lambda: cio.identify({"cio_id": "c1"}, email="new@example.com"),
        {
            "identifiers": {"cio_id": "c1"},
            "action": "identify",
            "attributes": {"email": "new@example.com"},
        },
    ),
    (
        "identify by email, new email",
        lambda: cio.identify({"email": "old@example.com"}, email="new@example.com"),
        {
            "identifiers": {"email": "old@example.com"},
            "action": "identify",
            "attributes": {"email": "new@example.com"},
        },
    ),
    (
        "an aliased field, not declared",
        lambda: cio.track("u1", Aliased(planName="pro")),
        {"identifiers": {"id": "u1"}, "action": "event", "attributes": {"planName": "pro"}},
    ),
]


class TestDataStaysData:
    """The person and the action are the call's arguments: before the fix, data keys a
    log call reads as the person or the action overrode them (cio_action="delete"
    deleted the person; customer_id= was dropped or became the person)."""

    @pytest.mark.parametrize(
        ("label", "call", "expected"), DATA_STAYS_DATA, ids=[c[0] for c in DATA_STAYS_DATA]
    )
    def test_the_person_and_action_are_the_calls(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        label: str,
        call: Any,
        expected: dict[str, Any],
    ) -> None:
        cio.configure(**settings)
        receipt = call()
        assert receipt.result(5.0) == cio.Outcome("sent")
        (op,) = emulator.operations
        assert {key: op.get(key) for key in expected} == expected

    def test_an_unknown_event_warning_names_events_only(
        self,
        settings: dict[str, Any],
        emulator: TrackAPIEmulator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        cio.configure(**settings, events=[PlanChanged], unknown_events="warn")
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            cio.page("u1", "/pricing").result(5.0)
            cio.track("u1", "not_declared").result(5.0)
        assert "/pricing" not in caplog.text
        assert "'not_declared' is not declared" in caplog.text


class TestFork:
    def test_a_child_forked_while_a_receipt_resolves_still_resolves_its_own(
        self, settings: dict[str, Any]
    ) -> None:
        # Before the fix the receipts' one lock, held by a parent thread at the fork,
        # stayed held in the child: result(2.0) there hung for ever.
        cio.configure(**settings)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with _receipt._lock:
                held.set()
                release.wait(10.0)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(5.0)
        try:
            code, status = in_fork(
                lambda: cio.track("u1", "in_child").result(2.0).status, timeout=10.0
            )
        finally:
            release.set()
            holder.join(5.0)
        assert (code, status) == (0, "sent")

    def test_strict_after_a_fork_that_bypassed_the_hooks_still_resolves(
        self, settings: dict[str, Any]
    ) -> None:
        # Before the fix the strict call registered its receipt, then the submit's
        # fork check reset the sender (and its receipts): it never resolved.
        bridge = cio.configure(**settings, strict=True)
        bridge.track("u1", "warm").result(5.0)
        bridge._pid = -1  # as in a child forked without os.fork's hooks
        assert bridge.track("u1", "after").result(5.0).status == "sent"

    def test_a_child_forked_without_the_hooks_never_reuses_its_parents_next_id(
        self, emulator: TrackAPIEmulator
    ) -> None:
        # A direct call's id is made before the bridge notices the fork: it took the next
        # random part the parent had drawn ahead, which the parent then used as well (the
        # same id for two events within one millisecond: the API drops one as a duplicate).
        code = textwrap.dedent(
            """
            import ctypes, os
            import customerio_logging as cio
            from customerio_logging import _wire

            cio.configure(flush_interval=60.0, spool_path=False)
            cio.track("u1", "warm")  # random parts drawn ahead, in the parent
            read, write = os.pipe()
            pid = ctypes.PyDLL(None).fork()  # libc's fork(): no at-fork hook runs
            if pid == 0:
                receipt = cio.track("u1", "in_child")
                os.write(write, receipt.id[10:].encode())
                cio.flush(5.0)
                os._exit(0)
            os.waitpid(pid, 0)
            child = os.read(read, 64).decode()
            print("repeated" if child == _wire.new_ulid(0.0)[10:] else "fresh")
            """
        )
        result = run_python("-c", code, emulator=emulator, check=True)
        assert result.stdout.split() == ["fresh"]


class TestOutcomes:
    def test_an_invalid_event_resolves_invalid_with_its_field(
        self, settings: dict[str, Any]
    ) -> None:
        cio.configure(**settings)
        receipt = cio.track("u1", "x" * 200)
        outcome = receipt.result(5.0)
        assert (outcome.status, outcome.reason, outcome.field) == (
            "invalid",
            "name_too_long",
            "name",
        )
        assert not outcome.ok
        assert cio.stats().invalid == 1

    def test_a_declared_event_that_does_not_match_is_invalid(
        self, settings: dict[str, Any]
    ) -> None:
        cio.configure(**settings, events=[PlanChanged])
        receipt = cio.track("u1", "plan_changed", to="gold", mrr=1.0)
        outcome = receipt.result(5.0)
        assert (outcome.status, outcome.reason) == ("invalid", "schema_mismatch")
        assert outcome.field is not None

    def test_an_operation_the_api_refuses_is_dead_lettered_with_its_reason(
        self, settings: dict[str, Any], emulator: TrackAPIEmulator
    ) -> None:
        refuse = FaultPlan(reject_ops=lambda op: "bad_name" if op.get("name") == "nope" else None)
        emulator.set_faults(refuse)
        cio.configure(**settings)
        refused, accepted = cio.track("u1", "nope"), cio.track("u1", "fine")
        outcome = refused.result(5.0)
        assert (outcome.status, outcome.reason) == ("dead_lettered", "bad_name")
        assert accepted.result(5.0).status == "sent"

    def test_with_the_api_down_and_a_spool_they_resolve_spooled_at_shutdown(
        self, tmp_path: Path
    ) -> None:
        cio.configure(
            site_id="s",
            api_key="k",
            track_url=closed_port_url(),
            spool_path=tmp_path / "spool.db",
            retry_base_delay=0.05,
            shutdown_timeout=1.0,
            install_signal_handlers=False,
        )
        receipts = [cio.track("u1", "signed_up", n=i) for i in range(5)]
        cio.shutdown(1.0)
        assert {r.result(0.0).status for r in receipts} == {"spooled"}
        assert balanced(cio.stats())

    def test_without_a_spool_a_full_queue_drops(self) -> None:
        gate = GatedTransport(Response(200))
        cio.configure(
            site_id="s",
            api_key="k",
            transport=gate,
            spool_path=False,
            batch_size=1,
            max_queue_size=1,
            flush_interval=0.01,
            install_signal_handlers=False,
        )
        first = cio.track("u1", "a")
        assert gate.entered.wait(5.0)  # the first batch is on the wire, the queue empty
        cio.track("u1", "b")  # queued
        dropped = cio.track("u1", "c")  # the queue is full
        outcome = dropped.result(0.0)
        assert (outcome.status, outcome.reason) == ("dropped", "queue")
        gate.gate.set()
        assert first.result(5.0).status == "sent"

    def test_without_a_spool_a_batch_that_cannot_be_sent_fails(self) -> None:
        down = MockTransport(DeliveryError("connection refused"))
        cio.configure(
            site_id="s",
            api_key="k",
            transport=down,
            spool_path=False,
            max_retries=0,
            install_signal_handlers=False,
        )
        outcome = cio.track("u1", "a").result(5.0)
        assert (outcome.status, outcome.reason) == ("failed", "network_error")


class TestReceipt:
    def test_result_times_out_while_the_batch_waits(self) -> None:
        gate = GatedTransport(Response(200))
        cio.configure(
            site_id="s",
            api_key="k",
            transport=gate,
            spool_path=False,
            flush_interval=0.01,
            install_signal_handlers=False,
        )
        receipt = cio.track("u1", "a")
        assert gate.entered.wait(5.0)
        assert not receipt.done()
        with pytest.raises(TimeoutError):
            receipt.result(0.05)
        gate.gate.set()
        assert receipt.result(5.0).status == "sent"
        assert receipt.done()
        assert "sent" in repr(receipt)

    def test_callbacks_run_once_whether_added_before_or_after(self) -> None:
        gate = GatedTransport(Response(200))
        cio.configure(
            site_id="s",
            api_key="k",
            transport=gate,
            spool_path=False,
            flush_interval=0.01,
            install_signal_handlers=False,
        )
        receipt = cio.track("u1", "a")
        seen: list[str] = []
        receipt.add_done_callback(lambda r: seen.append(f"before:{r.result(0).status}"))
        receipt.add_done_callback(lambda r: 1 / 0)  # a broken callback harms nothing
        gate.gate.set()
        receipt.result(5.0)
        receipt.add_done_callback(lambda r: seen.append("after"))
        assert seen == ["before:sent", "after"]

    def test_await_does_not_block_the_event_loop(self) -> None:
        gate = GatedTransport(Response(200))
        cio.configure(
            site_id="s",
            api_key="k",
            transport=gate,
            spool_path=False,
            flush_interval=0.01,
            install_signal_handlers=False,
        )

        async def main() -> tuple[cio.Outcome, int]:
            receipt = cio.track("u1", "a")
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while not receipt.done():
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            threading.Timer(0.2, gate.gate.set).start()
            outcome = await asyncio.wait_for(receipt, 5.0)
            await ticker
            return outcome, ticks

        outcome, ticks = asyncio.run(main())
        assert outcome.status == "sent"
        assert ticks >= 5  # the loop kept running while the receipt was pending

    def test_an_already_resolved_receipt_awaits_at_once(self, settings: dict[str, Any]) -> None:
        cio.configure(**settings)
        receipt = cio.track("u1", "x" * 200)  # resolved on the dispatch thread, invalid
        receipt.result(5.0)
        assert asyncio.run(_await(receipt)).status == "invalid"


async def _await(receipt: cio.Receipt) -> cio.Outcome:
    return await receipt


class TestStrict:
    def test_invalid_input_raises_at_the_call(self, settings: dict[str, Any]) -> None:
        cio.configure(**settings, strict=True)
        with pytest.raises(cio.InvalidEventError) as caught:
            cio.track("u1", "x" * 200)
        assert caught.value.reason == "name_too_long"
        assert cio.stats().enqueued == 0

    def test_valid_input_is_sent(self, settings: dict[str, Any]) -> None:
        cio.configure(**settings, strict=True, events=[PlanChanged])
        receipt = cio.track("u1", PlanChanged(from_="free", to="pro", mrr=1.0))
        assert receipt.result(5.0).status == "sent"

    def test_strict_must_be_a_bool(self) -> None:
        with pytest.raises(cio.ConfigurationError, match="strict"):
            cio.configure(site_id="s", api_key="k", strict="yes")


class TestCost:
    def test_a_receipt_nobody_looks_at_holds_no_lock_or_event(self) -> None:
        receipt = cio.Receipt("01HF0000000000000000000000")
        assert not hasattr(receipt, "__dict__")
        receipt.resolve(cio.Outcome("sent"))
        assert receipt._event is None
        assert receipt._callbacks is None


TYPED = """
from typing import Literal
import customerio_logging as cio

class PlanChanged(cio.Event, name="plan_changed"):
    to: Literal["free", "pro"]
    mrr: float

receipt: cio.Receipt = cio.track("u1", PlanChanged(to={to}, mrr={mrr}))
"""


class TestTyping:
    """Under mypy --strict, a wrong type in an event is an error at the call site."""

    @pytest.mark.parametrize(
        ("to", "mrr", "errors"),
        [('"pro"', "49.0", 0), ('"gold"', "49.0", 1), ('"pro"', '"lots"', 1)],
    )
    def test_mypy_checks_the_event(self, tmp_path: Path, to: str, mrr: str, errors: int) -> None:
        snippet = tmp_path / "snippet.py"
        text = textwrap.dedent(TYPED.format(to=to, mrr=mrr))
        snippet.write_text(text)
        call = next(n for n, line in enumerate(text.splitlines(), 1) if "cio.track(" in line)
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        found = [line for line in result.stdout.splitlines() if ": error:" in line]
        assert len(found) == errors, result.stdout
        if errors:
            assert f"snippet.py:{call}: error:" in found[0]
            assert "PlanChanged" in found[0]


def test_time_is_taken_at_the_call(settings: dict[str, Any], emulator: TrackAPIEmulator) -> None:
    cio.configure(**settings)
    before = time.time()
    receipt = cio.track("u1", "a")
    receipt.result(5.0)
    assert int(before) <= _wire(emulator, receipt)["timestamp"] <= int(time.time())


class TestSeparateProgram:
    """tests/programs/direct_app.py: every direct call from another process, its receipts
    awaited in asyncio."""

    def test_every_call_resolves_with_its_outcome(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(
            FaultPlan(
                reject_ops=lambda op: (
                    "rejected_name" if op.get("name") == "refused_by_the_api" else None
                )
            )
        )
        result = run_python(program("direct_app"), "up", emulator=emulator, check=True)
        outcomes = json.loads(result.stdout.splitlines()[-1])
        invalid, refused = outcomes.pop("invalid"), outcomes.pop("refused")
        assert invalid[:3] == ["invalid", "schema_mismatch", "attributes.to"]
        assert refused[:2] == ["dead_lettered", "rejected_name"]
        assert {label: o[0] for label, o in outcomes.items()} == dict.fromkeys(outcomes, "sent")
        actions = Counter(op["action"] for op in emulator.operations)
        assert actions == Counter(
            {"event": 3, "identify": 1, "page": 1, "screen": 1, "suppress": 1,
             "unsuppress": 1, "delete": 1, "add_device": 1, "delete_device": 1, "merge": 1}
        )  # fmt: skip
        wire_ids = {op.get("id") for op in emulator.operations}
        for label in ("track", "track_name", "track_anonymous", "page", "screen"):
            assert outcomes[label][3] in wire_ids, label
        (plan,) = [op for op in emulator.operations if op.get("name") == "plan_changed"]
        assert plan["attributes"] == {"from": "free", "to": "pro", "mrr": 49.0}

    def test_with_the_api_down_they_resolve_spooled_at_the_deadline(self, tmp_path: Path) -> None:
        env = {
            "CUSTOMERIO_SITE_ID": "s",
            "CUSTOMERIO_TRACK_API_KEY": "k",
            "CUSTOMERIO_TRACK_URL": closed_port_url(),
            "CUSTOMERIO_SPOOL_PATH": str(tmp_path / "spool.db"),
        }
        result = run_python(program("direct_app"), "down", env=env, check=True)
        outcomes = json.loads(result.stdout.splitlines()[-1])
        assert {o[0] for o in outcomes.values()} == {"spooled"}
        assert spool_pending(tmp_path / "spool.db") == len(outcomes)


class TestSettledLate:
    def test_an_event_a_busy_spool_deferred_is_dropped_not_spooled_when_it_never_gets_written(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "spool.db"
        bridge = cio.configure(
            site_id="s",
            api_key="k",
            track_url=closed_port_url(),
            spool_path=path,
            max_retries=0,
            flush_interval=0.05,
            install_signal_handlers=False,
        )
        assert bridge.spool is not None
        bridge.spool.prepare()
        with write_locked(path):
            receipt = cio.track("u1", "signed_up")
            assert wait_until(lambda: cio.stats().deferred == 1, 10.0)  # waits in memory
            assert not receipt.done()  # not on disk yet: not "spooled"
            cio.shutdown(0.5)  # the spool is still held: the event is lost, and said so
        outcome = receipt.result(0)
        assert (outcome.status, outcome.reason) == ("dropped", "spool_busy")
        assert cio.stats().dropped == 1

    def test_a_callback_that_exits_does_not_stop_the_pipeline(self) -> None:
        cio.configure(
            site_id="s",
            api_key="k",
            transport=MockTransport(),
            spool_path=False,
            flush_interval=0.01,
            install_signal_handlers=False,
        )
        first = cio.track("u1", "a")
        first.add_done_callback(lambda r: sys.exit(1))
        assert first.result(5.0).status == "sent"
        assert cio.track("u1", "b").result(5.0).status == "sent"  # the thread lives on
        assert cio.get_bridge().thread is not None
        assert cio.get_bridge().thread.is_alive()
