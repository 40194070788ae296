"""An app whose batch hangs in flight (the API accepts and never answers), then ends logging.

Settings come from the environment (CUSTOMERIO_*); shutdown_timeout is 1 s. argv[1]:
``logging-shutdown`` calls logging.shutdown() itself; ``dictconfig`` configures logging
again; ``close`` closes the handler twice. Each step prints how long it took. Then the
app exits without flushing: the exit hook has its one deadline.
"""

import logging
import logging.config
import sys
import time

import customerio_logging as cio

mode = sys.argv[1]
cio.configure(shutdown_timeout=1.0, request_timeout=30.0, flush_interval=0.05)
logging.config.dictConfig(
    {
        "version": 1,
        "handlers": {"cio": {"class": "customerio_logging.CustomerIOHandler"}},
        "root": {"level": "INFO", "handlers": ["cio"]},
    }
)
log = logging.getLogger("app")
for i in range(10):
    log.info("job_done", extra={"cio_event": True, "user_id": f"u{i}"})
# The flush cannot finish: when it gives up, the batch is in flight, hanging.
print(f"flushed={cio.flush(0.5)}", flush=True)

started = time.monotonic()
if mode == "logging-shutdown":
    logging.shutdown()
elif mode == "dictconfig":
    logging.config.dictConfig({"version": 1, "root": {"level": "WARNING", "handlers": []}})
elif mode == "close":
    (handler,) = logging.getLogger().handlers
    handler.close()
    handler.close()
print(f"{mode} took {time.monotonic() - started:.3f}s", flush=True)
log.warning("job_done", extra={"cio_event": True, "user_id": "late"})
