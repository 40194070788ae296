"""Settings of the shop example: customerio_logging as an installed app, its middleware, and
a LOGGING handler that sends the tagged log calls of the ``accounts`` app.

Customer.io's credentials come from the environment (CUSTOMERIO_SITE_ID,
CUSTOMERIO_TRACK_API_KEY, and CUSTOMERIO_TRACK_URL for the emulator); CUSTOMERIO_ENABLED=0
switches the library off.
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-example-only"  # an example: never deploy this
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "customerio_logging.integrations.django",  # configures the bridge at startup
    "accounts",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.anonymous_id",  # a visitor's anonymous id, in the session
    # After those two: binds the user (or the anonymous id) to every tagged log call.
    "customerio_logging.integrations.django.CustomerIOMiddleware",
]

ROOT_URLCONF = "shop_site.urls"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/signup/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# customerio_logging.configure()'s keyword arguments; what is left out comes from the
# CUSTOMERIO_* environment variables (the credentials, here).
CUSTOMERIO = {
    "events": ["accounts.events.SignedUp", "accounts.events.ViewedPricing"],
    "unknown_events": "warn",
}
# Visitors who are not logged in are sent as anonymous events with this session key's value.
CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY = "cio_anonymous_id"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "customerio": {"class": "customerio_logging.CustomerIOHandler"},
    },
    "loggers": {
        "accounts": {"handlers": ["console", "customerio"], "level": "INFO"},
    },
}
