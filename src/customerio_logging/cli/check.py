"""``check``: the settings in effect, and whether the Track API accepts the credentials."""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

import requests

from .._config import ENV_VARS, REGION_URLS, Settings
from .._redis_url import redis_location
from .._wire import shorten, status_phrase
from ..exceptions import ConfigurationError
from ._args import (
    Subcommands,
    add_command,
    credential_overrides,
    credentials_parent,
    positive_seconds,
)
from ._output import TURN_ON, configuration_error, switch_as_set, switched_off

__all__ = ["register"]

_REGION_PATH = "/api/v1/accounts/region"


def register(commands: Subcommands) -> None:
    """Add the ``check`` command to ``commands``."""
    check = add_command(
        commands,
        "check",
        parents=[credentials_parent()],
        help="check the settings and that the Track API accepts the credentials",
        description=(
            "Build the settings as the library does (flags, then CUSTOMERIO_* environment "
            "variables, then defaults), print them without the API key, and ask the Track "
            f"API whether it accepts the credentials (GET {_REGION_PATH}). When "
            "CUSTOMERIO_ENABLED=0 switches the library off, say so, and check the "
            "credentials all the same if they are set."
        ),
        epilog=(
            "example:\n  CUSTOMERIO_SITE_ID=... CUSTOMERIO_TRACK_API_KEY=... "
            "python -m customerio_logging check"
        ),
        failure=(
            "the Track API refused the credentials, could not be reached, answered "
            "something else, or names another region; or the library is switched off "
            "(CUSTOMERIO_ENABLED=0), so an app with these settings sends nothing"
        ),
    )
    check.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest wait for the answer (default 10)",
    )
    check.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    """Print the settings in effect, then whether the Track API accepts the credentials."""
    try:
        settings = Settings.from_env(**credential_overrides(args))
    except ConfigurationError as exc:
        return configuration_error(exc)
    print(f"enabled:   {'yes' if settings.enabled else f'no ({switch_as_set()})'}")
    print(f"site id:   {settings.site_id or 'not set'}")
    print(f"track url: {settings.track_url}")
    print(f"region:    {settings.region}")
    if settings.redis_url is not None:
        print(f"redis:     {redis_location(settings.redis_url)}")
    print(f"spool:     {_describe_spool(settings)}")
    if settings.enabled and settings.redis_url is not None:
        redis_ok = _ask_redis(settings.redis_url, args.timeout)
        return max(_ask(settings, args.timeout), 0 if redis_ok else 1)
    if settings.enabled:
        return _ask(settings, args.timeout)
    # Switched off, the library needs no credentials; those that are set are checked
    # all the same, so that switching it on holds no surprise.
    unset = [ENV_VARS[name] for name in ("site_id", "api_key") if not getattr(settings, name)]
    if unset:
        print(
            f"NOT CHECKED: no credentials to check ({' and '.join(unset)} not set; "
            "not needed while switched off)"
        )
    else:
        _ask(settings, args.timeout)
    print(f"OFF: {switched_off()}: an app with these settings sends nothing; {TURN_ON}")
    return 1


def _ask_redis(url: str, timeout: float) -> bool:
    """Print whether the fleet's Redis answers, and warn of a policy that may evict."""
    from .._redis_client import describe_error, eviction_policy, make_client, may_evict_backlog

    client = make_client(url, timeout=timeout)
    try:
        client.ping()
        policy = eviction_policy(client)
    except Exception as exc:  # noqa: BLE001 - any failure is the verdict, in words
        print(
            f"UNREACHABLE: {describe_error(url, exc)}: each process uses its local spool "
            "and paces itself alone until Redis answers"
        )
        return False
    finally:
        client.close()
    if policy is None:
        print(
            f"OK: Redis at {redis_location(url)} answers (its maxmemory-policy cannot be "
            "read by this user: it should be noeviction)"
        )
        return True
    print(f"OK: Redis at {redis_location(url)} answers (maxmemory-policy {policy})")
    if may_evict_backlog(policy):
        print(
            f"WARNING: maxmemory-policy {policy} lets Redis evict the backlog's keys when "
            "it is full: set it to noeviction"
        )
    return True


def _ask(settings: Settings, timeout: float) -> int:
    """Ask the Track API whether it accepts the credentials; print its verdict."""
    host = urlsplit(settings.track_url).netloc
    try:
        reply = requests.get(
            settings.track_url + _REGION_PATH,
            auth=(settings.site_id, settings.api_key),
            timeout=timeout,
            # A redirect would carry the credentials elsewhere; report it instead.
            allow_redirects=False,
        )
    except (requests.RequestException, OSError) as exc:
        # The class name only: an exception's text can quote the URL and request.
        print(f"UNREACHABLE: could not connect to {host}: {type(exc).__name__}")
        return 1
    return _verdict(reply, settings, host)


def _verdict(reply: requests.Response, settings: Settings, host: str) -> int:
    """Print what the Track API's answer says of the credentials and the region."""
    if reply.status_code in (401, 403):
        print(
            f"REFUSED: {host} answered HTTP {reply.status_code}: check CUSTOMERIO_SITE_ID and "
            "CUSTOMERIO_TRACK_API_KEY (or --site-id and --api-key); they are the Track API "
            "credentials, not an App API key"
        )
        return 1
    if reply.status_code != 200:
        print(
            f"UNEXPECTED: {host} answered HTTP {reply.status_code} "
            f"{status_phrase(reply.status_code)}, not 200: check that {settings.track_url} "
            "is the Track API (CUSTOMERIO_TRACK_URL), or try again later"
        )
        return 1
    region = _reported_region(reply)
    if region is None:
        print(f"OK: credentials accepted by {host}; the answer did not name the region")
        return 0
    if region in REGION_URLS and region != settings.region:
        print(
            f"MISMATCH: credentials accepted by {host}, but the workspace is in region "
            f"{region} and the configured region is {settings.region}: set "
            f"CUSTOMERIO_REGION={region} (or pass --region {region})"
        )
        return 1
    print(f"OK: credentials accepted by {host}; the workspace is in region {region}")
    return 0


def _describe_spool(settings: Settings) -> str:
    if not settings.enabled:
        return "off while switched off"
    if settings.spool_path is None:
        return "the default location"
    return "off" if settings.spool_path is False else os.fspath(settings.spool_path)


def _reported_region(reply: requests.Response) -> str | None:
    try:
        body = reply.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    # The Track API answers "data_center"; "region" in case it is ever named so.
    for key in ("region", "data_center"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            # The server's word, printed: a short line, whatever it sent.
            return shorten(value, 40).lower()
    return None
