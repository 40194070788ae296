"""Settings: the one frozen, validated object every part of the bridge reads its options from."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ._redis_url import ENV_VAR as REDIS_ENV_VAR
from ._redis_url import check_redis_url
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._reasons import ErrorReport
    from ._schema import Event, UserAttributes
    from ._wire import Transport

__all__ = [
    "APP_REGION_URLS",
    "DEFAULT_MAX_SPOOL_BYTES",
    "ENV_VARS",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "REGION_URLS",
    "Settings",
    "enabled_in_env",
    "is_loopback",
]

REGION_URLS: Mapping[str, str] = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}

# The App API's hosts, by the same region as the Track API's.
APP_REGION_URLS: Mapping[str, str] = {
    "us": "https://api.customer.io",
    "eu": "https://api-eu.customer.io",
}

ENV_VARS: Mapping[str, str] = {
    "site_id": "CUSTOMERIO_SITE_ID",
    "api_key": "CUSTOMERIO_TRACK_API_KEY",
    "region": "CUSTOMERIO_REGION",
    "track_url": "CUSTOMERIO_TRACK_URL",
    "spool_path": "CUSTOMERIO_SPOOL_PATH",
    "app_api_key": "CUSTOMERIO_APP_API_KEY",
    "app_url": "CUSTOMERIO_APP_URL",
    "enabled": "CUSTOMERIO_ENABLED",
    "redis_url": REDIS_ENV_VAR,
}
# A region passed explicitly picks its own hosts over these variables' URLs.
_REGION_URL_SETTINGS = ("track_url", "app_url")

UnknownEvents = Literal["allow", "warn", "reject"]
_UNKNOWN_EVENTS = ("allow", "warn", "reject")
OnFull = Literal["drop", "spill"]
Durability = Literal["memory", "disk"]
_SPOOL_OFF = frozenset({"false", "off", "none", "no", "0"})
_SWITCH_WORDS: Mapping[str, bool] = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
_LOOPBACK_NAMES = frozenset({"localhost"})
# Bounds of the time settings. A shorter wait is a busy loop (flush_interval=1e-6) or a
# request that can only time out; a longer one never ends in practice (and past
# threading.TIMEOUT_MAX a wait raises OverflowError on the dispatch thread).
MIN_SECONDS = 0.01
MAX_SECONDS = 3600.0
DEFAULT_MAX_SPOOL_BYTES = 100 * 1024 * 1024
"""The spool's bound when no ``max_spool_bytes`` is given (also the command line's, when
it opens a spool file named by path alone)."""
# At least one request every 10 s: a slower rate holds one batch longer than the retry
# and shutdown horizons (max_requests_per_second=1e-6 is an 11-day wait).
_MIN_RATE = 0.1


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the bridge needs to know, validated once at construction.

    Build it with :meth:`from_env` to apply the precedence explicit keyword arguments >
    environment variables > defaults; ``configure()`` does that for you.

    Every setting in seconds takes 0.01 to 3600 (those that allow 0 take 0 too): a
    shorter wait is a busy loop, a longer one never ends in practice.

    Attributes:
        site_id: The Track API site id (``CUSTOMERIO_SITE_ID``).
        api_key: The Track API key (``CUSTOMERIO_TRACK_API_KEY``). Never shown in a repr.
            Both are sent by HTTP basic auth, so they must be Latin-1 text. Neither is
            needed when ``enabled`` is False.
        enabled: False (``CUSTOMERIO_ENABLED=0``) switches the library off, for dev
            machines and CI: no thread, no network, no spool, no credentials needed;
            tagged log calls cost what untagged ones cost and direct calls return
            receipts already resolved as ``disabled``. The test fixtures (``cio_events``,
            ``cio_bridge``) still capture while it is off.
        region: ``"us"`` or ``"eu"`` (``CUSTOMERIO_REGION``); picks the default ``track_url``
            and ``app_url``.
        track_url: Base URL of the Track API (``CUSTOMERIO_TRACK_URL``). ``http://`` is allowed
            only for loopback hosts, so a local emulator works and a key never crosses a
            network in clear text.
        app_api_key: The App API key (``CUSTOMERIO_APP_API_KEY``), for ``app_api()``,
            ``send_email()`` and ``send_push()``; None when the app does not use the App
            API (only those calls then raise). Never shown in a repr.
        app_url: Base URL of the App API (``CUSTOMERIO_APP_URL``): by default the region's,
            ``https://api.customer.io`` or ``https://api-eu.customer.io``; an override for
            tests and the emulator, allowed over ``http://`` for loopback hosts only.
        batch_size: Most operations in one ``/api/v2/batch`` request (1 to 1000).
        flush_interval: Longest time in seconds an event waits before its batch is sent
            (0.01 to 3600).
        max_queue_size: Most events waiting in memory; beyond it new events are dropped and
            counted.
        shutdown_timeout: Seconds the exit hook and ``shutdown()`` may spend delivering
            (0, or 0.01 to 3600).
        request_timeout: Seconds one HTTP request may take in all, from connecting to the
            answer's last byte (not per read: a server that trickles is cut off); 0.01
            to 3600.
        max_retries: Attempts after the first for a batch that failed transiently.
        retry_base_delay: Seconds before the first retry; each retry doubles it (with
            jitter) up to ``retry_max_delay``.
        retry_max_delay: Longest wait between two attempts.
        retry_budget: Most seconds one batch may spend being retried, waits included.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds; a longer one is
            cut to this.
        max_requests_per_second: The rate limit on requests to the Track API, shared by
            everything the bridge sends; at least 0.1 (one request every 10 s).
        install_signal_handlers: Flush on SIGTERM (then chain to the previous handler)
            when ``configure()`` runs on the main thread.
        spool_path: The SQLite file where events that cannot be delivered now wait
            (``CUSTOMERIO_SPOOL_PATH``). ``None``: one file per workspace in the user's
            state directory (see :attr:`spool_file`). ``False`` (or ``"off"``) disables
            the spool: such events are then counted as failed or dropped.
        max_spool_bytes: Most bytes the spool takes on disk (for the SQLite file, its
            write-ahead log included); beyond it the oldest waiting operations are evicted
            and counted.
        on_full: What happens to an event logged while the queue is full: ``"spill"``
            writes it to the spool (the default when the spool is on), ``"drop"`` counts
            and drops it (the default without a spool).
        durability: ``"memory"`` (default): events wait in memory until sent, and reach
            the spool only when they cannot be sent. ``"disk"``: every event is written to
            the spool before the log call returns, so even a killed process loses none.
        redis_url: A Redis server shared by the fleet (``CUSTOMERIO_REDIS_URL``), e.g.
            ``redis://:password@host:6379/0``: ``max_requests_per_second`` becomes the
            limit of every process using it, and the backlog lives there, where any
            process can replay it; the local spool stays as the fallback while Redis
            cannot be reached. Needs ``pip install 'customerio-logging[redis]'``. Never
            shown in a repr (it may hold a password).
        events: The app's event taxonomy: ``Event`` subclasses.
        unknown_events: What to do with an event whose name is not in ``events``.
        user_attributes: A ``UserAttributes`` subclass that validates ``identify`` attributes.
        transport: Sends a batch body; tests inject one. ``None`` uses the official client's
            HTTP session.
        strict: Direct calls (``cio.track(...)``) raise ``InvalidEventError`` at the call
            for an event that cannot be sent, instead of reporting it through the receipt
            and the counters. Log calls never raise.
        on_error: Called with an :class:`ErrorReport` for every drop, dead letter and
            delivery failure, on a thread of the library's (never the app's): a small,
            secret-free description, for an app's own alerting. An exception it raises
            is ignored.
    """

    site_id: str = ""
    api_key: str = field(default="", repr=False)
    enabled: bool = True
    region: str = "us"
    track_url: str = ""
    app_api_key: str | None = field(default=None, repr=False)
    app_url: str = ""
    batch_size: int = 500
    flush_interval: float = 1.0
    max_queue_size: int = 10_000
    shutdown_timeout: float = 5.0
    request_timeout: float = 10.0
    max_retries: int = 5
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    retry_budget: float = 60.0
    max_retry_after: float = 60.0
    max_requests_per_second: float = 100.0
    install_signal_handlers: bool = True
    spool_path: str | os.PathLike[str] | Literal[False] | None = None
    max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES
    on_full: OnFull | None = None
    durability: Durability = "memory"
    redis_url: str | None = field(default=None, repr=False)
    events: tuple[type[Event], ...] = ()
    unknown_events: UnknownEvents = "allow"
    user_attributes: type[UserAttributes] | None = None
    transport: Transport | None = field(default=None, repr=False, compare=False)
    strict: bool = False
    on_error: Callable[[ErrorReport], object] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(
                f"enabled must be True or False (or set {ENV_VARS['enabled']}=0 or 1)",
                setting="enabled",
                env_var=ENV_VARS["enabled"],
            )
        for name in ("site_id", "api_key"):
            if self.enabled or getattr(self, name):  # switched off, none is needed
                _require_text(name, getattr(self, name))
        if self.app_api_key is not None:
            _require_text("app_api_key", self.app_api_key)
        self._check_region()
        self._check_sizes_and_times()
        if self.on_error is not None and not callable(self.on_error):
            raise ConfigurationError(
                "on_error must be a callable taking one ErrorReport", setting="on_error"
            )
        for flag in ("install_signal_handlers", "strict"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be True or False", setting=flag)
        if self.unknown_events not in _UNKNOWN_EVENTS:
            raise ConfigurationError(
                f"unknown_events must be one of {', '.join(_UNKNOWN_EVENTS)}; "
                f"got {self.unknown_events!r}",
                setting="unknown_events",
            )
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "redis_url", check_redis_url(self.redis_url))
        self._check_spool()
        if not self.enabled:
            # Switched off: nothing is ever written or sent, so no spool either.
            object.__setattr__(self, "spool_path", False)
            object.__setattr__(self, "on_full", "drop")
            object.__setattr__(self, "durability", "memory")
            object.__setattr__(self, "redis_url", None)

    def _check_region(self) -> None:
        region = self.region.strip().lower() if isinstance(self.region, str) else self.region
        if region not in REGION_URLS:
            raise ConfigurationError(
                f"region must be 'us' or 'eu', got {self.region!r}: pass configure(region=...) "
                f"or set {ENV_VARS['region']}",
                setting="region",
                env_var=ENV_VARS["region"],
            )
        object.__setattr__(self, "region", region)
        for name, hosts in (("track_url", REGION_URLS), ("app_url", APP_REGION_URLS)):
            url = _check_url(name, getattr(self, name) or hosts[region])
            object.__setattr__(self, name, url)
            for other, host in hosts.items():
                if other != region and url == host:
                    raise ConfigurationError(
                        f"{name} is the {other!r} region's host but region is {region!r}: "
                        f"set one of them, not both (region, {ENV_VARS['region']}, {name}, "
                        f"{ENV_VARS[name]})",
                        setting=name,
                        env_var=ENV_VARS[name],
                    )

    def _check_sizes_and_times(self) -> None:
        _require_int("batch_size", self.batch_size, low=1, high=1000)
        _require_int("max_queue_size", self.max_queue_size, low=1)
        _require_int("max_retries", self.max_retries, low=0)
        if self.batch_size > self.max_queue_size:
            raise ConfigurationError(
                f"batch_size must be <= max_queue_size ({self.batch_size} > {self.max_queue_size})",
                setting="batch_size",
            )
        _require_seconds("flush_interval", self.flush_interval)
        _require_seconds("shutdown_timeout", self.shutdown_timeout, allow_zero=True)
        _require_seconds("request_timeout", self.request_timeout)
        _require_seconds("retry_base_delay", self.retry_base_delay)
        _require_seconds("retry_max_delay", self.retry_max_delay)
        _require_seconds("retry_budget", self.retry_budget, allow_zero=True)
        _require_seconds("max_retry_after", self.max_retry_after, allow_zero=True)
        _require_seconds(
            "max_requests_per_second",
            self.max_requests_per_second,
            low=_MIN_RATE,
            high=math.inf,
            unit="requests per second",
        )
        if self.retry_max_delay < self.retry_base_delay:
            raise ConfigurationError(
                f"retry_max_delay must be >= retry_base_delay "
                f"({self.retry_max_delay:g} < {self.retry_base_delay:g})",
                setting="retry_max_delay",
            )

    def _check_spool(self) -> None:
        path = self.spool_path
        if isinstance(path, str) and path.strip().lower() in _SPOOL_OFF:
            path = False
        if path is not False and path is not None:
            if not isinstance(path, str | os.PathLike) or not os.fspath(path).strip():
                raise ConfigurationError(
                    "spool_path must be a file path, None (the default location) or False "
                    f"(no spool); set it with configure(spool_path=...) or "
                    f"{ENV_VARS['spool_path']}",
                    setting="spool_path",
                    env_var=ENV_VARS["spool_path"],
                )
            path = os.path.expanduser(os.fspath(path))
        object.__setattr__(self, "spool_path", path)
        _require_int("max_spool_bytes", self.max_spool_bytes, low=1024 * 1024)
        if self.durability not in ("memory", "disk"):
            raise ConfigurationError(
                f"durability must be 'memory' or 'disk', got {self.durability!r}",
                setting="durability",
            )
        if self.on_full not in (None, "drop", "spill"):
            raise ConfigurationError(
                f"on_full must be 'drop' or 'spill', got {self.on_full!r}", setting="on_full"
            )
        no_spool = path is False and not self.redis_url  # Redis keeps the backlog too
        if no_spool:
            for name, value in (("on_full", "spill"), ("durability", "disk")):
                if getattr(self, name) == value:
                    raise ConfigurationError(
                        f"{name}={value!r} needs the spool, but spool_path is False: "
                        f"remove one of them",
                        setting=name,
                    )
        on_full = self.on_full or ("drop" if no_spool else "spill")
        if self.durability == "disk" and on_full == "drop":
            raise ConfigurationError(
                "durability='disk' writes every event to the spool first, so a full queue "
                "leaves it there: on_full must be 'spill' (or unset)",
                setting="on_full",
            )
        object.__setattr__(self, "on_full", on_full)

    @property
    def spool_file(self) -> Path | None:
        """The spool's file, None when the spool is off.

        By default one file per workspace and host, in
        ``$XDG_STATE_HOME/customerio-logging/`` (``~/.local/state/customerio-logging/``);
        on macOS in ``~/Library/Application Support/customerio-logging/``.
        """
        if self.spool_path is False:
            return None
        if self.spool_path is None:
            from ._storage.sqlite_path import default_spool_path

            return default_spool_path(self.site_id, self.track_url)
        return Path(self.spool_path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from keyword arguments, then environment variables, then defaults.

        Args:
            environ: The environment to read; ``os.environ`` when None.
            **overrides: Explicit settings; a value of None means "not given".

        Raises:
            ConfigurationError: A setting is missing or malformed; the message names the
                argument and the environment variable to set.
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**_merged(overrides, env, known))


