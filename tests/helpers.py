"""What the test modules share besides fixtures (those are in the conftest.py files).

Sections: snapshots and what they become; delivery checks; fakes (a clock, a hanging
transport); the network (free ports, an emulator's client side); other processes (one
runner, children kept running, forks); spools (operations, dead letters, files spoiled on
purpose); the command line's arguments.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import strategies as st

import customerio_logging as cio
from customerio_logging._capture import Snapshot, capture_event_dict, capture_record
from customerio_logging._operation import build_operation
from customerio_logging._schema import Taxonomy
from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation, Response, new_ulid
from customerio_logging.exceptions import InvalidEventError
from customerio_logging.testing import MockTransport, TrackAPIEmulator

# -- snapshots and what they become ------------------------------------------------------

CREATED = 1_700_000_000.75  # 2023-11-14T22:13:20.750Z, far from "now"


def cap(
    tag: object = "evt", *, message: object = "msg", created: float = CREATED, **fields: Any
) -> Snapshot:
    """A snapshot of a log call tagged ``tag`` that carries ``fields``."""
    return Snapshot(tag, message, fields, created)


def snapshot(i: int, **fields: Any) -> Snapshot:
    """The ``i``-th plan_changed event, for user ``u<i>``, logged ``i`` seconds after 2023-11-14."""
    return Snapshot(True, "plan_changed", {"user_id": f"u{i}", **fields}, 1_700_000_000.0 + i)


def build(snapshot: Snapshot, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """The operation's body, decoded: what the Track API would receive."""
    op = build_operation(snapshot, taxonomy or Taxonomy())
    decoded = json.loads(op.body)
    assert isinstance(decoded, dict)
    return decoded


def attributes(**fields: Any) -> Any:
    """The attributes an event with these fields (and user_id u1) is sent with."""
    return build(cap(user_id="u1", **fields)).get("attributes")


def outcome(snapshot: Snapshot) -> Operation | InvalidEventError:
    """The operation, or the InvalidEventError that refused it; anything else escapes."""
    try:
        return build_operation(snapshot, Taxonomy())
    except InvalidEventError as error:
        return error


def invalid(snapshot: Snapshot, taxonomy: Taxonomy | None = None) -> InvalidEventError:
    """The InvalidEventError that refuses ``snapshot``; the test fails if none does."""
    with pytest.raises(InvalidEventError) as info:
        build_operation(snapshot, taxonomy or Taxonomy())
    return info.value


def capture_through(through: str, fields: dict[str, object]) -> Snapshot | None:
    """Capture ``fields`` as a stdlib record, a structlog event dict, or a dict message."""
    if through == "record":
        return capture_record(logging.makeLogRecord({"msg": "e", **fields}))
    if through == "event_dict":
        return capture_event_dict({"event": "e", **fields})
    return capture_record(logging.makeLogRecord({"msg": {"event": "e", **fields}}))


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.integers(min_value=0, max_value=40_000).map(lambda n: "x" * n),
)
"""Arbitrary JSON-like scalars: what a log call could carry."""


# -- delivery checks ---------------------------------------------------------------------


def balanced(stats: cio.Stats) -> bool:
    """Every event that entered is in exactly one place: sent, failed, invalid, dropped,
    spooled, dead-lettered or still queued."""
    settled = stats.sent + stats.failed + stats.invalid + stats.dropped
    return stats.enqueued == settled + stats.spooled + stats.dead_lettered + stats.queue_depth


def users(prefix: str, count: int) -> set[str]:
    """The user ids ``<prefix>0`` to ``<prefix><count - 1>``."""
    return {f"{prefix}{i}" for i in range(count)}


def assert_each_once(emulator: TrackAPIEmulator, expected: set[str]) -> None:
    """The emulator accepted one event for each user in ``expected``, each under an id of
    its own, and nothing else."""
    ops = emulator.operations
    ids = Counter(op["id"] for op in ops)
    assert [i for i, n in ids.items() if n > 1] == [], "an operation id arrived twice"
    people = Counter(op["identifiers"]["id"] for op in ops)
    assert [u for u, n in people.items() if n > 1] == [], "an event arrived twice"
    assert set(people) == expected


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        tick.wait(0.02)
    return True


