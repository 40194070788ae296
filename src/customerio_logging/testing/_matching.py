"""How ``assert_sent`` compares what a test expects with a captured operation, and how it
explains a miss: the closest operations, as a diff."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from .._capture import USER_ID_KEYS
from .._values import coerce_data
from ..exceptions import InvalidEventError

__all__ = ["Wanted", "differences", "explain", "wanted"]

_PERSON_KEYS = {
    **dict.fromkeys(USER_ID_KEYS, "id"),
    **{key: key for key in ("email", "cio_id", "anonymous_id")},
}
_CLOSEST = 3
_MISSING = object()


class Captured(Protocol):
    """What is compared: a captured operation (``CapturedEvent``)."""

    @property
    def name(self) -> str | None: ...
    @property
    def action(self) -> str: ...
    @property
    def identifiers(self) -> dict[str, Any]: ...
    @property
    def attributes(self) -> dict[str, Any]: ...


class Wanted(NamedTuple):
    """One expected keyword: where it is in an operation, and its value as sent."""

    person_key: str | None  # its key among the identifiers, for a person's keyword
    key: str  # its key among the attributes
    value: Any


def wanted(expected: Mapping[str, Any]) -> dict[str, Wanted]:
    """``expected`` in the form it compares in, by the keyword's name.

    Raises:
        TypeError: A value with no JSON form: it could never have been sent.
    """
    found: dict[str, Wanted] = {}
    for key, value in expected.items():
        try:
            ((sent_key, sent),) = json.loads(json.dumps(coerce_data({key: value}))).items()
        except InvalidEventError as exc:
            raise TypeError(f"assert_sent({key}=...): {exc}") from None
        if key in _PERSON_KEYS and not isinstance(sent, bool) and isinstance(sent, int | str):
            sent = str(sent)  # an id is sent as text (an int, a UUID)
        found[key] = Wanted(_PERSON_KEYS.get(key), sent_key, sent)
    return found


def _found(event: Captured, each: Wanted) -> Any:
    # A person's key names the person, or is data when another key named it (the email
    # of an event sent to a user id): either place matches.
    if each.person_key is not None and each.person_key in event.identifiers:
        return event.identifiers[each.person_key]
    return event.attributes.get(each.key, _MISSING)


def _same(found: Any, value: Any) -> bool:
    # As JSON tells them apart: True is not 1, 1 is not 1.0 for a bool's sake only.
    if isinstance(found, bool) or isinstance(value, bool):
        return type(found) is type(value) and found == value
    return bool(found == value)


def differences(event: Captured, expected: Mapping[str, Wanted]) -> list[str]:
    """The expected keywords ``event`` does not match."""
    return [key for key, each in expected.items() if not _same(_found(event, each), each.value)]


def explain(
    label: str,
    name: str | None,
    asked: Mapping[str, Any],
    expected: Mapping[str, Wanted],
    events: Sequence[Captured],
    candidates: Sequence[Captured],
) -> list[str]:
    """Why none of ``events`` matched: the operations of that name (``candidates``)
    closest to ``expected`` as a diff, or else the names that were sent."""
    keywords = ", ".join(f"{key}={value!r}" for key, value in asked.items())
    lines = [f"no {label} was sent" + (f" with {keywords}" if keywords else "")]
    closest = list(candidates)
    if closest:
        closest.sort(key=lambda event: len(differences(event, expected)))
        lines.append(f"{len(closest)} {label} sent; the closest (- expected, + sent):")
    else:
        counts = Counter(event.name or event.action for event in events)
        seen = ", ".join(f"{key} x{n}" for key, n in counts.most_common()) or "nothing"
        lines.append(f"sent: {seen}")
        if name is not None:
            names = sorted({event.name for event in events if event.name})
            near = difflib.get_close_matches(name, names, n=_CLOSEST, cutoff=0.6)
            closest = [event for event in events if event.name in near]
            if closest:
                lines.append("the closest names (- expected, + sent):")
    for event in closest[:_CLOSEST]:
        lines.append(f"  {event.name or event.action!r} {event.identifiers}:")
        lines.extend(f"    {line}" for line in _diff(event, expected, name))
    return lines


def _diff(event: Captured, expected: Mapping[str, Wanted], name: str | None) -> list[str]:
    def show(key: str, value: Any) -> str:
        return f"{key}: " + ("(missing)" if value is _MISSING else repr(value))

    want = [] if name is None else [f"name: {name!r}"]
    sent = [] if name is None else [f"name: {event.name!r}"]
    want += [show(key, each.value) for key, each in expected.items()]
    sent += [show(key, _found(event, each)) for key, each in expected.items()]
    return [line for line in difflib.ndiff(want, sent) if not line.startswith("?")]