def _merged(
    overrides: Mapping[str, Any], env: Mapping[str, str], known: set[str]
) -> dict[str, Any]:
    """The settings ``from_env`` builds: ``overrides`` first, then ``env``'s variables."""
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s): {', '.join(unknown)}; known settings are "
            f"{', '.join(sorted(known))}",
            setting=unknown[0],
        )
    values = {name: value for name, value in overrides.items() if value is not None}
    region_passed = "region" in values
    for name, var in ENV_VARS.items():
        if name in _REGION_URL_SETTINGS and region_passed:
            continue  # a region passed explicitly picks its own host over the env's URL
        if name not in values and env.get(var, "").strip():
            values[name] = env[var].strip()
    if "region" not in values and isinstance(values.get("track_url"), str):
        # A track_url that is a region's own host says which region it is.
        for region, url in REGION_URLS.items():
            if values["track_url"].strip().rstrip("/") == url:
                values["region"] = region
    if isinstance(values.get("enabled"), str):
        values["enabled"] = _switch(values["enabled"])
    for name in ("site_id", "api_key"):
        if values.get("enabled", True) is False:
            break  # switched off: no credentials needed
        if name not in values:
            raise ConfigurationError(
                f"{name} is not set: pass configure({name}=...) or set {ENV_VARS[name]}",
                setting=name,
                env_var=ENV_VARS[name],
            )
    if isinstance(values.get("events"), Sequence | set | frozenset):
        values["events"] = tuple(values["events"])
    return values