# -- fakes -------------------------------------------------------------------------------


class FakeClock:
    """Seconds that move only when told: ``advance`` them, or ``sleep`` (which records
    each sleep in ``sleeps``). Call it for the time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class GatedTransport(MockTransport):
    """A MockTransport whose sends wait until `gate` is set: a hanging network.

    `entered` is set once a send is in flight.
    """

    def __init__(self, *answers: Response | Exception) -> None:
        super().__init__(*answers)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send(self, body: bytes) -> Response:
        self.entered.set()
        self.gate.wait(10)
        return super().send(body)


# -- the network -------------------------------------------------------------------------

HTTP_TIMEOUT = 5.0  # seconds a test's own request to the emulator may take


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens: an unreachable API."""
    return f"http://127.0.0.1:{free_port()}"


def unreachable_api() -> dict[str, str]:
    """Settings for a child process whose Track API cannot be reached."""
    return {
        "CUSTOMERIO_SITE_ID": "site",
        "CUSTOMERIO_TRACK_API_KEY": "key",
        "CUSTOMERIO_TRACK_URL": closed_port_url(),
    }


def basic_auth(site_id: str, api_key: str) -> str:
    """The Authorization header's value for these credentials."""
    return "Basic " + base64.b64encode(f"{site_id}:{api_key}".encode()).decode()


def batch_op(name: str = "signed_up", user: str = "u1", **extra: Any) -> dict[str, Any]:
    """A batch operation: person ``user`` did ``name``."""
    return {"type": "person", "identifiers": {"id": user}, "action": "event", "name": name, **extra}


def open_session(emulator: TrackAPIEmulator) -> requests.Session:
    """A requests session with the emulator's credentials (close it, or use it in ``with``)."""
    session = requests.Session()
    session.auth = (emulator.site_id, emulator.api_key)
    return session


def post_batch(
    session: requests.Session,
    emulator: TrackAPIEmulator,
    batch: list[Any],
    timeout: float = HTTP_TIMEOUT,
) -> requests.Response:
    """POST ``batch`` to the emulator's /api/v2/batch."""
    return session.post(f"{emulator.url}/api/v2/batch", json={"batch": batch}, timeout=timeout)


def raw_exchange(emulator: TrackAPIEmulator, data: bytes) -> bytes:
    """Send bytes on a fresh socket, half-close it, and read until the server closes."""
    host, port = emulator.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- other processes ---------------------------------------------------------------------

PROGRAMS = Path(__file__).parent / "programs"
CHILD_TIMEOUT = 30.0  # the default limit for another process; most take well under 1 s


def program(name: str) -> Path:
    """The path of tests/programs/NAME.py."""
    return PROGRAMS / f"{name}.py"


def python_env(
    env: Mapping[str, str] | None = None,
    *,
    emulator: TrackAPIEmulator | None = None,
    clean: bool = False,
) -> dict[str, str]:
    """A child's environment: this process's (less its CUSTOMERIO_* settings when
    ``clean``), then the credentials and URL of ``emulator``, then ``env``."""
    environ = {k: v for k, v in os.environ.items() if not (clean and k.startswith("CUSTOMERIO_"))}
    if emulator is not None:
        environ["CUSTOMERIO_SITE_ID"] = emulator.site_id
        environ["CUSTOMERIO_TRACK_API_KEY"] = emulator.api_key
        environ["CUSTOMERIO_TRACK_URL"] = emulator.url
    environ.update(env or {})
    return environ


