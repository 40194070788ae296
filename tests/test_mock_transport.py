"""customerio_logging.testing.MockTransport: a scripted transport apps can test with."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging._wire import Operation, batch_body
from customerio_logging.exceptions import DeliveryError
from customerio_logging.testing import MockTransport, Response


def _body(*names: str) -> bytes:
    ops = [
        Operation(f"id{i}", "event", name, json.dumps({"name": name}).encode())
        for i, name in enumerate(names)
    ]
    return batch_body(ops)


class TestMockTransport:
    def test_accepts_everything_by_default(self) -> None:
        transport = MockTransport()
        assert transport.send(_body("a")).status == 200
        assert transport.send(_body("b")).status == 200
        assert transport.bodies == [_body("a"), _body("b")]

    def test_answers_in_order_and_the_last_repeats(self) -> None:
        transport = MockTransport(Response(503), Response(429), Response(200))
        statuses = [transport.send(_body("x")).status for _ in range(5)]
        assert statuses == [503, 429, 200, 200, 200]

    def test_an_exception_is_raised(self) -> None:
        transport = MockTransport(DeliveryError("connection reset"), Response(200))
        with pytest.raises(DeliveryError, match="connection reset"):
            transport.send(_body("x"))
        assert transport.send(_body("x")).status == 200
        assert len(transport.bodies) == 2  # a failed send is recorded too

    def test_a_function_answers_from_the_operations(self) -> None:
        def answer(ops: list[dict[str, Any]]) -> Response:
            return Response(400) if any(op["name"] == "bad" for op in ops) else Response(200)

        transport = MockTransport(answer)
        assert transport.send(_body("good")).status == 200
        assert transport.send(_body("good", "bad")).status == 400

    def test_operations_are_parsed(self) -> None:
        transport = MockTransport()
        transport.send(_body("a", "b"))
        transport.send(_body("c"))
        assert [op["name"] for op in transport.operations] == ["a", "b", "c"]

    def test_close_is_remembered(self) -> None:
        transport = MockTransport()
        assert not transport.closed
        transport.close()
        assert transport.closed

    def test_concurrent_sends_are_all_recorded(self) -> None:
        transport = MockTransport(Response(500), Response(200))
        threads = [
            threading.Thread(target=lambda: [transport.send(_body("t")) for _ in range(200)])
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(transport.bodies) == 800

    def test_drives_a_configured_bridge(self) -> None:
        transport = MockTransport(Response(503), Response(200))
        bridge = cio.configure(
            site_id="site",
            api_key="key",
            transport=transport,
            spool_path=False,
            retry_base_delay=0.01,
            flush_interval=0.05,
        )
        handler = cio.CustomerIOHandler()
        record = logging.makeLogRecord(
            {"msg": "signup", "cio_event": True, "user_id": "u1", "plan": "pro"}
        )
        handler.handle(record)
        assert bridge.flush(5.0)
        assert bridge.stats().sent == 1
        assert bridge.stats().retried == 1
        (op,) = {json.dumps(o, sort_keys=True): o for o in transport.operations}.values()
        assert (op["name"], op["identifiers"], op["attributes"]) == (
            "signup",
            {"id": "u1"},
            {"plan": "pro"},
        )
        cio.shutdown(1.0)
        assert transport.closed
