"""The demo's app: a small app logging through stdlib and structlog into the local emulator."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from typing import Any

from .. import _global
from .._schema import Event
from ..handler import CustomerIOHandler
from ..processor import CustomerIOProcessor
from ..testing import TrackAPIEmulator

__all__ = ["run_demo"]


class SignedUp(Event, name="signed_up"):
    """A demo event: a person created an account."""

    plan: str
    referrer: str | None = None


class PlanChanged(Event, name="plan_changed"):
    """A demo event: a person moved between plans."""

    from_: str
    to: str


def run_demo(*, events: int = 300, as_json: bool = False) -> int:
    """Log ``events`` tagged events (one of them invalid) and print what happened."""
    out: dict[str, Any] = {}
    with TrackAPIEmulator() as emulator:
        bridge = _global.configure(
            site_id=emulator.site_id,
            api_key=emulator.api_key,
            track_url=emulator.url,
            events=[SignedUp, PlanChanged],
            unknown_events="reject",
            flush_interval=0.2,
            spool_path=False,  # a demo leaves no file behind
            # Its own emulator, never a workspace: it runs whatever CUSTOMERIO_ENABLED says.
            enabled=True,
        )
        started = time.perf_counter()
        logged = _log_through_stdlib(events // 2) + _log_through_structlog(events - events // 2)
        delivered_all = bridge.flush(10.0)
        elapsed = time.perf_counter() - started
        stats = bridge.stats()
        operations = emulator.operations
        requests = [r for r in emulator.requests if r.path == "/api/v2/batch"]
        out = {
            "emulator": emulator.url,
            "logged": logged,
            "delivered": len(operations),
            "delivered_by_name": dict(Counter(op.get("name") for op in operations)),
            "batches": [r.op_count for r in requests],
            "seconds": round(elapsed, 3),
            "flush_ok": delivered_all,
            "example_operation": operations[0] if operations else None,
            "rejected": [
                {"name": d.name, "reason": d.reason, "field": d.field, "message": d.message}
                for d in bridge.dead_letters()
            ],
            "stats": {
                k: getattr(stats, k)
                for k in ("enqueued", "sent", "invalid", "failed", "dropped", "batches")
            },
        }
        _global.shutdown()
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        _print_summary(out)
    ok = out["delivered"] == out["logged"] - len(out["rejected"]) and out["flush_ok"]
    return 0 if ok else 1


def _log_through_stdlib(count: int) -> int:
    log = logging.getLogger("demo.stdlib")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = CustomerIOHandler()
    log.addHandler(handler)
    try:
        for i in range(count):
            user = f"user-{i % 50}"
            if i % 3 == 0:
                log.info("signed_up", extra={"cio_event": True, "user_id": user, "plan": "free"})
            else:
                log.info(
                    "plan changed for %s",
                    user,
                    extra={
                        "cio_event": "plan_changed",
                        "user_id": user,
                        "from_": "free",
                        "to": "pro",
                    },
                )
            log.info("an ordinary log line: never sent to Customer.io")
    finally:
        log.removeHandler(handler)
    return count


def _log_through_structlog(count: int) -> int:
    try:
        import structlog
    except ImportError:
        print(
            "structlog is not installed: pip install 'customerio-logging[structlog]'",
            file=sys.stderr,
        )
        return _log_through_stdlib(count)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            CustomerIOProcessor(),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),  # the demo prints a summary instead
    )
    log = structlog.get_logger()
    for i in range(count - 1):
        structlog.contextvars.bind_contextvars(user_id=f"user-{i % 50}", request_id=f"req-{i}")
        log.info("plan_changed", cio_event=True, from_="pro", to="team")
    # One invalid event on purpose: `to` is required by PlanChanged.
    log.info("plan_changed", cio_event=True, user_id="user-0", from_="team")
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    return count


def _print_summary(out: dict[str, Any]) -> None:
    print(f"Track API emulator listening on {out['emulator']}")
    print(f"Logged {out['logged']} tagged events (plus as many untagged lines, not sent).")
    batches = out["batches"]
    print(
        f"Delivered {out['delivered']} operations in {len(batches)} batch requests "
        f"(sizes {', '.join(map(str, batches))}) in {out['seconds']}s."
    )
    for name, count in sorted(out["delivered_by_name"].items()):
        print(f"  {name}: {count}")
    print("One delivered operation, as the Track API received it:")
    print("  " + json.dumps(out["example_operation"]))
    print(f"Rejected {len(out['rejected'])} event(s) before sending:")
    for item in out["rejected"]:
        print(f"  {item['name']}: {item['reason']} ({item['field']}): {item['message']}")
    print("stats(): " + ", ".join(f"{k}={v}" for k, v in out["stats"].items()))