def run_python(
    *args: object,
    env: Mapping[str, str] | None = None,
    emulator: TrackAPIEmulator | None = None,
    clean: bool = False,
    timeout: float = 60.0,
    on_timeout: str | None = None,
    check: bool = False,
    launcher: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args`` to its end; its exit code and text output.

    Args:
        args: What follows the interpreter: a script and its arguments, ``-c`` code, ``-m``
            module (each passed through ``str``).
        env: Variables set in the child's environment (see ``python_env``).
        emulator: Settings for the child pointing at this emulator.
        clean: Leave this process's CUSTOMERIO_* settings out of the child's environment.
        timeout: The most seconds the child may run; it is killed then, and
            subprocess.TimeoutExpired raised.
        on_timeout: Fail the test with this message instead of raising, when the child
            outlives ``timeout`` (a freeze is what the test is about).
        check: Fail the test, showing the child's stderr, unless it exits with 0.
        launcher: A command that starts the interpreter (``unshare --pid``, say).
    """
    try:
        result = subprocess.run(
            [*launcher, sys.executable, *map(str, args)],
            env=python_env(env, emulator=emulator, clean=clean),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        if on_timeout is None:
            raise
        pytest.fail(on_timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start_python(
    *args: object,
    env: Mapping[str, str] | None = None,
    emulator: TrackAPIEmulator | None = None,
    clean: bool = False,
    stdin: bool = False,
) -> subprocess.Popen[str]:
    """Start this interpreter with ``args`` (as ``run_python``), its stdout and stderr
    piped as text, and its stdin too with ``stdin``."""
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=python_env(env, emulator=emulator, clean=clean),
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def children(
    *commands: Sequence[object],
    env: Mapping[str, str] | None = None,
    emulator: TrackAPIEmulator | None = None,
    timeout: float = CHILD_TIMEOUT,
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start this interpreter once per command (``start_python``, stdin piped); kill them
    all at ``timeout``, and at the end."""
    procs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as stack:
        for command in commands:
            child = start_python(*command, env=env, emulator=emulator, stdin=True)
            procs.append(stack.enter_context(child))

        def kill_all() -> None:
            for proc in procs:
                proc.kill()  # a no-op for one that has ended

        # A killed child closes its stdout: a blocked readline() returns "" and the test
        # fails on what it read, instead of hanging.
        watchdog = threading.Timer(timeout, kill_all)
        watchdog.name = "child-watchdog"
        watchdog.daemon = True
        watchdog.start()
        stack.callback(kill_all)
        stack.callback(watchdog.cancel)
        yield procs


def read_line(proc: subprocess.Popen[str]) -> str:
    """The child's next line of output; the test fails if it ended without one."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        pytest.fail(f"the child ended without a line: {proc.stderr.read()}")
    return line


def say(proc: subprocess.Popen[str], line: str) -> None:
    """Write ``line`` to the child's stdin."""
    assert proc.stdin is not None
    proc.stdin.write(line)
    proc.stdin.flush()


def in_fork(
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


# -- spools ------------------------------------------------------------------------------

SITE = "site"  # the site id tests/programs/spool_*.py open their spool with
URL = "https://track.example.test"
BIG = 100_000_000  # max_bytes that never evicts


def body_of(size: int) -> bytes:
    """A JSON operation body of exactly ``size`` bytes (at least 8)."""
    head, tail = b'{"p":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def make_op(
    op_id: str, size: int = 40, *, action: str = "event", name: str | None = "n"
) -> Operation:
    """An operation whose body is ``size`` bytes of JSON."""
    return Operation(op_id, action, name, body_of(size))


def ids_of(ops: list[Operation]) -> list[str]:
    return [op.id for op in ops]


def make_letter(
    op_id: str | None,
    *,
    reason: str = "http_400",
    body: bytes | None = b'{"type":"person"}',
    at: float = 1_700_000_000.0,
) -> DeadLetterRow:
    """A dead letter for the operation ``op_id`` (None: an invalid event's)."""
    return DeadLetterRow(0, op_id, "event", "n", reason, "attributes.plan", "rejected", at, body)


def valid_operation(name: str = "replayed") -> Operation:
    """A valid batch operation, as the bridge spools it."""
    op_id = new_ulid(time.time())
    body = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": name,
        "id": op_id,
        "timestamp": 1700000000,
    }
    return Operation(op_id, "event", name, json.dumps(body, separators=(",", ":")).encode())


