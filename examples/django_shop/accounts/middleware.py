"""Gives each visitor who is not logged in an anonymous id, kept in the session."""

import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def anonymous_id(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[..., HttpResponse]:
    key = settings.CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY

    def middleware(request: HttpRequest) -> HttpResponse:
        if not request.user.is_authenticated and key not in request.session:
            request.session[key] = str(uuid.uuid4())
        return get_response(request)

    return middleware
