"""CustomerIOMiddleware: the lifespan protocol with a fake server, then real uvicorn --workers 2
with requests in flight at SIGTERM; and the warning when uvicorn's capture skips our flush."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

import pytest

import customerio_logging as cio
from customerio_logging import _lifecycle
from customerio_logging._wire import Response
from customerio_logging.integrations.asgi import CustomerIOMiddleware
from customerio_logging.testing import TrackAPIEmulator

from .helpers import PROGRAMS, GatedTransport, free_port, python_env

Message = dict[str, Any]
HARD_TIMEOUT = 30.0  # no server lives longer, whatever happens


# -- the lifespan protocol, with a fake server ----------------------------------------------


class _Server:
    """The server's side of the lifespan protocol: feeds messages, records the replies.

    ``on_reply`` runs for each reply as it is sent (to look at the world at that moment).
    """

    def __init__(self, on_reply: Callable[[Message], None] = lambda _: None) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.replies: list[str] = []
        self.on_reply = on_reply

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        self.on_reply(message)
        self.replies.append(message["type"])

    async def run(self, app: Callable[..., Awaitable[None]]) -> None:
        """Start, then shut down once startup is answered (as uvicorn does after draining)."""
        await self.inbox.put({"type": "lifespan.startup"})
        task = asyncio.create_task(app({"type": "lifespan", "state": {}}, self.receive, self.send))
        while not self.replies and not task.done():
            await asyncio.sleep(0.01)
        if self.replies == ["lifespan.startup.complete"]:
            await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, HARD_TIMEOUT)


async def _no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return


async def _raises_on_lifespan(scope: Any, receive: Any, send: Any) -> None:
    # Django's ASGIHandler: "Django can only handle ASGI/HTTP connections, not lifespan."
    raise ValueError(f"can only handle http, not {scope['type']}")


def _lifespan_app(
    *, fail_startup: bool = False, fail_shutdown: bool = False
) -> Callable[..., Awaitable[None]]:
    """An app speaking lifespan as Starlette does; it logs an event in its own shutdown."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        if fail_startup:
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            raise RuntimeError("no database")
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        _log_event("app_stopping", "app")
        if fail_shutdown:
            raise RuntimeError("shutdown handler failed")
        await send({"type": "lifespan.shutdown.complete"})

    return app


_log = logging.getLogger("tests.asgi")
_log.setLevel(logging.INFO)
_log.propagate = False
_log.addHandler(cio.CustomerIOHandler())  # the process's bridge, whichever it is then


def _log_event(name: str, user: str) -> None:
    _log.info(name, extra={"cio_event": True, "user_id": user})


@pytest.fixture
def bridge(settings: dict[str, object]) -> cio.Bridge:
    """The process's bridge, sending only when flushed or shut down."""
    return cio.configure(**{**settings, "flush_interval": 60.0, "shutdown_timeout": 2.0})


def _users_delivered(emulator: TrackAPIEmulator, name: str) -> Counter[str]:
    return Counter(op["identifiers"]["id"] for op in emulator.events(name))