def enabled_in_env(environ: Mapping[str, str] | None = None) -> bool:
    """What ``CUSTOMERIO_ENABLED`` says (True when unset; a malformed value counts as on:
    ``configure()`` is the one to report it)."""
    text = (os.environ if environ is None else environ).get(ENV_VARS["enabled"], "")
    return _SWITCH_WORDS.get(text.strip().lower(), True)


def _switch(text: str) -> bool:
    """``CUSTOMERIO_ENABLED``'s value as a bool."""
    value = _SWITCH_WORDS.get(text.strip().lower())
    if value is None:
        raise ConfigurationError(
            f"{ENV_VARS['enabled']} must be 1 or 0 (true/false, yes/no, on/off), got {text!r}",
            setting="enabled",
            env_var=ENV_VARS["enabled"],
        )
    return value


def _require_text(name: str, value: object) -> None:
    env_hint = f" or set {ENV_VARS[name]}" if name in ENV_VARS else ""
    if not isinstance(value, str) or not value.strip():
        # The value itself is never echoed: it may be a secret.
        raise ConfigurationError(
            f"{name} must be a non-empty string: pass configure({name}=...){env_hint}",
            setting=name,
            env_var=ENV_VARS.get(name),
        )
    if value != value.strip() or any(ch in value for ch in "\r\n\x00"):
        raise ConfigurationError(
            f"{name} has surrounding whitespace or control characters; check the value you "
            f"pass as {name}{env_hint}",
            setting=name,
            env_var=ENV_VARS.get(name),
        )
    if not _is_latin1(value):
        # HTTP headers (basic auth, the App API's bearer token) carry them as Latin-1:
        # such a value would fail every request.
        raise ConfigurationError(
            f"{name} holds characters that an HTTP header cannot carry (outside Latin-1, "
            f"e.g. a look-alike quote or dash from a copy-paste); check the value you pass "
            f"as {name}{env_hint}",
            setting=name,
            env_var=ENV_VARS.get(name),
        )


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _require_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(
            f"{name} must be an integer, got {type(value).__name__}", setting=name
        )
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigurationError(f"{name} must be {bound}, got {value}", setting=name)


