"""A Celery app with install(app): every task's event is delivered, tasks running at
SIGTERM and children recycled by ``--max-tasks-per-child`` included.

Run it all against the local emulator (a filesystem broker in a temporary folder: no
server needed): it starts a prefork worker, queues 12 tasks, SIGTERMs the worker while
some still run, and prints what arrived:

    python examples/celery_app.py

Or run a worker yourself: ``CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... celery
--workdir examples -A celery_app worker -c 2 --max-tasks-per-child 5 -l INFO``.
"""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

import customerio_logging as cio
from customerio_logging.integrations.celery import install

BROKER = os.environ.get("EXAMPLE_BROKER_DIR") or tempfile.mkdtemp(prefix="celery-broker-")
app = Celery("celery_app", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": BROKER,
        "data_folder_out": BROKER,
        "processed_folder": BROKER,
        "control_folder": BROKER,
    },
    task_ignore_result=True,
)

# A handler on the root logger, as many apps do; install() keeps it there when Celery
# takes the root logger over, and makes every pool child deliver before it exits.
logging.getLogger().addHandler(cio.CustomerIOHandler())
install(app)
log = logging.getLogger("billing")
log.setLevel(logging.INFO)


@app.task
def send_invoice(user_id: str) -> None:
    time.sleep(0.2)
    log.info("invoice_sent", extra={"cio_event": True, "user_id": user_id})


def _demo() -> None:
    from customerio_logging.testing import TrackAPIEmulator

    with TrackAPIEmulator() as emulator:
        env = {
            **os.environ,
            "CUSTOMERIO_SITE_ID": emulator.site_id,
            "CUSTOMERIO_TRACK_API_KEY": emulator.api_key,
            "CUSTOMERIO_TRACK_URL": emulator.url,
            "CUSTOMERIO_SPOOL_PATH": "off",
            "EXAMPLE_BROKER_DIR": BROKER,
        }
        users = [f"user-{i}" for i in range(12)]
        for user in users:
            send_invoice.delay(user)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "--quiet", "--workdir", str(Path(__file__).parent),
             "-A", "celery_app", "worker", "-c", "2", "--max-tasks-per-child", "5",
             "-l", "WARNING"],
            env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(emulator.operations) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)  # half of the tasks are done: the rest run at SIGTERM
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
        arrived = sorted(op["identifiers"]["id"] for op in emulator.operations)
        print(f"{len(users)} tasks queued, worker stopped with SIGTERM; events that arrived:")
        for user in arrived:
            print(f"  invoice_sent for {user}")
        print("all delivered, each once" if arrived == sorted(users) else "NOT ALL, OR TWICE")


if __name__ == "__main__":
    _demo()