class TestLifespan:
    @pytest.mark.parametrize("app", [_no_lifespan, _raises_on_lifespan], ids=["returns", "raises"])
    def test_an_app_without_lifespan_is_spoken_for_and_the_bridge_shut_down_before_the_reply(
        self, app: Callable[..., Awaitable[None]], bridge: cio.Bridge, emulator: TrackAPIEmulator
    ) -> None:
        _log_event("signed_up", "u1")
        delivered_at_reply: list[int] = []

        def on_reply(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                delivered_at_reply.append(len(emulator.events("signed_up")))

        server = _Server(on_reply)
        asyncio.run(server.run(CustomerIOMiddleware(app)))

        assert server.replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert delivered_at_reply == [1]  # delivered before the server heard "complete"
        assert bridge.thread is not None
        assert not bridge.thread.is_alive()

    def test_an_app_speaking_lifespan_is_passed_through_and_its_own_shutdown_events_delivered(
        self, bridge: cio.Bridge, emulator: TrackAPIEmulator
    ) -> None:
        server = _Server()
        asyncio.run(server.run(CustomerIOMiddleware(_lifespan_app())))

        assert server.replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert _users_delivered(emulator, "app_stopping") == {"app": 1}

    def test_a_failed_startup_is_passed_on_and_the_bridge_left_running(
        self, bridge: cio.Bridge
    ) -> None:
        server = _Server()
        with pytest.raises(RuntimeError, match="no database"):
            asyncio.run(server.run(CustomerIOMiddleware(_lifespan_app(fail_startup=True))))

        assert server.replies == ["lifespan.startup.failed"]
        assert bridge.thread is not None
        assert bridge.thread.is_alive()

    def test_an_app_failing_in_its_shutdown_still_gets_its_events_delivered(
        self, bridge: cio.Bridge, emulator: TrackAPIEmulator
    ) -> None:
        server = _Server()
        with pytest.raises(RuntimeError, match="shutdown handler failed"):
            asyncio.run(server.run(CustomerIOMiddleware(_lifespan_app(fail_shutdown=True))))

        assert server.replies == ["lifespan.startup.complete"]  # the server sees the error
        assert _users_delivered(emulator, "app_stopping") == {"app": 1}

    def test_the_shutdown_runs_off_the_event_loop(self, settings: dict[str, object]) -> None:
        # The API answers only once a task on the event loop lets it: were the loop
        # blocked by the shutdown, the send would hang until shutdown_timeout, undelivered.
        transport = GatedTransport(Response(200))
        bridge = cio.configure(**{**settings, "flush_interval": 60.0, "transport": transport})
        _log_event("signed_up", "u1")

        async def open_the_gate_from_the_loop() -> None:
            while not transport.entered.is_set():
                await asyncio.sleep(0.01)
            transport.gate.set()

        async def main() -> None:
            opener = asyncio.create_task(open_the_gate_from_the_loop())
            await _Server().run(CustomerIOMiddleware(_no_lifespan))
            await opener

        started = time.monotonic()
        asyncio.run(main())

        assert time.monotonic() - started < bridge.settings.shutdown_timeout
        assert bridge.stats().sent == 1

    def test_as_starlette_middleware_the_apps_lifespan_events_are_delivered(
        self, bridge: cio.Bridge, emulator: TrackAPIEmulator
    ) -> None:
        pytest.importorskip("starlette")
        from starlette.applications import Starlette
        from starlette.middleware import Middleware

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            _log_event("app_stopping", "app")

        app = Starlette(lifespan=lifespan, middleware=[Middleware(CustomerIOMiddleware)])
        server = _Server()
        asyncio.run(server.run(app))

        assert server.replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert _users_delivered(emulator, "app_stopping") == {"app": 1}

    def test_http_scopes_pass_straight_through(self) -> None:
        seen: list[Any] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, receive, send))

        async def receive() -> Message:
            return {}

        async def send(message: Message) -> None:
            pass

        scope = {"type": "http"}
        asyncio.run(CustomerIOMiddleware(app)(scope, receive, send))

        assert seen == [(scope, receive, send)]


