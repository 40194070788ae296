"""The installed app: at startup it configures the bridge from ``settings.CUSTOMERIO`` and the
``CUSTOMERIO_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

import customerio_logging as cio

__all__ = ["CustomerIOConfig"]

SETTING = "CUSTOMERIO"
# The settings that name code: a dotted path to it is imported ("shop.events.SignedUp").
_IMPORTED = ("user_attributes", "on_error", "transport")


class CustomerIOConfig(AppConfig):  # type: ignore[misc]
    """``"customerio_logging.integrations.django"`` in ``INSTALLED_APPS``.

    In :meth:`ready` it calls ``customerio_logging.configure(**settings.CUSTOMERIO)``:
    the dict's keys are ``configure()``'s keyword arguments, and what it leaves out comes
    from the ``CUSTOMERIO_*`` environment variables, as with ``configure()`` itself (with
    no ``CUSTOMERIO`` setting, everything does). ``events`` may list dotted paths to the
    ``Event`` classes, and ``user_attributes``, ``on_error`` and ``transport`` may be
    dotted paths too: they are imported then, when the apps are loaded.

    ``CUSTOMERIO_ENABLED=0`` (or ``"enabled": False``) switches the library off, with no
    credentials needed: for dev machines, CI and build steps such as ``collectstatic``.
    """

    name = "customerio_logging.integrations.django"
    label = "customerio_logging"
    verbose_name = "Customer.io logging"

    def ready(self) -> None:
        """Configure the process's bridge.

        Raises:
            ImproperlyConfigured: ``settings.CUSTOMERIO`` is not a dict, its ``events``
                is not a list, it names code that cannot be imported, or a setting is
                missing or malformed (the message says which, and how to switch the
                library off instead).
        """
        options = _options(getattr(settings, SETTING, None))
        try:
            cio.configure(**options)
        except cio.ConfigurationError as exc:
            where = f"settings.{SETTING}[{exc.setting!r}]" if exc.setting else f"settings.{SETTING}"
            raise ImproperlyConfigured(
                f"customerio_logging: {exc}. In Django, set it in {where} or the environment; "
                f"CUSTOMERIO_ENABLED=0 switches customerio_logging off (dev machines, CI)"
            ) from exc


def _options(value: object) -> dict[str, Any]:
    """``configure()``'s keyword arguments from the setting's value, dotted paths imported."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict of customerio_logging.configure() keyword "
            f"arguments, got {type(value).__name__}"
        )
    options = dict(value)
    events = options.get("events")
    if isinstance(events, list | tuple):
        options["events"] = [
            _imported(event, f"['events'][{index}]") for index, event in enumerate(events)
        ]
    elif isinstance(events, set | frozenset):
        options["events"] = [_imported(event, "['events']") for event in events]
    elif events is not None:
        # A str would be taken a character at a time: "got 's'" helps nobody.
        hint = f": write [{events!r}]" if isinstance(events, str) else ""
        raise ImproperlyConfigured(
            f"settings.{SETTING}['events'] must be a list of dotted paths to Event classes, "
            f"or of the classes, got {type(events).__name__}{hint}"
        )
    for name in _IMPORTED:
        if name in options:
            options[name] = _imported(options[name], f"[{name!r}]")
    return options


def _imported(value: object, where: str) -> Any:
    """``value``, or what it names when it is a dotted path."""
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"settings.{SETTING}{where}: cannot import {value!r}: {exc}"
        ) from exc
