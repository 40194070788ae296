"""The emulator's App API: bearer auth, the send endpoints' checks, answers and faults."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import basic_auth

VALID_EMAIL: dict[str, Any] = {
    "transactional_message_id": 3,
    "to": "a@example.com",
    "identifiers": {"id": "u1"},
}
VALID_PUSH: dict[str, Any] = {"transactional_message_id": "welcome", "identifiers": {"id": "u1"}}


def post(
    emulator: TrackAPIEmulator, kind: str, body: object, *, key: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {emulator.app_api_key if key is None else key}"}
    return requests.post(f"{emulator.url}/v1/send/{kind}", json=body, headers=headers, timeout=5)


class TestAuth:
    @pytest.mark.parametrize("key", ["wrong", ""])
    def test_a_wrong_bearer_is_401(self, emulator: TrackAPIEmulator, key: str) -> None:
        reply = post(emulator, "email", VALID_EMAIL, key=key)
        assert reply.status_code == 401
        assert reply.json() == {"meta": {"error": "Unauthorized request"}}
        assert emulator.transactional == []

    def test_the_track_apis_basic_auth_is_401(self, emulator: TrackAPIEmulator) -> None:
        reply = requests.post(
            f"{emulator.url}/v1/send/email",
            json=VALID_EMAIL,
            headers={"Authorization": basic_auth(emulator.site_id, emulator.api_key)},
            timeout=5,
        )
        assert reply.status_code == 401

    def test_the_app_key_does_not_open_the_track_api(self, emulator: TrackAPIEmulator) -> None:
        reply = requests.post(
            f"{emulator.url}/api/v2/batch",
            json={"batch": []},
            headers={"Authorization": f"Bearer {emulator.app_api_key}"},
            timeout=5,
        )
        assert reply.status_code == 401


class TestAnswers:
    @pytest.mark.parametrize(("kind", "body"), [("email", VALID_EMAIL), ("push", VALID_PUSH)])
    def test_a_valid_send_is_queued_and_recorded(
        self, emulator: TrackAPIEmulator, kind: str, body: dict[str, Any]
    ) -> None:
        reply = post(emulator, kind, body)
        assert reply.status_code == 200
        answer = reply.json()
        assert set(answer) == {"delivery_id", "queued_at"}
        assert emulator.transactional == [{"type": kind, **answer, "request": body}]
        assert emulator.operations == []  # not a Track API operation
        [recorded] = emulator.requests
        assert (recorded.status, recorded.op_count) == (200, 1)

    def test_delivery_ids_are_unique(self, emulator: TrackAPIEmulator) -> None:
        ids = {post(emulator, "push", VALID_PUSH).json()["delivery_id"] for _ in range(5)}
        assert len(ids) == 5

    def test_reset_forgets_them(self, emulator: TrackAPIEmulator) -> None:
        post(emulator, "email", VALID_EMAIL)
        emulator.reset()
        assert emulator.transactional == []

    @pytest.mark.parametrize(
        ("kind", "change", "says"),
        [
            ("email", {"identifiers": None}, "identifiers is required"),
            ("email", {"identifiers": {"id": "u1", "email": "a@example.com"}}, "exactly one"),
            ("email", {"identifiers": {"phone": "1"}}, "exactly one"),
            ("email", {"identifiers": {"email": ""}}, "non-empty"),
            ("email", {"to": None}, "to is required"),
            ("email", {"to": ",".join(f"u{i}@example.com" for i in range(16))}, "at most 15"),
            ("email", {"transactional_message_id": None}, "body, subject, from are required"),
            ("email", {"transactional_message_id": True}, "transactional_message_id"),
            ("email", {"message_data": [1]}, "message_data must be an object"),
            ("email", {"send_at": "tomorrow"}, "send_at"),
            ("email", {"attachments": {"noextension": "aGk="}}, "extension"),
            ("email", {"attachments": {"a.txt": "not base64!"}}, "base64"),
            ("push", {"transactional_message_id": None}, "transactional_message_id is required"),
            ("push", {"identifiers": {"cio_id": 7}}, "non-empty string"),
        ],
    )
    def test_an_invalid_send_is_400(
        self, emulator: TrackAPIEmulator, kind: str, change: dict[str, Any], says: str
    ) -> None:
        base = VALID_EMAIL if kind == "email" else VALID_PUSH
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        reply = post(emulator, kind, body)
        assert reply.status_code == 400
        assert says in reply.json()["meta"]["error"]
        assert emulator.transactional == []

    def test_an_email_without_a_template_needs_its_content(
        self, emulator: TrackAPIEmulator
    ) -> None:
        body = {
            "to": "a@example.com",
            "identifiers": {"email": "a@example.com"},
            "from": "shop@example.com",
            "subject": "Hi",
            "body": "<p>Hi</p>",
            "attachments": {"receipt.pdf": base64.b64encode(b"%PDF").decode()},
        }
        assert post(emulator, "email", body).status_code == 200

    @pytest.mark.parametrize("body", [[VALID_EMAIL], "text"])
    def test_a_body_that_is_not_an_object_is_400(
        self, emulator: TrackAPIEmulator, body: object
    ) -> None:
        reply = post(emulator, "email", body)
        assert reply.status_code == 400
        assert "JSON object" in reply.json()["meta"]["error"]


class TestFaults:
    def test_a_scripted_status_carries_retry_after(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(FaultPlan(script=(429, 503), retry_after=2))
        for status in (429, 503):
            reply = post(emulator, "email", VALID_EMAIL)
            assert reply.status_code == status
            assert reply.headers["Retry-After"] == "2"
            assert "injected" in reply.json()["meta"]["error"]
        assert post(emulator, "email", VALID_EMAIL).status_code == 200
        assert [r.fault for r in emulator.requests] == ["script", "script", None]

    def test_a_drop_after_accept_queues_it(self, emulator: TrackAPIEmulator) -> None:
        emulator.set_faults(FaultPlan(script=("drop_after_accept",)))
        with pytest.raises(requests.ConnectionError):
            post(emulator, "push", VALID_PUSH)
        assert len(emulator.transactional) == 1
        assert [r.status for r in emulator.requests] == [0]
