"""TrackAPIEmulator: a local Track API (and the App API's transactional sends) for tests,
from its lifecycle and fault plan to what it shows of what it recorded.

Which endpoint answers what lives in ``_endpoints`` (the rules an operation must follow in
``_validation``, the App API's in ``_app_api``, the faults in ``_faults``), what it keeps in
``_recorder`` (the dump file in ``_dump``), its own ``GET /_emulator/operations`` in
``_control``, the socket handling in ``_http``.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

from .._limits import NAMED_ACTIONS
from ._control import OPERATIONS_PATH, answer_control, is_control
from ._endpoints import Credentials, Route, answer, route_of, with_faults
from ._faults import ActivePlan, FaultPlan
from ._http import Reply, Request, Server
from ._recorder import RecordedRequest, Recorder

__all__ = ["TrackAPIEmulator"]

_THREAD_NAME: Final = "customerio-emulator"


class TrackAPIEmulator:
    """A local stand-in for Customer.io's Track API, for tests.

    It serves ``POST /api/v2/batch``, ``GET /api/v1/accounts/region`` and the v1
    ``track``/``identify`` endpoints on ``127.0.0.1``, checks Basic auth and the Track API's
    limits, answers 200/207/400/401/413 as the real API does, and records every request and
    every accepted operation. It also serves the App API's ``POST /v1/send/email`` and
    ``POST /v1/send/push`` (bearer auth with ``app_api_key``; the reference's checks; a
    ``delivery_id`` and ``queued_at`` in the answer) and records each message it queued in
    ``transactional``: give ``url`` as ``app_url`` too.

    Other processes see what it accepted at ``operations_url``, and in the ``dump`` file.

    Example::

        with TrackAPIEmulator() as emu:
            cio.configure(site_id=emu.site_id, api_key=emu.api_key, track_url=emu.url)
            log.info("plan_changed", cio_event=True, user_id="u1")
            assert emu.wait_for_operations(1)
            assert emu.events("plan_changed")[0]["identifiers"] == {"id": "u1"}

    Fault injection: give it a ``FaultPlan`` (or change plans at any time with
    ``set_faults``) to see how an app fares against an unreliable API. The same seed and
    the same request order give the same faults::

        plan = FaultPlan(seed=1, failure_rate=0.3, drop_rate=0.05, rate_limit=20)
        with TrackAPIEmulator(faults=plan) as emu:
            ...  # run the app against emu.url, flush
            assert set(emu.accepted_ids()) == sent_ids  # none missing
            emu.set_faults(FaultPlan(script=(503, "drop_after_accept")))  # the next two
            emu.set_faults(None)  # well-behaved again

    Args:
        site_id: The site id the emulator accepts.
        api_key: The Track API key the emulator accepts.
        app_api_key: The App API key the emulator accepts (``Authorization: Bearer``).
        host: The address to bind; only loopback makes sense.
        port: The port to bind; 0 picks a free one.
        faults: The faults to inject from the start; None for none.
        dump: A file to write each accepted operation or App API message to from
            ``start()``, one JSON line each, flushed as written: ``{"received_at": <Unix
            seconds>, "route": "batch", "operation": {...}}`` (route ``batch``,
            ``v1_track``, ``v1_identify``, ``send_email`` or ``send_push``). Truncated by
            the first start, appended to after a restart, mode 0600 (the lines hold event
            data); ``reset()`` leaves it as it is. None for none.
    """

    def __init__(
        self,
        *,
        site_id: str = "emulator-site",
        api_key: str = "emulator-key",
        app_api_key: str = "emulator-app-key",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        dump: str | os.PathLike[str] | None = None,
    ) -> None:
        self.site_id: Final = site_id
        self.api_key: Final = api_key
        self.app_api_key: Final = app_api_key
        self._host = host
        self._port = port
        self._credentials = Credentials.of(site_id, api_key, app_api_key)
        self._lifecycle_lock = threading.Lock()
        self._server: Server | None = None
        self._recorder = Recorder(dump)
        self._faults_lock = threading.Lock()
        self._active_plan: ActivePlan | None = None
        self.set_faults(faults)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the port and serve from a daemon thread named ``customerio-emulator``.

        After a ``stop()``, ``start()`` binds the same port again, so ``url`` stays valid for
        a client configured with it.

        Returns:
            The emulator itself, to allow ``emu = TrackAPIEmulator().start()``.

        Raises:
            RuntimeError: If the emulator is already running.
            OSError: If the port cannot be bound, or the dump file opened (the error's
                ``filename`` is then its path).
        """
        with self._lifecycle_lock:
            if self._server is not None:
                raise RuntimeError("TrackAPIEmulator is already running")
            self._recorder.open_dump()
            try:
                address = (self._host, self._port)
                server = Server(address, respond=self._respond, record=self._recorder.record)
            except BaseException:
                self._recorder.close_dump()
                raise
            self._port = server.server_address[1]
            server.start(_THREAD_NAME)
            self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection. Safe to call more than once."""
        with self._lifecycle_lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
            self._recorder.close_dump()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan in force, or None."""
        with self._faults_lock:
            return None if self._active_plan is None else self._active_plan.plan

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Put a fault plan in force for the requests that arrive from now on; None for none.

        Safe from any thread, running or not. The plan starts afresh each time it is set:
        its script from the first entry, its random generator from its seed, its rate limit
        with a full bucket. Requests already arrived keep the plan they arrived under.

        Args:
            plan: The faults to inject, or None to answer normally again.
        """
        active = None if plan is None else ActivePlan(plan)
        with self._faults_lock:
            self._active_plan = active

    # -- what it recorded --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the client, e.g. ``http://127.0.0.1:54321`` (no trailing slash).

        Raises:
            RuntimeError: If the emulator was never started.
        """
        if self._port == 0:
            raise RuntimeError("TrackAPIEmulator has no port yet: call start() first")
        return f"http://{self._host}:{self._port}"

    @property
    def operations_url(self) -> str:
        """The URL of ``GET /_emulator/operations``, for another process: it answers
        ``{"operations": [...]}``, the records the ``dump`` holds, in arrival order, kept by
        ``?name=``, ``?action=``, ``?user_id=`` (``identifiers.id``) or ``?route=`` (given
        twice: either value). No auth, never faulted, not in ``requests``.

        Raises:
            RuntimeError: If the emulator was never started.
        """
        return self.url + OPERATIONS_PATH

    @property
    def dump_error(self) -> OSError | None:
        """The error that ended the dump early (a full disk, say), or None while the dump
        file holds every accepted record (or there is no dump)."""
        return self._recorder.dump_error

    @property
    def operations(self) -> list[dict[str, Any]]:
        """Every accepted operation, in arrival order, in the v2 batch shape (a snapshot)."""
        return self._recorder.operations

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in the order its answer (or drop) was settled (a snapshot).

        Faulted requests are here too, with ``RecordedRequest.fault`` saying which fault.
        """
        return self._recorder.requests

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Every operation refused, with why (a snapshot).

        Each entry has ``operation``, ``reason``, ``field``, ``message`` and ``status``: 207
        for an operation refused inside a batch, 400 for a v1 request refused. A request
        refused as a whole (bad JSON, empty batch, 413) carries no operation: see
        ``requests`` for those.
        """
        return self._recorder.rejected

    @property
    def transactional(self) -> list[dict[str, Any]]:
        """Every transactional message the App API endpoints queued, in arrival order (a
        snapshot).

        Each entry has ``type`` (``"email"`` or ``"push"``), the ``delivery_id`` and
        ``queued_at`` of the answer, and the ``request`` as sent (its JSON body).
        """
        return self._recorder.transactional

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Accepted ``event``, ``page`` and ``screen`` operations, in arrival order.

        Args:
            name: Keep only the operations with this ``name``.

        Returns:
            The matching operations (a snapshot).
        """
        return [
            op
            for op in self._recorder.operations
            if op.get("action") in NAMED_ACTIONS and (name is None or op.get("name") == name)
        ]

    def accepted_ids(self) -> Counter[str]:
        """How many times each operation ``id`` was accepted (operations without one are left out).

        A count above 1 is an operation the client sent again after the emulator had
        accepted it. With faults, duplicates should come only from requests recorded with
        ``fault="drop_after_accept"`` (or a ``delay`` longer than the client's timeout)::

            ids = emu.accepted_ids()
            duplicates = sum(ids.values()) - len(ids)
            assert duplicates <= sum(
                r.op_count for r in emu.requests if r.fault == "drop_after_accept"
            )

        Returns:
            A ``collections.Counter`` of ids (a snapshot).
        """
        operations = self._recorder.operations
        return Counter(op["id"] for op in operations if isinstance(op.get("id"), str))

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests have been recorded since the last reset.

        Args:
            n: How many recorded requests to wait for.
            timeout: The most seconds to wait.

        Returns:
            True if ``n`` requests were recorded in time, False on timeout.
        """
        return self._recorder.wait_for_requests(n, timeout)

    def wait_for_operations(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` operations have been accepted since the last reset.

        Args:
            n: How many accepted operations to wait for.
            timeout: The most seconds to wait.

        Returns:
            True if ``n`` operations arrived in time, False on timeout.
        """
        return self._recorder.wait_for_operations(n, timeout)

    def reset(self) -> None:
        """Forget every recorded request, operation, rejection and transactional message; the
        fault plan and the dump file's lines stay."""
        self._recorder.reset()

    # -- request handling --------------------------------------------------------------

    def _respond(self, request: Request, stopping: threading.Event) -> Reply:
        # The one entry point for a well-framed request: the fault plan decides here, on
        # arrival, whether it is processed normally.
        path = urlsplit(request.path).path
        if is_control(path):
            # The emulator's own: no auth, no faults, not recorded as an API request.
            recorder = self._recorder
            return answer_control(request.method, request.path, lambda: recorder.accepted)
        route = route_of(request.method, path)
        with self._faults_lock:
            active = self._active_plan
        if active is None or route is None or not route.takes_faults:
            reply = self._process(request, route, None)
        else:
            reply = with_faults(active, request, route, stopping, self._process)
        self._recorder.record(request, reply)
        return reply

    def _process(self, request: Request, route: Route | None, plan: FaultPlan | None) -> Reply:
        """Answer as the real API would, ``plan`` only tightening its limits; keep the ops."""
        reply = answer(request, route, plan, self._credentials, self.url)
        self._recorder.keep(route, reply)
        return reply