class TestDisplacedSigterm:
    """Which SIGTERM handlers mean the process will end without our flush."""

    @pytest.fixture
    def uvicorn_capture(self) -> Callable[..., object]:
        uvicorn = pytest.importorskip("uvicorn")
        return uvicorn.Server(uvicorn.Config(_no_lifespan)).handle_exit

    def test_ours_chained_onto_uvicorns_capture_is_reported(
        self, uvicorn_capture: Callable[..., object]
    ) -> None:
        # configure() ran inside the capture (uvicorn --workers imports the app there).
        ours = _lifecycle._handle_sigterm
        expected = "uvicorn.server.Server.handle_exit"
        assert _lifecycle.temporary_capture(ours, uvicorn_capture) == expected

    def test_uvicorns_capture_without_ours_is_reported(
        self, uvicorn_capture: Callable[..., object]
    ) -> None:
        # The bridge was built from the environment at the first log call: no handler.
        expected = "uvicorn.server.Server.handle_exit"
        assert _lifecycle.temporary_capture(uvicorn_capture, None) == expected

    def test_ours_displaced_by_uvicorns_capture_is_not(
        self, uvicorn_capture: Callable[..., object]
    ) -> None:
        # configure() ran before uvicorn.run(): the capture restores ours and raises again.
        assert _lifecycle.temporary_capture(uvicorn_capture, signal.SIG_DFL) is None

    @pytest.mark.parametrize(
        ("current", "chained"),
        [
            (_lifecycle._handle_sigterm, signal.SIG_DFL),
            (_lifecycle._handle_sigterm, signal.SIG_IGN),
            (_lifecycle._handle_sigterm, signal.default_int_handler),
            (signal.SIG_DFL, None),
            (None, None),
        ],
        ids=["ours-default", "ours-ignored", "ours-chained-to-another", "no-handler", "not-python"],
    )
    def test_other_handlers_are_not(self, current: Any, chained: Any) -> None:
        assert _lifecycle.temporary_capture(current, chained) is None


# -- real uvicorn --workers 2, SIGTERM with requests in flight ------------------------------


def _command(server: str, port: int) -> list[str]:
    """Two workers of the app: ``uvicorn --workers 2``, or gunicorn with UvicornWorker."""
    if server == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", "asgi_app:app"),
            *("--app-dir", str(PROGRAMS), "--workers", "2", "--no-access-log"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]
    return [
        *(sys.executable, "-m", "gunicorn", "asgi_app:app", "--chdir", str(PROGRAMS)),
        *("-k", "uvicorn.workers.UvicornWorker", "-w", "2", "-b", f"127.0.0.1:{port}"),
    ]


