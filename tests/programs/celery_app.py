"""A Celery app whose tasks each log one tagged event; run by ``celery -A celery_app worker``.

Set up the way the issue found events lost: a CustomerIOHandler on the root logger at
import, settings from CUSTOMERIO_* variables. Nothing is sent before a process exits
(flush_interval 60 s), so every event reaches the API by the exit path alone.

Environment: CELERY_BROKER_DIR, the filesystem broker's folder; TASKS_RAN_DIR, where each
task leaves a file named by its user id (holding its pid) once it has logged; APP_SETUP:
``install`` (install(app)), ``dictconfig`` (the handler from dictConfig alone, through
the integration's factory), ``none`` (neither), ``no-hijack`` (neither, but Celery keeps
the root logger's handlers).
"""

import logging
import logging.config
import os
import time
from pathlib import Path

from celery import Celery
from celery.utils.log import get_task_logger

import customerio_logging as cio
from customerio_logging.integrations.celery import install

SETUP = os.environ["APP_SETUP"]
broker = os.environ["CELERY_BROKER_DIR"]
app = Celery("celery_app", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": broker,
        "data_folder_out": broker,
        "processed_folder": broker,
        "control_folder": broker,
        "polling_interval": 0.05,
    },
    task_ignore_result=True,
    worker_hijack_root_logger=SETUP != "no-hijack",
)

cio.configure(flush_interval=60.0)
if SETUP == "dictconfig":
    logging.config.dictConfig(
        {
            "version": 1,
            "handlers": {"cio": {"()": "customerio_logging.integrations.celery.handler"}},
            "root": {"handlers": ["cio"], "level": "INFO"},
        }
    )
else:
    logging.getLogger().addHandler(cio.CustomerIOHandler())
    if SETUP == "install":
        install(app)

app_log = logging.getLogger("app")
task_log = get_task_logger(__name__)  # Celery's: it does not propagate to the root logger
ran = Path(os.environ["TASKS_RAN_DIR"])


@app.task
def work(user_id: str, n: int) -> None:
    time.sleep(0.05)
    log = app_log if n % 2 else task_log
    log.info("task_done", extra={"cio_event": True, "user_id": user_id, "n": n})
    (ran / user_id).write_text(str(os.getpid()))
