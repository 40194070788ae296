"""What the emulator keeps of the requests it answers: each request, the operations and
messages it accepted (with when and through which route, also written to the dump), the
operations it refused; and the waits on them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._control import is_control
from ._dump import Dump
from ._endpoints import Route
from ._http import Reply, Request

__all__ = ["RecordedRequest", "Recorder"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request the emulator received, answered or dropped.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request target as sent, query string included.
        status: The status code the emulator answered with; 0 when it closed the connection
            without answering (a ``"drop"`` or ``"drop_after_accept"`` fault, or a delayed
            answer cut short by ``stop()``). A trickled answer is recorded with its status
            before its first byte leaves.
        op_count: How many operations the request carried (the batch length, 1 for the v1
            endpoints), accepted or not; 0 when the body could not be read as operations.
        body_bytes: The size of the request body in bytes.
        errors: The error objects of the answer (per operation for a 207, for the whole
            request otherwise); empty on success. For ``"drop_after_accept"`` they are those
            of the answer that was never sent.
        fault: The fault of the ``FaultPlan`` that shaped the answer, or None for a normal
            one: ``"script"`` (a scripted status), ``"failure_rate"``, ``"rate_limit"``,
            ``"drop"``, ``"drop_after_accept"`` (scripted or drawn), ``"max_request_bytes"``,
            ``"reject_ops"``, ``"trickle"`` (a normal answer, sent a byte at a time) or
            ``"delay"`` (a normal answer, sent late).
        received_at: When the request was read whole (Unix seconds), before it was
            answered: the times a rate is measured by. Not compared by ``==``.

    Requests for the emulator's own ``/_emulator/`` paths are not recorded.
    """

    method: str
    path: str
    status: int
    op_count: int
    body_bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    fault: str | None = None
    received_at: float = field(default=0.0, compare=False)


class Recorder:
    """The emulator's records, safe to read and add to from any thread.

    Args:
        dump: A file to append each accepted record to (see ``Dump``); None for none.
    """

    def __init__(self, dump: str | os.PathLike[str] | None) -> None:
        self._state = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._operations: list[dict[str, Any]] = []
        self._transactional: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        # The two lists of what was accepted, merged in arrival order, each entry with when
        # and through which route it arrived: what the dump and GET /_emulator/operations give.
        self._accepted: list[dict[str, Any]] = []
        self._dump = None if dump is None else Dump(dump)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state:
            return list(self._requests)

    @property
    def operations(self) -> list[dict[str, Any]]:
        with self._state:
            return list(self._operations)

    @property
    def transactional(self) -> list[dict[str, Any]]:
        with self._state:
            return list(self._transactional)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        with self._state:
            return list(self._rejected)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Every accepted record: ``received_at``, ``route`` and ``operation`` (a snapshot)."""
        with self._state:
            return list(self._accepted)

    @property
    def dump_error(self) -> OSError | None:
        """What ended the dump early, or None."""
        with self._state:
            return None if self._dump is None else self._dump.error

    def open_dump(self) -> None:
        """Open the dump file, if there is one (``Dump.open``)."""
        if self._dump is not None:
            self._dump.open()

    def close_dump(self) -> None:
        """Close the dump file, if there is one; a late answer writes nothing to it after."""
        if self._dump is not None:
            # Under the lock the writes take, so none is halfway through.
            with self._state:
                self._dump.close()

    def keep(self, route: Route | None, reply: Reply) -> None:
        """Keep what a processed request accepted and refused, and dump what it accepted."""
        with self._state:
            self._rejected.extend(reply.rejected)
            if route is None or not reply.accepted:
                return
            (self._transactional if route.app else self._operations).extend(reply.accepted)
            received_at = round(time.time(), 6)
            for operation in reply.accepted:
                record = {"received_at": received_at, "route": route.name, "operation": operation}
                self._accepted.append(record)
                if self._dump is not None:
                    self._dump.write(record)
            self._state.notify_all()

    def record(self, request: Request, reply: Reply) -> None:
        """Record a request with how it was answered, unless it was for the emulator's own
        paths (the server refuses some unread: see ``Server``)."""
        if is_control(urlsplit(request.path).path):
            return
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            status=0 if reply.drop else reply.status,
            op_count=reply.op_count,
            body_bytes=len(request.body),
            errors=reply.errors,
            fault=reply.fault,
            received_at=request.received_at,
        )
        with self._state:
            self._requests.append(recorded)
            self._state.notify_all()

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Whether ``n`` requests were recorded within ``timeout`` seconds."""
        with self._state:
            return self._state.wait_for(lambda: len(self._requests) >= n, timeout)

    def wait_for_operations(self, n: int, timeout: float) -> bool:
        """Whether ``n`` operations were accepted within ``timeout`` seconds."""
        with self._state:
            return self._state.wait_for(lambda: len(self._operations) >= n, timeout)

    def reset(self) -> None:
        """Forget everything recorded; the dump file keeps its lines."""
        with self._state:
            self._requests.clear()
            self._operations.clear()
            self._transactional.clear()
            self._rejected.clear()
            self._accepted.clear()
