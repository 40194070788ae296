"""Event, UserAttributes and Taxonomy: the app's event schema, validated with pydantic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pydantic
from pydantic import BaseModel, ConfigDict

from ._limits import MAX_NAME_BYTES
from ._reasons import SCHEMA_MISMATCH, UNKNOWN_EVENT
from .exceptions import ConfigurationError, InvalidEventError

__all__ = [
    "Event",
    "Taxonomy",
    "UserAttributes",
]


class Event(BaseModel):
    """Base class of the app's declared events: subclass it once per event name.

    The class keyword ``name`` is the Customer.io event name; the fields validate the
    event's data under the names the log call uses (``from_``), before the trailing
    underscore is dropped for the wire. Extra keys are allowed by default (bound context
    such as ``request_id`` rides along); set ``model_config = ConfigDict(extra="forbid")``
    for a strict event.

    Example:
        >>> class PlanChanged(Event, name="plan_changed"):
        ...     to: str
        ...     from_: str | None = None   # sent as "from": a trailing "_" is dropped
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    event_name: ClassVar[str] = ""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            # An intermediate base class (or a subclass of a declared event) keeps what it
            # inherited; only a class that names itself declares an event.
            return
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"{cls.__qualname__}: the event name must be a non-empty string",
                setting="events",
            )
        if len(name.encode()) > MAX_NAME_BYTES:
            raise ConfigurationError(
                f"{cls.__qualname__}: the event name {name!r} is longer than the Track API's "
                f"{MAX_NAME_BYTES} bytes",
                setting="events",
            )
        cls.event_name = name


class UserAttributes(BaseModel):
    """Base class of a schema for ``identify`` attributes (``configure(user_attributes=...)``).

    Extra attributes are allowed by default, like :class:`Event`.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Taxonomy:
    """Validates event data against the app's declared ``Event`` classes."""

    def __init__(
        self,
        events: Iterable[type[Event]] = (),
        *,
        unknown_events: str = "allow",
        user_attributes: type[UserAttributes] | None = None,
    ) -> None:
        self._models: dict[str, type[Event]] = {}
        for model in events:
            if not (isinstance(model, type) and issubclass(model, Event)) or not model.event_name:
                raise ConfigurationError(
                    f"events must be Event subclasses declared with a name "
                    f"(class X(Event, name='...')); got {model!r}",
                    setting="events",
                )
            other = self._models.get(model.event_name)
            if other is not None and other is not model:
                raise ConfigurationError(
                    f"two events are declared with the name {model.event_name!r}: "
                    f"{other.__qualname__} and {model.__qualname__}",
                    setting="events",
                )
            self._models[model.event_name] = model
        self.unknown_events = unknown_events
        self.user_attributes = user_attributes

    def is_known(self, name: str) -> bool:
        """Whether ``name`` is a declared event (always True when none are declared)."""
        return not self._models or name in self._models

    def validate_event(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Return ``data`` validated (and defaulted) by the event's model.

        Raises:
            InvalidEventError: The data does not match the model, or the name is unknown
                and ``unknown_events="reject"``.
        """
        model = self._models.get(name)
        if model is None:
            if self._models and self.unknown_events == "reject":
                raise InvalidEventError(
                    f"event {name!r} is not declared in configure(events=...) and "
                    f"unknown_events='reject'",
                    reason=UNKNOWN_EVENT,
                    field="name",
                )
            return data
        return _validate(model, data)

    def validate_attributes(self, data: dict[str, Any]) -> dict[str, Any]:
        """Return identify ``data`` validated by ``user_attributes``, if one is set."""
        if self.user_attributes is None:
            return data
        return _validate(self.user_attributes, data)


def _validate(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        instance = model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _translate(model, exc) from None
    return instance.model_dump(by_alias=True)


def _translate(model: type[BaseModel], exc: pydantic.ValidationError) -> InvalidEventError:
    # Only locations and messages: pydantic's own text quotes the input, which is payload.
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    field = "attributes." + ".".join(str(part) for part in first["loc"]) if first["loc"] else None
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {_safe_message(err)}"
        for err in errors[:5]
    )
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return InvalidEventError(
        f"does not match {model.__qualname__}: {details}{more}",
        reason=SCHEMA_MISMATCH,
        field=field,
    )


# pydantic error types whose message quotes part of the input (a discriminator tag, the
# offending character, an exception's text): only their type is reported.
_INPUT_QUOTING_ERRORS = frozenset(
    {
        "datetime_object_invalid",
        "get_attribute_error",
        "iteration_error",
        "mapping_type",
        "timezone_offset",
        "union_tag_invalid",
        "uuid_parsing",
    }
)


def _safe_message(err: Any) -> str:
    kind = str(err["type"])
    return f"invalid value ({kind})" if kind in _INPUT_QUOTING_ERRORS else str(err["msg"])
