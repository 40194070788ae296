"""An app configured with logging.config.dictConfig only; settings from the environment."""

import logging
import logging.config
import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 100

logging.config.dictConfig(
    {
        "version": 1,
        "handlers": {
            "cio": {"class": "customerio_logging.CustomerIOHandler", "level": "INFO"},
            "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "root": {"level": "INFO", "handlers": ["cio", "console"]},
    }
)
log = logging.getLogger("shop")
for i in range(count):
    log.info("order_placed", extra={"cio_event": True, "email": f"c{i}@example.com", "total": i})
if len(sys.argv) > 2 and sys.argv[2] == "reconfigure":
    # Re-configuring flushes and closes the old handlers while logging's module lock is
    # held.
    import time

    started = time.monotonic()
    logging.config.dictConfig({"version": 1, "root": {"level": "WARNING", "handlers": []}})
    print(f"reconfigure took {time.monotonic() - started:.3f}s", file=sys.stderr)
