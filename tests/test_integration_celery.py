"""A real Celery prefork worker: each task's event arrives once, recycling and SIGTERM included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import customerio_logging
from customerio_logging.testing import TrackAPIEmulator

from .conftest import PROGRAMS

celery = pytest.importorskip("celery")

N = 60  # tasks sent; each child is recycled after 10
RAN_BEFORE_SIGTERM = 30
TIMEOUT = 30.0
# The worker imports the library the tests import.
SRC = Path(customerio_logging.__file__).parent.parent


def _send_tasks(broker: Path, count: int) -> set[str]:
    producer = celery.Celery(broker="filesystem://")
    producer.conf.broker_transport_options = {
        "data_folder_in": str(broker),
        "data_folder_out": str(broker),
    }
    users = {f"u{i}" for i in range(count)}
    with producer.connection_for_write() as connection:
        for i in range(count):
            producer.send_task("celery_app.work", args=[f"u{i}", i], connection=connection)
    return users


def _wait_until(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _run_worker(emulator: TrackAPIEmulator, tmp_path: Path, setup: str) -> dict[str, str]:
    """Start the worker on N queued tasks, SIGTERM it once RAN_BEFORE_SIGTERM ran, wait
    for it to end; return the tasks that ran: user id -> pid of the child that ran it.

    Tasks the pool had taken still run after the SIGTERM (a warm shutdown): the test
    checks some ended after it.
    """
    broker, ran = tmp_path / "broker", tmp_path / "ran"
    broker.mkdir()
    ran.mkdir()
    _send_tasks(broker, N)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(PROGRAMS)]),
        "CUSTOMERIO_SITE_ID": emulator.site_id,
        "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
        "CUSTOMERIO_TRACK_URL": emulator.url,
        "CELERY_BROKER_DIR": str(broker),
        "TASKS_RAN_DIR": str(ran),
        "APP_SETUP": setup,
    }
    command = [
        sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
        "-c", "2", "--max-tasks-per-child", "10", "-l", "INFO",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            command, cwd=PROGRAMS, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            started = _wait_until(
                lambda: len(os.listdir(ran)) >= RAN_BEFORE_SIGTERM or worker.poll() is not None,
                TIMEOUT,
            )
            assert started, (tmp_path / "worker.log").read_text()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            before = {path.name for path in ran.iterdir()}
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(TIMEOUT) == 0, (tmp_path / "worker.log").read_text()
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    after = {path.name: path.read_text() for path in ran.iterdir()}
    assert set(after) - before, "no task was running at SIGTERM"
    return after


def _accepted_users(emulator: TrackAPIEmulator) -> Counter[str]:
    ids = emulator.accepted_ids()
    assert [i for i, n in ids.items() if n > 1] == [], "an operation id arrived twice"
    return Counter(op["identifiers"]["id"] for op in emulator.events("task_done"))


class TestInstall:
    @pytest.mark.parametrize("setup", ["install", "dictconfig"])
    def test_every_task_that_ran_has_its_event_once(
        self, emulator: TrackAPIEmulator, tmp_path: Path, setup: str
    ) -> None:
        # Children recycled every 10 tasks, then a warm shutdown with tasks running.
        ran = _run_worker(emulator, tmp_path, setup)
        assert len(set(ran.values())) > 2, "no child was recycled"
        emulator.wait_for_operations(len(ran), timeout=5.0)
        users = _accepted_users(emulator)
        assert [u for u, n in users.items() if n > 1] == [], "an event arrived twice"
        assert set(users) == set(ran)


class TestWithoutInstall:
    @pytest.mark.parametrize("setup", ["none", "no-hijack"])
    def test_events_are_lost(self, emulator: TrackAPIEmulator, tmp_path: Path, setup: str) -> None:
        # none: the hijacked root logger lost the handler; no-hijack: the handler stays,
        # but children leave with os._exit before anything was sent.
        ran = _run_worker(emulator, tmp_path, setup)
        assert len(ran) >= RAN_BEFORE_SIGTERM
        assert _accepted_users(emulator) == Counter()