class _Uvicorn:
    """The app served by two uvicorn workers, in its own process group; stderr collected."""

    def __init__(self, env: dict[str, str], server: str = "uvicorn") -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            _command(server, self.port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_for(self, what: Callable[[str], bool], timeout: float = HARD_TIMEOUT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: what("\n".join(self._lines)), timeout):
                pytest.fail(f"uvicorn never got there in {timeout}s:\n{chr(10).join(self._lines)}")

    def get(self, user: str, statuses: dict[str, int]) -> None:
        url = f"http://127.0.0.1:{self.port}/?user={user}"
        try:
            with urllib.request.urlopen(url, timeout=HARD_TIMEOUT) as reply:
                statuses[user] = reply.status
        except OSError:
            statuses[user] = 0  # refused or reset: not accepted

    def terminate(self) -> int:
        """SIGTERM to uvicorn's main process, as a supervisor sends it; its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(HARD_TIMEOUT)

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(HARD_TIMEOUT)
        self._reader.join(HARD_TIMEOUT)


@contextmanager
def _uvicorn(
    emulator: TrackAPIEmulator, tmp_path: Path, server_name: str = "uvicorn", **app_env: str
) -> Iterator[_Uvicorn]:
    pytest.importorskip("uvicorn")
    src = Path(cio.__file__).parent.parent
    state = str(tmp_path / "state")
    env = python_env(
        {"PYTHONPATH": str(src), "XDG_STATE_HOME": state, **app_env}, emulator=emulator
    )
    server = _Uvicorn(env, server_name)
    try:
        server.wait_for(lambda text: text.count("Application startup complete") == 2)
        yield server
    finally:
        server.kill()


def _terminate_with_requests_in_flight(
    server: _Uvicorn, users: list[str], release: Path
) -> tuple[int, dict[str, int]]:
    """SIGTERM while every request is working; each ends (logs, answers) only once both
    workers are shutting down. The server's exit status, and each request's."""
    statuses: dict[str, int] = {}
    clients = [threading.Thread(target=server.get, args=(user, statuses)) for user in users]
    for client in clients:
        client.start()
    server.wait_for(lambda text: all(f"started {user}" in text for user in users))
    server.process.send_signal(signal.SIGTERM)
    server.wait_for(lambda text: _shutting_down(text) == 2)
    release.touch()
    status = server.process.wait(HARD_TIMEOUT)
    for client in clients:
        client.join(HARD_TIMEOUT)
    return status, statuses


def _has_uvicorn_worker() -> bool:
    # Found, not imported: uvicorn.workers warns that it moved to uvicorn-worker.
    return all(importlib.util.find_spec(name) for name in ("gunicorn", "uvicorn.workers"))


def _shutting_down(text: str) -> int:
    """How many workers logged that they shut down (uvicorn's Server.shutdown)."""
    return sum(
        line.endswith("] Shutting down") or line.endswith(":     Shutting down")
        for line in text.splitlines()
    )


class TestUvicornWorkers:
    USERS: ClassVar[list[str]] = [f"u{i}" for i in range(6)]
    # No batch goes on the clock before the exit (the loss does not hang on when the
    # periodic send falls): only a flush or a shutdown sends.
    APP: ClassVar[dict[str, str]] = {"APP_FLUSH_INTERVAL": "60"}

    @pytest.mark.parametrize("server_name", ["uvicorn", "gunicorn"])
    def test_with_the_middleware_every_request_in_flight_at_sigterm_has_its_event_once(
        self, server_name: str, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        if server_name == "gunicorn" and not _has_uvicorn_worker():
            pytest.skip("gunicorn and uvicorn.workers are needed")
        release = tmp_path / "release"
        env = {**self.APP, "APP_MIDDLEWARE": "1", "APP_RELEASE": str(release)}
        with _uvicorn(emulator, tmp_path, server_name, **env) as server:
            status, statuses = _terminate_with_requests_in_flight(server, self.USERS, release)

        assert status == 0, server.stderr
        assert statuses == dict.fromkeys(self.USERS, 200)
        assert _users_delivered(emulator, "request_done") == dict.fromkeys(self.USERS, 1)
        assert set(emulator.accepted_ids().values()) == {1}
        assert "CustomerIOMiddleware" not in server.stderr  # no warning: it is there

    def test_without_it_the_events_of_requests_in_flight_are_lost(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        # What the middleware is for: uvicorn answers them all, then the workers die by
        # the re-raised SIGTERM before the batch goes, and without atexit.
        release = tmp_path / "release"
        with _uvicorn(emulator, tmp_path, **self.APP, APP_RELEASE=str(release)) as server:
            status, statuses = _terminate_with_requests_in_flight(server, self.USERS, release)

        assert status == 0, server.stderr
        assert statuses == dict.fromkeys(self.USERS, 200)
        assert _users_delivered(emulator, "request_done") == {}

    def test_without_it_the_library_warns_once_naming_the_middleware(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        # The warning is found when a batch is sent and said at the next log call.
        with _uvicorn(emulator, tmp_path, APP_WORK="0", APP_FLUSH_INTERVAL="0.05") as server:
            statuses: dict[str, int] = {}
            deadline = time.monotonic() + HARD_TIMEOUT
            n = 0
            while "CustomerIOMiddleware" not in server.stderr and time.monotonic() < deadline:
                server.get(f"w{n}", statuses)
                n += 1
                assert emulator.wait_for_operations(n), "an event never arrived"
            for i in range(n, n + 4):  # more batches from both workers: no repeat
                server.get(f"w{i}", statuses)
            assert emulator.wait_for_operations(n + 4)
            server.terminate()

        warnings = [line for line in server.stderr.splitlines() if "CustomerIOMiddleware" in line]
        assert len(warnings) in (1, 2), server.stderr  # at most once per worker
        assert "uvicorn.server.Server.handle_exit" in warnings[0]
