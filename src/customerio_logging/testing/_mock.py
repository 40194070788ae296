"""MockTransport: answers the bridge's batches in memory, without a network or a server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

from customerio_logging._wire import Response

__all__ = ["Answer", "MockTransport"]

Answer: TypeAlias = (
    "Response | BaseException | Callable[[list[dict[str, Any]]], Response | BaseException]"
)
"""What a ``MockTransport`` answers a batch with: a response, an exception to raise, or a
function of the batch's operations that returns either."""


class MockTransport:
    """A transport for tests, in the spirit of ``httpx.MockTransport``.

    ``configure(transport=MockTransport())`` accepts every batch (HTTP 200) and keeps
    what was sent. Give answers to script something else: they are used in order, and
    the last one repeats::

        from customerio_logging.exceptions import DeliveryError
        from customerio_logging.testing import MockTransport, Response

        flaky = MockTransport(DeliveryError("connection reset"), Response(200))
        refuse_signups = MockTransport(
            lambda ops: Response(400) if ops[0].get("name") == "signup" else Response(200)
        )

    A network failure is a raised ``DeliveryError`` (no response came); any status is a
    ``Response``. Safe to use from the dispatch thread and the test's thread at once.

    Attributes:
        bodies: Every batch body sent, in order.
        closed: True once the bridge closed the transport.
    """

    def __init__(self, *answers: Answer) -> None:
        self._answers: list[Answer] = list(answers) or [Response(200)]
        self._lock = threading.Lock()
        self.bodies: list[bytes] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<MockTransport batches={len(self.bodies)}>"

    @property
    def operations(self) -> list[dict[str, Any]]:
        """Every operation sent, in order, as parsed JSON (resends included)."""
        with self._lock:
            bodies = list(self.bodies)
        return [op for body in bodies for op in json.loads(body)["batch"]]

    def send(self, body: bytes) -> Response:
        """Record ``body`` and answer it with the next answer (the last repeats)."""
        with self._lock:
            self.bodies.append(body)
            answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if callable(answer) and not isinstance(answer, BaseException | Response):
            answer = answer(json.loads(body)["batch"])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        """Remember that the bridge closed it (it can still answer afterwards)."""
        self.closed = True
