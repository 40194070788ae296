"""An app that logs tagged events through structlog and stdlib and exits without flushing.

Settings come from the environment (CUSTOMERIO_*). argv: events per path (default 2000).
"""

import logging
import sys

import structlog

import customerio_logging as cio

count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        cio.CustomerIOProcessor(),
        structlog.processors.JSONRenderer(),
    ],
    logger_factory=structlog.ReturnLoggerFactory(),
)
slog = structlog.get_logger()

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.addHandler(cio.CustomerIOHandler())

for i in range(count):
    slog.info("plan_changed", cio_event=True, user_id=f"s{i}", from_="free", to="pro", n=i)
    slog.info("untagged structlog line", user_id=f"s{i}")
    log.info(
        "plan_changed",
        extra={"cio_event": True, "user_id": f"l{i}", "from_": "free", "to": "pro", "n": i},
    )
    log.info("untagged stdlib line", extra={"user_id": f"l{i}"})
    log.info("tagged false", extra={"cio_event": False, "user_id": f"x{i}"})
# No flush(), no shutdown(): the exit hook must deliver.
