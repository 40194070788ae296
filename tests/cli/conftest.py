"""The command-line tests' fixtures."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ..helpers import python_env

TERMINAL_COLUMNS = 100
"""The width of the pseudo-terminal ``on_a_terminal`` runs the command line on."""


def progress_counts(pattern: str, lines: list[str]) -> list[int]:
    """What each progress line says is done: ``pattern``'s first group; the test fails on
    a line of another form."""
    counts = []
    for line in lines:
        match = re.fullmatch(pattern, line)
        assert match is not None, f"not a progress line: {line!r}"
        counts.append(int(match[1]))
    return counts


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (and, not being a file, has no width)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "events.sqlite3"


@pytest.fixture
def fake_terminal() -> FakeTerminal:
    return FakeTerminal()


@pytest.fixture
def on_a_terminal() -> Callable[[list[str]], tuple[int, str]]:
    """Runs ``python -m customerio_logging ARGS`` in another process whose stdout and
    stderr are one pseudo-terminal, :data:`TERMINAL_COLUMNS` wide, as in a shell: its
    exit code and all it showed (the terminal's "\\r\\n" line ends made "\\n")."""
    return _run_on_a_terminal


def _run_on_a_terminal(args: list[str], timeout: float = 60.0) -> tuple[int, str]:
    leader, follower = pty.openpty()
    size = struct.pack("HHHH", 24, TERMINAL_COLUMNS, 0, 0)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, size)
    command = [sys.executable, "-m", "customerio_logging", *args]
    try:
        with subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=python_env()
        ) as proc:
            os.close(follower)
            follower = -1
            shown = _read_until_closed(leader, time.monotonic() + timeout)
            if shown is None:
                proc.kill()
                pytest.fail(f"the command outlived {timeout} s: {command}")
            code = proc.wait(timeout)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return code, shown.decode().replace("\r\n", "\n")


def _read_until_closed(fd: int, deadline: float) -> bytes | None:
    """All a pseudo-terminal's other end wrote until the last process holding it ended;
    None if that did not happen by ``deadline``."""
    chunks: list[bytes] = []
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: nothing holds the other end any more
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return None
