"""Shared fixtures: a Track API emulator per test and a clean process-wide bridge."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from customerio_logging import _global
from customerio_logging._storage.sqlite import SQLiteSpool
from customerio_logging._wire import Response
from customerio_logging.testing import MockTransport, TrackAPIEmulator

PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in (
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_TRACK_API_KEY",
        "CUSTOMERIO_REGION",
        "CUSTOMERIO_TRACK_URL",
        "CUSTOMERIO_SPOOL_PATH",
    ):
        monkeypatch.delenv(var, raising=False)
    # The default spool lives in the user's state directory: keep each test's apart,
    # in its own temporary folder (subprocesses inherit it).
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield
    old = _global.forget_bridge()
    if old is not None:
        old.shutdown(1.0)


@pytest.fixture
def emulator() -> Iterator[TrackAPIEmulator]:
    with TrackAPIEmulator() as emu:
        yield emu


@pytest.fixture
def settings(emulator: TrackAPIEmulator) -> dict[str, object]:
    """Keyword arguments for configure() that point at the emulator."""
    return {
        "site_id": emulator.site_id,
        "api_key": emulator.api_key,
        "track_url": emulator.url,
        "flush_interval": 0.05,
    }


def run_program(
    name: str,
    emulator: TrackAPIEmulator,
    *args: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run tests/programs/NAME.py in a fresh interpreter, configured from the environment."""
    environ = {
        **os.environ,
        "CUSTOMERIO_SITE_ID": emulator.site_id,
        "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
        "CUSTOMERIO_TRACK_URL": emulator.url,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(PROGRAMS / f"{name}.py"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens: an unreachable API."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def spool_pending(path: Path) -> int:
    """How many operations wait in the spool file at ``path`` (read by a separate handle)."""
    spool = SQLiteSpool(path, max_bytes=1 << 30)
    try:
        return spool.pending()
    finally:
        spool.close()
