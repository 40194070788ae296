"""gunicorn's ``worker_exit`` hook, in a real gunicorn with recycled and SIGTERMed workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from customerio_logging.testing import TrackAPIEmulator

from .helpers import free_port, python_env

pytest.importorskip("gunicorn")

ROOT = Path(__file__).parent.parent
HOOK = "from customerio_logging.integrations.gunicorn import worker_exit  # noqa: F401\n"


def _get(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
                assert answer.status == 200
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the server is still starting


def _serve(emulator: TrackAPIEmulator, tmp_path: Path, *, hook: bool, users: list[str]) -> None:
    """Run gunicorn (2 workers, each recycled after 4 requests), one request per user,
    then SIGTERM it and wait for it to end."""
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(HOOK if hook else "")
    port = free_port()
    env = python_env(
        {
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "CIO_APP_EXIT": "os",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
        emulator=emulator,
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(config), "-w", "2", "--max-requests", "4",
         "-b", f"127.0.0.1:{port}", "tests.programs.wsgi_app:app"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        for user in users:
            _get(f"http://127.0.0.1:{port}/?user={user}", deadline)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


class TestWorkerExit:
    def test_recycled_and_stopped_workers_deliver_every_event_once(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        users = [f"u{i}" for i in range(20)]
        _serve(emulator, tmp_path, hook=True, users=users)
        delivered = sorted(op["identifiers"]["id"] for op in emulator.operations)
        assert delivered == sorted(users)
        assert all(n == 1 for n in emulator.accepted_ids().values())

    def test_without_the_hook_an_app_that_skips_atexit_loses_events(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        users = [f"u{i}" for i in range(20)]
        _serve(emulator, tmp_path, hook=False, users=users)
        assert len(emulator.operations) < len(users)
