"""A structlog app with a declared event taxonomy, sending to the local emulator.

Run: python examples/structlog_app.py
"""

import structlog

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator


class PlanChanged(cio.Event, name="plan_changed"):
    from_: str
    to: str


with TrackAPIEmulator() as emulator:
    cio.configure(
        site_id=emulator.site_id,
        api_key=emulator.api_key,
        track_url=emulator.url,
        events=[PlanChanged],
        unknown_events="warn",
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            cio.CustomerIOProcessor(),
            structlog.processors.JSONRenderer(),
        ]
    )
    log = structlog.get_logger()

    structlog.contextvars.bind_contextvars(user_id="u1", request_id="req-42")
    log.info("plan_changed", cio_event=True, from_="free", to="pro")
    log.info("plan_changed", cio_event=True, from_="pro")  # invalid: `to` is missing

    cio.flush()
    print(emulator.operations)
    for letter in cio.get_bridge().dead_letters():
        print("rejected:", letter.name, letter.reason, letter.field, letter.message)
