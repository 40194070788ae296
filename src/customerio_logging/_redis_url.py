"""The ``redis_url`` setting: checked at ``configure()``, and shown without its secrets."""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit

from .exceptions import ConfigurationError

__all__ = ["ENV_VAR", "check_redis_url", "redis_location"]

ENV_VAR = "CUSTOMERIO_REDIS_URL"
_SCHEMES = ("redis", "rediss", "unix")
# What a URL's query may say: where Redis is and how to reach it. Its other options
# (socket_timeout, retry_on_timeout...) would override the bounded waits and the absence
# of hidden retries that every Redis call of the library relies on.
_URL_PARTS = frozenset({"host", "port", "db", "username", "password", "path", "connection_class"})


def check_redis_url(url: object) -> str | None:
    """``url`` stripped, or None for an empty one; raises ``ConfigurationError`` for a
    malformed URL or a missing redis-py. The URL is never echoed: it may hold a password.
    """
    if url is None:
        return None
    hint = f"pass configure(redis_url=...) or set {ENV_VAR}"
    if not isinstance(url, str):
        raise ConfigurationError(
            f"redis_url must be a string like redis://host:6379/0; {hint}",
            setting="redis_url",
            env_var=ENV_VAR,
        )
    url = url.strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _SCHEMES or not (parts.hostname or parts.path):
        raise ConfigurationError(
            "redis_url must look like redis://[:password@]host[:port][/db], rediss://... "
            f"(TLS) or unix:///path/to/socket; {hint}",
            setting="redis_url",
            env_var=ENV_VAR,
        )
    if importlib.util.find_spec("redis") is None:
        raise ConfigurationError(
            "redis_url needs the redis package: pip install 'customerio-logging[redis]'",
            setting="redis_url",
            env_var=ENV_VAR,
        )
    _check_options(url, hint)
    return url


def _check_options(url: str, hint: str) -> None:
    """Refuse a query option redis-py cannot read, or one that is the library's to set."""
    from redis.connection import parse_url

    try:
        options: dict[str, object] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # redis-py names the option, never its value
        raise ConfigurationError(
            f"redis_url: {str(exc).rstrip('.')}; {hint}", setting="redis_url", env_var=ENV_VAR
        ) from None
    theirs = sorted(o for o in options if o not in _URL_PARTS and not o.startswith("ssl_"))
    if theirs:
        raise ConfigurationError(
            f"redis_url may not set {', '.join(theirs)}: the library bounds each Redis "
            f"call's wait itself (so that a log call never waits on Redis); {hint}",
            setting="redis_url",
            env_var=ENV_VAR,
        )


def redis_location(url: str) -> str:
    """Where ``url`` points, for messages and reprs: scheme, host, port and database,
    never the user name or password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        port = parts.port or 6379
    except ValueError:
        return "redis://?"
    database = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{database}"
