"""The shop's events, asserted in one line each with the cio_events fixture; and one
signup delivered end to end to the Track API emulator."""

from django.test import Client

from customerio_logging import Bridge
from customerio_logging.testing import TrackAPIEmulator


def test_signup_sends_signed_up(client: Client, cio_events) -> None:
    client.post("/signup/", {"plan": "pro"})
    cio_events.assert_sent("signed_up", user_id="42", plan="pro")


def test_a_logged_in_user_viewing_prices_is_sent_as_the_user(client: Client, cio_events) -> None:
    client.get("/pricing/")
    cio_events.assert_sent("viewed_pricing", user_id="42")


def test_a_visitor_viewing_prices_is_sent_with_their_anonymous_id(
    visitor: Client, cio_events
) -> None:
    visitor.get("/pricing/")
    cio_events.assert_sent("viewed_pricing", anonymous_id=visitor.session["cio_anonymous_id"])


def test_an_unknown_plan_sends_nothing(client: Client, cio_events) -> None:
    assert client.post("/signup/", {"plan": "platinum"}).status_code == 400
    assert cio_events.events == []


def test_signing_up_needs_a_login(visitor: Client, cio_events) -> None:
    assert visitor.post("/signup/", {"plan": "pro"}).status_code == 302
    assert cio_events.named("signed_up") == []


def test_signup_reaches_the_track_api(
    client: Client, cio_bridge: Bridge, track_api_emulator: TrackAPIEmulator
) -> None:
    client.post("/signup/", {"plan": "pro"})
    assert cio_bridge.flush()
    (event,) = track_api_emulator.events("signed_up")
    assert event["identifiers"] == {"id": "42"}
    assert event["attributes"] == {"plan": "pro"}
