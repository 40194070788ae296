"""The process's App API client: one official ``customerio.APIClient``, built lazily from the
settings, rebuilt when they change and in a forked child."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _routing
from ._config import ENV_VARS, Settings
from ._watchdog import RequestDeadlines
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    import requests

__all__ = ["AppClient", "after_fork_in_child", "missing_key", "obtain", "reset", "session"]


@dataclass(frozen=True, slots=True)
class AppClient:
    """The official client, the settings it was built from, and its requests' deadlines."""

    client: Any = field(repr=False)
    settings: Settings = field(repr=False)
    deadlines: RequestDeadlines = field(repr=False)
    pid: int


_current: AppClient | None = None
_lock = threading.Lock()  # building and forgetting only: never held during a request


def missing_key() -> ConfigurationError:
    """The error of an App API call without a key: it names what to set."""
    return ConfigurationError(
        f"the App API key is not set: pass configure(app_api_key=...) or set "
        f"{ENV_VARS['app_api_key']}",
        setting="app_api_key",
        env_var=ENV_VARS["app_api_key"],
    )


def obtain(bridge_settings: Settings | None) -> AppClient:
    """The process's App API client, built on first use.

    Args:
        bridge_settings: The configured bridge's settings; None when there is no bridge,
            and then the environment's are read (once: the client is kept until
            :func:`reset`). A client built from other settings (``configure()`` was called
            again) is replaced.

    Raises:
        ConfigurationError: No App API key is set, or the settings are malformed.
    """
    current = _usable(_current, bridge_settings)
    if current is not None:
        return current
    with _lock:
        current = _usable(_current, bridge_settings)
        return current if current is not None else _build(bridge_settings)


def _usable(current: AppClient | None, bridge_settings: Settings | None) -> AppClient | None:
    """``current`` if it is this process's and built from these settings, else None."""
    if current is None or current.pid != os.getpid():  # a fork that bypassed os.fork's hooks
        return None
    if bridge_settings is not None and current.settings is not bridge_settings:
        return None  # configure() ran again since
    return current


def _build(bridge_settings: Settings | None) -> AppClient:
    global _current
    if bridge_settings is None:
        # Checked first, so that an app using only the App API is told about its key
        # rather than about Track settings it may also lack.
        if not os.environ.get(ENV_VARS["app_api_key"], "").strip():
            raise missing_key()
        settings = Settings.from_env(**_routing.pinned({}))  # a test fixture's, if active
    else:
        settings = bridge_settings
    if settings.app_api_key is None:
        raise missing_key()
    from customerio import APIClient

    client = APIClient(
        settings.app_api_key,
        url=settings.app_url,
        # The retry policy is ours (send_email, send_push): none in urllib3 below it.
        retries=0,
        timeout=settings.request_timeout,
    )
    session(client)
    _current = AppClient(
        client, settings, RequestDeadlines(settings.request_timeout), pid=os.getpid()
    )
    return _current


def session(client: Any) -> requests.Session:
    """The client's HTTP session, with urllib3's retries off and each request's sockets
    watched for its deadline.

    Mounted again when the session is a new one (the app called ``client.close()``): the
    official adapter turns a 503 into an exception once its retries run out, which would
    hide the status that says a retry is safe.
    """
    from ._adapter import WatchedAdapter, no_retry_adapter

    http: requests.Session = client.http
    if not isinstance(http.get_adapter(client.url), WatchedAdapter):
        adapter = no_retry_adapter()
        http.mount("https://", adapter)
        http.mount("http://", adapter)
    return http


def reset() -> None:
    """Close and forget the process's App API client: the next use builds a new one."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None and current.pid == os.getpid():
        current.client.close()


def after_fork_in_child() -> None:
    """In a forked child: forget the parent's client (its connections are the parent's)."""
    global _current, _lock
    # A parent thread may have held it at the fork: that thread does not exist here.
    _lock = threading.Lock()
    _current = None
