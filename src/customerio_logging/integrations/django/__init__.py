"""Django: an installed app that configures the bridge from settings at startup, and a
middleware that binds the request's person to every tagged call made while handling it.

::

    INSTALLED_APPS = [..., "customerio_logging.integrations.django"]
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "customerio_logging.integrations.django.CustomerIOMiddleware",
    ]
    CUSTOMERIO = {"events": ["shop.events.SignedUp"]}  # configure()'s arguments; optional

Django is imported by this package only, never by ``import customerio_logging``.
"""

from .middleware import CustomerIOMiddleware

__all__ = ["CustomerIOMiddleware"]
