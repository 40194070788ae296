"""The events the shop sends, declared: configure() checks each logged event against them."""

from typing import Literal

import customerio_logging as cio

Plan = Literal["free", "pro", "team"]
PLANS: tuple[str, ...] = ("free", "pro", "team")


class SignedUp(cio.Event, name="signed_up"):
    plan: Plan


class ViewedPricing(cio.Event, name="viewed_pricing"):
    pass
