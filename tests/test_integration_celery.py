"""A real Celery prefork worker: each task's event arrives once, recycling and SIGTERM included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import customerio_logging
from customerio_logging.testing import TrackAPIEmulator

from .helpers import PROGRAMS, python_env, wait_until

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
        "control_folder": str(broker),
    }
    users = {f"u{i}" for i in range(count)}
    with producer.connection_for_write() as connection:
        for i in range(count):
            producer.send_task("celery_app.work", args=[f"u{i}", i], connection=connection)
    return users


@contextlib.contextmanager
def _worker(
    emulator: TrackAPIEmulator, tmp_path: Path, setup: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A worker started on N queued tasks, and the folder where the tasks that ran leave a
    file (user id -> pid of the child that ran it); the worker's process group is killed
    at the end, whatever happened."""
    broker, ran = tmp_path / "broker", tmp_path / "ran"
    broker.mkdir()
    ran.mkdir()
    _send_tasks(broker, N)
    env = python_env(
        {
            "PYTHONPATH": os.pathsep.join([str(SRC), str(PROGRAMS)]),
            "CELERY_BROKER_DIR": str(broker),
            "TASKS_RAN_DIR": str(ran),
            "APP_SETUP": setup,
        },
        emulator=emulator,
    )
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
            yield worker, ran
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _wait_for_tasks(worker: subprocess.Popen[bytes], ran: Path, count: int) -> set[str]:
    """Wait until ``count`` tasks ran; return their user ids."""
    done = wait_until(lambda: len(os.listdir(ran)) >= count or worker.poll() is not None, TIMEOUT)
    log = (ran.parent / "worker.log").read_text
    assert done, log()
    assert worker.poll() is None, log()
    return set(os.listdir(ran))


def _run_worker(emulator: TrackAPIEmulator, tmp_path: Path, setup: str) -> dict[str, str]:
    """Start the worker, SIGTERM it once RAN_BEFORE_SIGTERM tasks ran, wait for it to end;
    return the tasks that ran: user id -> pid of the child that ran it.

    Tasks the pool had taken still run after the SIGTERM (a warm shutdown): some must
    end after it.
    """
    with _worker(emulator, tmp_path, setup) as (worker, ran):
        before = _wait_for_tasks(worker, ran, RAN_BEFORE_SIGTERM)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(TIMEOUT) == 0, (tmp_path / "worker.log").read_text()
    after = {path.name: path.read_text() for path in ran.iterdir()}
    assert set(after) - before, "no task was running at SIGTERM"
    return after


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


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

    @pytest.mark.skipif(sys.platform != "linux", reason="Linux parent-death signal")
    def test_children_still_die_with_the_worker(
        self, emulator: TrackAPIEmulator, tmp_path: Path
    ) -> None:
        # The replacements of recycled children get our parent-death signal in place of
        # Celery's SIGKILL: they must still end when the worker process is killed (by
        # that signal, or on their own when the pool's pipes close, whichever is first).
        with _worker(emulator, tmp_path, "install") as (worker, ran):
            _wait_for_tasks(worker, ran, 25)  # a child has been recycled: its replacement runs
            children = {int(path.read_text()) for path in ran.iterdir()}
            assert len(children) > 2, "no child was recycled"
            worker.kill()
            worker.wait()
            assert wait_until(lambda: not any(map(_alive, children)), 5.0), "orphans"


class TestWithoutInstall:
    @pytest.mark.parametrize("setup", ["none", "no-hijack"])
    def test_events_are_lost(self, emulator: TrackAPIEmulator, tmp_path: Path, setup: str) -> None:
        # none: the hijacked root logger lost the handler; no-hijack: the handler stays,
        # but children leave with os._exit before anything was sent.
        ran = _run_worker(emulator, tmp_path, setup)
        assert len(ran) >= RAN_BEFORE_SIGTERM
        assert _accepted_users(emulator) == Counter()