def _require_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    low: float = MIN_SECONDS,
    high: float = MAX_SECONDS,
    unit: str = "seconds",
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(
            f"{name} must be a finite number of {unit}, got {value!r}", setting=name
        )
    if (allow_zero and value == 0) or low <= value <= high:
        return
    bound = f"between {low:g} and {high:g}" if math.isfinite(high) else f"at least {low:g}"
    zero = "0 or " if allow_zero else ""
    raise ConfigurationError(
        f"{name} must be {zero}{bound} {unit}, got {value!r}: pass configure({name}=...) "
        f"within that range",
        setting=name,
    )


def _check_url(name: str, url: object) -> str:
    """A base URL setting (``track_url``, ``app_url``), checked and without a trailing slash."""
    env_var = ENV_VARS[name]
    hint = f"pass configure({name}=...) or set {env_var}"
    if not isinstance(url, str):
        raise ConfigurationError(
            f"{name} must be a string URL; {hint}", setting=name, env_var=env_var
        )
    # The URL is never echoed in these errors: a malformed one may still carry the API key.
    malformed = ConfigurationError(
        f"{name} must look like https://host[:port]; {hint}",
        setting=name,
        env_var=env_var,
    )
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:  # "https://[...": an unbalanced bracket, or invalid characters
        raise malformed from None  # its text may quote the URL
    if parts.scheme not in ("https", "http") or not host:
        raise malformed
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{name} must not contain credentials, a query or a fragment; {hint}",
            setting=name,
            env_var=env_var,
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"{name} uses http:// for a non-loopback host ({host}); the API key "
            f"would travel in clear text. Use https://, or http://127.0.0.1:PORT for a local "
            f"emulator; {hint}",
            setting=name,
            env_var=env_var,
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ConfigurationError(
            f"{name} has an invalid port; {hint}",
            setting=name,
            env_var=env_var,
        ) from None
    return url.strip().rstrip("/")


def is_loopback(host: str) -> bool:
    """True for a host name or address that never leaves this machine: ``localhost`` (any
    case), ``127.0.0.0/8``, ``::1``. The only hosts ``track_url`` and ``app_url`` may reach
    over ``http://``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