def letter_for(
    op: Operation | None, reason: str = "http_400", *, at: float = 1_700_000_000.0
) -> DeadLetterRow:
    """A dead letter for ``op`` as the API would refuse it; None makes an invalid event's."""
    if op is None:
        return DeadLetterRow(
            0, None, "event", "bad", reason, "name", "name must be a string", at, None
        )
    return DeadLetterRow(
        0, op.id, op.action, op.name, reason, "attributes.plan", "refused by the test", at, op.body
    )


def fill_spool(
    path: Path,
    ops: list[Operation] | None = None,
    letters: list[DeadLetterRow] | None = None,
    *,
    site_id: str | None = None,
    track_url: str | None = None,
) -> None:
    """Add ``ops`` and ``letters`` to the spool file at ``path``."""
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=site_id, track_url=track_url)
    try:
        spool.add(ops or [])
        spool.dead_letter(letters or [])
    finally:
        spool.close()


def read_spool(path: Path) -> tuple[int, list[DeadLetterRow]]:
    """What waits in the spool file at ``path``, and its dead letter, read by a handle of
    its own (as any workspace)."""
    spool = SQLiteSpool(path, max_bytes=BIG)
    try:
        return spool.pending(), list(spool.dead_letters())
    finally:
        spool.close()


def spool_pending(path: Path) -> int:
    """How many operations wait in the spool file at ``path`` (read by a separate handle)."""
    return read_spool(path)[0]


def assert_a_working_spool(path: Path) -> None:
    """A new handle on the spool file at ``path`` adds to it and reads it back."""
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=SITE)
    try:
        spool.add([make_op("a")])
        assert spool.pending() == 1
    finally:
        spool.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sibling_of(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def moved_aside(path: Path) -> list[Path]:
    """The copies of ``path`` moved aside as ``<name>.corrupt-<stamp>`` (not their -wal)."""
    pattern = re.compile(re.escape(path.name) + r"\.corrupt-\d{8}T\d{6}(-\d+)?")
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def state_of(path: Path) -> tuple[int, int, bytes]:
    """A file's mode, owner and bytes: what the spool must leave as it found them."""
    info = os.lstat(path)
    return info.st_mode, info.st_uid, path.read_bytes()


def foreign_bytes(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 a zip, say, not a database" * 100)


def foreign_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('another app''s data')")
        conn.commit()


def app_database(path: Path) -> None:
    foreign_database(path)
    path.chmod(0o644)


# -- the command line --------------------------------------------------------------------

WRONG_KEY = "wrong-key-5f3a9c"


def credentials(emulator: TrackAPIEmulator, *, api_key: str | None = None) -> list[str]:
    """The command line's options that point it at ``emulator``."""
    return [
        "--site-id",
        emulator.site_id,
        "--api-key",
        api_key or emulator.api_key,
        "--track-url",
        emulator.url,
    ]


def replay_args(emulator: TrackAPIEmulator, path: Path, *extra: str) -> list[str]:
    return ["spool", "replay", "--spool-path", str(path), *credentials(emulator), *extra]


# -- a spool another process holds -------------------------------------------------

_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
conn.rollback()
"""


def hold_write_lock(path: Path) -> subprocess.Popen[str]:
    """Another process, holding the spool's write lock until its stdin closes."""
    holder = start_python("-c", _HOLD_WRITE_LOCK, path, stdin=True)
    assert read_line(holder).strip() == "held"
    return holder


def let_go(holder: subprocess.Popen[str]) -> None:
    """The holder gives the write lock back and ends."""
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process holds the spool's write lock until the block ends."""
    holder = hold_write_lock(path)
    try:
        yield
    finally:
        let_go(holder)
