"""A billing webhook handler: typed events sent directly, receipts checked, and a
transactional email through the App API; all against the local emulator.

Run: python examples/webhook_app.py
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator


class PlanChanged(cio.Event, name="plan_changed"):
    from_: str
    to: Literal["free", "starter", "pro", "enterprise"]
    mrr: float


class PaymentFailed(cio.Event, name="payment_failed"):
    amount: float
    attempt: int


class Customer(cio.UserAttributes):
    email: str
    plan: str


RECEIPT_EMAIL = 7  # the transactional message's id in Customer.io


async def handle_webhook(payload: dict[str, Any]) -> dict[str, Any]:
    """What the billing provider's webhook posts, turned into Customer.io calls."""
    user = payload["customer_id"]
    if payload["type"] == "subscription.updated":
        receipts = [
            cio.track(
                user,
                PlanChanged(from_=payload["old_plan"], to=payload["new_plan"], mrr=payload["mrr"]),
            ),
            cio.identify(user, Customer(email=payload["email"], plan=payload["new_plan"])),
        ]
        # The webhook answers once Customer.io took the events (or they wait on disk).
        outcomes = await asyncio.gather(*receipts)
        answer = cio.send_email(
            transactional_message_id=RECEIPT_EMAIL,
            to=payload["email"],
            identifiers={"id": user},
            message_data={"plan": payload["new_plan"], "mrr": payload["mrr"]},
        )
        return {"events": [o.status for o in outcomes], "email": answer["delivery_id"]}
    receipt = cio.track(user, PaymentFailed(amount=payload["amount"], attempt=payload["attempt"]))
    return {"events": [(await receipt).status]}


def main() -> None:
    with TrackAPIEmulator() as emulator:
        # In production: cio.configure(events=[...]) with CUSTOMERIO_SITE_ID,
        # CUSTOMERIO_TRACK_API_KEY and CUSTOMERIO_APP_API_KEY set.
        cio.configure(
            site_id=emulator.site_id,
            api_key=emulator.api_key,
            track_url=emulator.url,
            app_api_key=emulator.app_api_key,
            app_url=emulator.url,
            events=[PlanChanged, PaymentFailed],
            flush_interval=0.1,
        )
        upgrade = {
            "type": "subscription.updated",
            "customer_id": "u1",
            "email": "u1@example.com",
            "old_plan": "free",
            "new_plan": "pro",
            "mrr": 49.0,
        }
        failed = {"type": "payment.failed", "customer_id": "u2", "amount": 49.0, "attempt": 1}
        print("upgrade:", asyncio.run(handle_webhook(upgrade)))
        print("payment failed:", asyncio.run(handle_webhook(failed)))
        for op in emulator.operations:
            print("track:", op)
        for message in emulator.transactional:
            print("transactional:", message)
        cio.shutdown()


if __name__ == "__main__":
    main()
