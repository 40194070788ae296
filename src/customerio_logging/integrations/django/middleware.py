"""CustomerIOMiddleware: binds the request's person (``bind()``) while Django handles it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from ... import bind
from ..._ownlog import warn

__all__ = ["ANONYMOUS_ID_SETTING", "CustomerIOMiddleware"]

ANONYMOUS_ID_SETTING = "CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY"
"""The Django setting naming the session key that holds a visitor's anonymous id."""
_AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


class CustomerIOMiddleware:
    """Bind the request's person to every tagged log call made while the view runs.

    A view then logs events without naming its user::

        log.info("signed_up", extra={"cio_event": True, "plan": "pro"})  # sent for the user

    For a request whose user is authenticated it binds ``user_id=str(request.user.pk)``.
    Otherwise, when the setting ``CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY`` names a session
    key, it binds ``anonymous_id`` to that key's value in the session (if there is one),
    so anonymous visitors' events are sent as anonymous events. The bound key acts as if
    the call had passed it (see :func:`customerio_logging.bind`): a view that logs an
    ``email`` still sends for the logged-in user, with the email as data; one that sends
    to someone else passes their ``user_id``, or ``user_id=None`` and their ``email``.

    Place it after ``AuthenticationMiddleware``, which sets ``request.user``. It serves
    sync and async stacks alike; in an async one it reads the user on Django's
    sync thread (``sync_to_async``), where the user may be loaded from the database.
    The binding ends when the response is returned: the body of a streaming response is
    produced after that, with nothing bound.

    It never fails a request because of a user it cannot read (a user model whose
    ``pk`` or ``is_authenticated`` raises, a database error loading it): it warns once,
    on the ``customerio_logging`` logger, and the request goes on with nothing bound.

    Override :meth:`person` to bind something else (an email, a UUID, a tenant).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.session_key = _session_key()
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)  # Django then awaits this middleware
        self._warned = False

    def __call__(self, request: Any) -> Any:
        if self._is_async:
            return self._acall(request)
        with bind(**self._person_or_nobody(request)):
            return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        fields = await sync_to_async(self._person_or_nobody)(request)
        with bind(**fields):
            return await self.get_response(request)

    def person(self, request: Any) -> dict[str, Any]:
        """The fields to bind for ``request``: its user's id, or its anonymous id, or none.

        The override point. It runs on a sync thread (the database may be used) before
        the view; what it raises is warned about once and the request goes on with
        nothing bound.
        """
        user = request.user
        if user.is_authenticated:
            pk = user.pk
            return {} if pk is None else {"user_id": str(pk)}
        if self.session_key is None:
            return {}
        return {"anonymous_id": request.session.get(self.session_key)}

    def _person_or_nobody(self, request: Any) -> dict[str, Any]:
        if not hasattr(request, "user"):
            raise ImproperlyConfigured(
                f"CustomerIOMiddleware needs request.user: put {_AUTH_MIDDLEWARE} (or the "
                f"middleware that sets request.user) before it in settings.MIDDLEWARE"
            )
        if self.session_key is not None and not hasattr(request, "session"):
            raise ImproperlyConfigured(
                f"settings.{ANONYMOUS_ID_SETTING} needs request.session: put "
                f"django.contrib.sessions.middleware.SessionMiddleware before "
                f"CustomerIOMiddleware in settings.MIDDLEWARE"
            )
        try:
            return self.person(request)
        except Exception as exc:  # noqa: BLE001 - the app's user model: never fail the request
            if not self._warned:
                self._warned = True
                warn(
                    f"CustomerIOMiddleware could not read the request's person "
                    f"({type(exc).__name__}: {exc}); requests like this one get no bound "
                    f"person (said once)"
                )
            return {}


def _session_key() -> str | None:
    key = getattr(settings, ANONYMOUS_ID_SETTING, None)
    if key is not None and (not isinstance(key, str) or not key):
        raise ImproperlyConfigured(
            f"settings.{ANONYMOUS_ID_SETTING} must be the name of a session key (a "
            f"non-empty string) or None, got {type(key).__name__}"
        )
    return key
