"""The emulator's App API: the transactional send endpoints' bearer auth, request checks and
answers, as the App API reference describes them."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from typing import Any, Final

from ._http import Reply

__all__ = ["APP_PATHS", "answer_send", "app_error"]

APP_PATHS: Final = {"/v1/send/email": "email", "/v1/send/push": "push"}
"""The App API endpoints the emulator serves, and the kind of message each sends."""

_IDENTIFIERS: Final = ("id", "email", "cio_id")
_MAX_RECIPIENTS: Final = 15  # across to, cc and bcc
_MAX_ATTACHMENT_BYTES: Final = 2 * 1024 * 1024  # all attachments together, decoded


def app_error(status: int, message: str) -> Reply:
    """An App API error: ``{"meta": {"error": message}}``."""
    return Reply(status, {"meta": {"error": message}}, errors=[{"message": message}])


def answer_send(kind: str, body: bytes, headers: dict[str, str], app_api_key: str) -> Reply:
    """Answer ``POST /v1/send/<kind>`` as the App API would.

    Returns:
        401 without the right ``Authorization: Bearer <key>``; 400 (its ``meta.error``
        saying what to fix) for a request the API refuses; else 200 with a new
        ``delivery_id`` and ``queued_at``, the delivery in ``accepted``.
    """
    expected = f"Bearer {app_api_key}".encode()
    if not secrets.compare_digest(headers.get("authorization", "").encode(), expected):
        return app_error(401, "Unauthorized request")
    try:
        request = json.loads(body)
    except ValueError:
        return app_error(400, "the request body is not JSON")
    if not isinstance(request, dict):
        return app_error(400, "the request body must be a JSON object")
    problem = _check_common(request) or (
        _check_email(request) if kind == "email" else _check_push(request)
    )
    if problem is not None:
        return app_error(400, problem)
    answer = {"delivery_id": _delivery_id(), "queued_at": int(time.time())}
    delivery = {"type": kind, **answer, "request": request}
    return Reply(200, answer, op_count=1, accepted=[delivery])


def _delivery_id() -> str:
    # The real ones are opaque URL-safe strings of about this length.
    return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode("ascii")


def _check_common(request: dict[str, Any]) -> str | None:
    identifiers = request.get("identifiers")
    if not isinstance(identifiers, dict):
        return "identifiers is required: an object with one of id, email or cio_id"
    given = [key for key in identifiers if key in _IDENTIFIERS]
    if len(given) != 1 or len(identifiers) != 1:
        return "identifiers must have exactly one of id, email or cio_id"
    value = identifiers[given[0]]
    valid_id = given[0] == "id" and isinstance(value, int) and not isinstance(value, bool)
    if not valid_id and not (isinstance(value, str) and value.strip()):
        return f"identifiers.{given[0]} must be a non-empty string"
    message_id = request.get("transactional_message_id")
    if message_id is not None and not _is_message_id(message_id):
        return (
            "transactional_message_id must be a message's id (an integer) or its "
            "trigger name (a string)"
        )
    for name in ("message_data", "custom_data", "headers"):
        if name in request and not isinstance(request[name], dict):
            return f"{name} must be an object"
    send_at = request.get("send_at")
    if send_at is not None and (not isinstance(send_at, int) or isinstance(send_at, bool)):
        return "send_at must be a Unix timestamp in seconds"
    return None


def _is_message_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value > 0) or (isinstance(value, str) and bool(value))


def _check_email(request: dict[str, Any]) -> str | None:
    to = request.get("to")
    if not isinstance(to, str) or not to.strip():
        return "to is required: the recipients' addresses, separated by commas"
    recipients = 0
    for name in ("to", "cc", "bcc"):
        value = request.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a string of addresses separated by commas"
        recipients += len([part for part in (value or "").split(",") if part.strip()])
    if recipients > _MAX_RECIPIENTS:
        return f"at most {_MAX_RECIPIENTS} recipients across to, cc and bcc; got {recipients}"
    if request.get("transactional_message_id") is None:
        missing = [name for name in ("body", "subject", "from") if not request.get(name)]
        if missing:
            return (
                f"without a transactional_message_id, {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} required"
            )
    return _check_attachments(request.get("attachments"))


def _check_attachments(attachments: object) -> str | None:
    if attachments is None:
        return None
    if not isinstance(attachments, dict):
        return "attachments must be an object of file names to base64 contents"
    total = 0
    for name, content in attachments.items():
        if "." not in name.strip(".") or not isinstance(content, str):
            return "each attachment needs a file name with an extension and base64 contents"
        try:
            total += len(base64.b64decode(content, validate=True))
        except (binascii.Error, ValueError):
            return "attachment contents must be base64"
    if total >= _MAX_ATTACHMENT_BYTES:
        return f"attachments must total less than {_MAX_ATTACHMENT_BYTES} bytes; got {total}"
    return None


def _check_push(request: dict[str, Any]) -> str | None:
    if request.get("transactional_message_id") is None:
        return "transactional_message_id is required: the push message's id or trigger name"
    return None
