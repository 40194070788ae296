"""Calls every direct function, configured from the environment, awaits every receipt in
asyncio and prints {label: [status, reason, field, id]} as JSON.

Modes: "up" (every call; one invalid, one the API refuses in a 207), "down" (the API is
unreachable, the spool on: the receipts resolve when shutdown's deadline writes the
batches to the spool).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Literal

import customerio_logging as cio


class PlanChanged(cio.Event, name="plan_changed"):
    from_: str
    to: Literal["free", "starter", "pro", "enterprise"]
    mrr: float


class Customer(cio.UserAttributes):
    email: str
    plan: str


def calls() -> dict[str, cio.Receipt]:
    return {
        "track": cio.track("u1", PlanChanged(from_="free", to="pro", mrr=49.0)),
        "track_name": cio.track("u2", "signed_up", plan="pro"),
        "identify": cio.identify("u1", Customer(email="a@example.com", plan="pro")),
        "track_anonymous": cio.track_anonymous("anon-7", "page_viewed", url="/pricing"),
        "page": cio.page("u1", "/pricing", referrer="ads"),
        "screen": cio.screen("u1", "Settings"),
        "suppress": cio.suppress("u3"),
        "unsuppress": cio.unsuppress("u3"),
        "delete": cio.delete("u4"),
        "add_device": cio.add_device("u1", "tok-1", platform="ios"),
        "delete_device": cio.delete_device("u1", "tok-1"),
        "merge": cio.merge(primary={"id": "u1"}, secondary={"email": "b@example.com"}),
    }


async def outcomes(receipts: dict[str, cio.Receipt]) -> dict[str, list[object]]:
    done = await asyncio.gather(*receipts.values())
    return {
        label: [o.status, o.reason, o.field, r.id]
        for (label, r), o in zip(receipts.items(), done, strict=True)
    }


def main(mode: str) -> None:
    cio.configure(
        events=[PlanChanged],
        flush_interval=0.05,
        retry_base_delay=0.05,
        install_signal_handlers=False,
    )
    receipts = calls()
    if mode == "up":
        receipts["invalid"] = cio.track("u1", "plan_changed", from_="free", to="gold", mrr=1.0)
        receipts["refused"] = cio.track("u1", "refused_by_the_api")
    else:
        # The exit's deadline: what is still being retried goes to the spool.
        asyncio.run(asyncio.sleep(0.2))
        cio.shutdown(1.0)
    print(json.dumps(asyncio.run(outcomes(receipts))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
