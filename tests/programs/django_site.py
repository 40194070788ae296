"""A small Django site, set up in this process only, that serves requests given on the command
line and prints what happened as one JSON line.

``SITE`` (JSON, in the environment) shapes the settings: ``customerio`` (the CUSTOMERIO
setting; absent: none), ``anonymous_key`` (CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY),
``middleware`` (MIDDLEWARE; the default has sessions, a stand-in for
AuthenticationMiddleware and CustomerIOMiddleware). The stand-in reads the user from the
``X-User`` header (a user id, or ``broken`` for a user whose ``is_authenticated`` raises),
so no database is needed.

argv[1] (JSON) lists the requests: ``{"path": ..., "user": ..., "client": "sync"|"async"}``;
requests share one session (cookie) per client kind. Printed: ``setup_error`` if
``django.setup()`` refused the settings; else ``settings`` (the bridge's), ``responses``
(status and body, or the exception raised), ``flushed``, ``stats`` and ``warnings`` (the
``customerio_logging`` logger's).
"""

import asyncio
import json
import logging
import os
import sys
from typing import Any

import django
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import AsyncClient, Client
from django.urls import path
from django.utils.decorators import sync_and_async_middleware

import customerio_logging as cio

SITE = json.loads(os.environ.get("SITE", "{}"))
log = logging.getLogger("shop")


class SignedUp(cio.Event, name="signed_up"):
    plan: str


class BrokenUser:
    @property
    def is_authenticated(self) -> bool:
        raise RuntimeError("the user table is gone")


def _set_user(request: Any) -> None:
    from django.contrib.auth.models import AnonymousUser, User

    header = request.headers.get("X-User")
    if header == "broken":
        request.user = BrokenUser()
    else:
        request.user = AnonymousUser() if header is None else User(pk=int(header))


@sync_and_async_middleware
def header_user(get_response: Any) -> Any:
    """Stands in for AuthenticationMiddleware: request.user from the X-User header."""
    if iscoroutinefunction(get_response):

        async def middleware(request: Any) -> Any:
            _set_user(request)
            return await get_response(request)

    else:

        def middleware(request: Any) -> Any:
            _set_user(request)
            return get_response(request)

    return middleware


def signup(request: Any) -> HttpResponse:
    log.info("signed_up", extra={"cio_event": True, "plan": request.GET.get("plan", "free")})
    return HttpResponse("sync")


async def signup_async(request: Any) -> HttpResponse:
    await asyncio.sleep(0)
    log.info("signed_up", extra={"cio_event": True, "plan": request.GET.get("plan", "free")})
    return HttpResponse("async")


def invite(request: Any) -> HttpResponse:
    # Sent to the invitee, not the user who invites: user_id=None removes the bound one.
    extra = {"cio_event": True, "user_id": None, "email": request.GET["email"]}
    log.info("invited", extra=extra)
    return HttpResponse("invited")


def change_email(request: Any) -> HttpResponse:
    # About the logged-in user: the new email is data.
    log.info("email_changed", extra={"cio_event": True, "email": request.GET["email"]})
    return HttpResponse("changed")


def visit(request: Any) -> HttpResponse:
    request.session[SITE["anonymous_key"]] = request.GET["anonymous_id"]
    return HttpResponse("visited")


urlpatterns = [
    path("signup/", signup),
    path("signup-async/", signup_async),
    path("invite/", invite),
    path("change-email/", change_email),
    path("visit/", visit),
]


def configure_django() -> None:
    extra = {}
    if "customerio" in SITE:
        extra["CUSTOMERIO"] = SITE["customerio"]
    if "anonymous_key" in SITE:
        extra["CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY"] = SITE["anonymous_key"]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF="__main__",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "customerio_logging.integrations.django",
        ],
        MIDDLEWARE=SITE.get(
            "middleware",
            [
                "django.contrib.sessions.middleware.SessionMiddleware",
                "__main__.header_user",
                "customerio_logging.integrations.django.CustomerIOMiddleware",
            ],
        ),
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={},
        **extra,
    )


def bridge_settings() -> dict[str, Any]:
    found = cio.get_bridge().settings
    return {
        "site_id": found.site_id,
        "track_url": found.track_url,
        "enabled": found.enabled,
        "flush_interval": found.flush_interval,
        "events": [event.event_name for event in found.events],
        "unknown_events": found.unknown_events,
    }


def serve(requests: list[dict[str, Any]]) -> list[Any]:
    clients: dict[str, Any] = {"sync": Client(), "async": AsyncClient()}
    responses = []
    for request in requests:
        headers = {} if request.get("user") is None else {"X-User": str(request["user"])}
        client = clients[request.get("client", "sync")]
        try:
            if request.get("client") == "async":
                response = asyncio.run(client.get(request["path"], headers=headers))
            else:
                response = client.get(request["path"], headers=headers)
        except Exception as exc:
            responses.append({"raised": type(exc).__name__, "message": str(exc)})
            continue
        responses.append({"status": response.status_code, "body": response.content.decode()})
    return responses


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> None:
    configure_django()
    warnings = Collected()
    logging.getLogger("customerio_logging").addHandler(warnings)
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(json.dumps({"setup_error": str(exc)}))
        return
    log.setLevel(logging.INFO)
    log.addHandler(cio.CustomerIOHandler())
    responses = serve(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])
    flushed = cio.flush(5.0)
    stats = cio.stats()
    print(
        json.dumps(
            {
                "settings": bridge_settings(),
                "responses": responses,
                "flushed": flushed,
                "stats": {"sent": stats.sent, "invalid": stats.invalid},
                "warnings": warnings.messages,
            }
        )
    )


if __name__ == "__main__":
    main()
