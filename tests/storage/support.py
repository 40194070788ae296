"""What the storage tests share: operations and dead letters to store, a clock that moves
when told, other processes (subprocesses and os.fork()), and files spoiled on purpose."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Operation

from ..conftest import PROGRAMS

TIMEOUT = 30.0  # hard limit for any other process; they normally take well under 1 s
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
    return DeadLetterRow(0, op_id, "event", "n", reason, "attributes.plan", "rejected", at, body)


def row_bytes(row: DeadLetterRow) -> int:
    """A dead letter's size as the spool bounds it: its body and its texts in UTF-8."""
    texts = (row.id, row.action, row.name, row.reason, row.field, row.message)
    return len(row.body or b"") + sum(len(t.encode()) for t in texts if t is not None)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sibling_of(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def moved_aside(path: Path) -> list[Path]:
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


# -- other processes ------------------------------------------------------------------


def program(name: str, *args: object) -> list[str]:
    return [sys.executable, str(PROGRAMS / f"{name}.py"), *map(str, args)]


def run_child(name: str, *args: object) -> str:
    """Run tests/programs/NAME.py to its end; its stdout."""
    result = subprocess.run(
        program(name, *args), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def children(*argvs: list[str]) -> Iterator[list[subprocess.Popen[str]]]:
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


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        pytest.fail(f"the child ended without a line: {proc.stderr.read()}")
    return line


def say(proc: subprocess.Popen[str], line: str) -> None:
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


# -- spoiled files ----------------------------------------------------------------------


def foreign_bytes(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 a zip, say, not a database" * 100)


def half_header(path: Path) -> None:
    path.write_bytes(b"SQLite fo")


def foreign_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('another app''s data')")
        conn.commit()


def truncated_spool(path: Path) -> None:
    spool = SQLiteSpool(path, max_bytes=BIG, site_id=SITE)
    spool.add([make_op(f"o{i:04d}", 2000) for i in range(1000)])  # about 2 MB
    spool.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    assert size > 1_500_000
    os.truncate(path, size // 2)


def state_of(path: Path) -> tuple[int, int, bytes]:
    """A file's mode, owner and bytes: what the spool must leave as it found them."""
    info = os.lstat(path)
    return info.st_mode, info.st_uid, path.read_bytes()


def app_database(path: Path) -> None:
    foreign_database(path)
    path.chmod(0o644)
