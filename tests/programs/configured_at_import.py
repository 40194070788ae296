"""An app module that configures customerio_logging when imported, as many do, then logs,
calls the direct API and sends an email: run with CUSTOMERIO_ENABLED=0 and nothing else."""

import logging
import signal
import sys
import threading

import customerio_logging as cio

cio.configure()  # at import: no credentials in the environment

log = logging.getLogger("app")
log.addHandler(cio.CustomerIOHandler())
log.setLevel(logging.INFO)


def main() -> None:
    log.info("signed_up", extra={"cio_event": True, "user_id": "u1", "plan": "pro"})
    receipt = cio.track("u1", "upgraded", plan="pro")
    answer = cio.send_email(
        transactional_message_id="1", to="a@example.com", identifiers={"id": "u1"}
    )
    print("outcome", receipt.result(0).status, receipt.result(0).ok)
    print("email", answer)
    print("threads", sorted(t.name for t in threading.enumerate()))
    print("sigterm default", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    print("flush", cio.flush(), "stats", cio.stats())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
