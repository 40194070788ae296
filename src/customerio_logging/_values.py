"""A logged value as the Track API receives it: its JSON form, reached within bounds.

No value can make the conversion take time that grows with its size: items, depth and
digits are bounded before anything is converted, and what cannot be sent raises
``InvalidEventError``. The snapshot taken on the app's thread (``_capture``) copies within
the same bounds; what it could not copy reaches here as :class:`Refused`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import json
import json.encoder
import math
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from ._limits import MAX_OPERATION_BYTES
from ._reasons import DUPLICATE_KEY, OPERATION_TOO_LARGE, TOO_DEEP, UNSUPPORTED_VALUE
from .exceptions import InvalidEventError

__all__ = [
    "CONTAINERS",
    "DIGITS_PER_BIT",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "BoundedIterable",
    "Refused",
    "coerce",
    "coerce_data",
    "encode",
    "encode_text",
    "fast_dumps",
    "quote",
    "too_many_digits",
    "too_many_items",
    "with_article",
]

MAX_DEPTH = 32
# Every item of a container takes at least one byte of the operation's JSON, so a value
# holding more items than an operation has bytes can never be sent. Copying and
# converting stop there: a value's size (or a container whose iteration never ends)
# must not hold a thread.
MAX_ITEMS = MAX_OPERATION_BYTES
CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
"""The built-in containers: their ``len()`` is their size."""
DIGITS_PER_BIT = math.log10(2)
_PLAIN = frozenset({str, int, bool, type(None)})  # JSON-ready as they are (floats may be NaN)


class Refused:
    """Stands for a field value that could not be copied on the app's thread: too many
    items, or a dict key or set item whose hash raised. Converting it reports it."""

    __slots__ = ("reason", "why")

    def __init__(self, reason: str, why: str) -> None:
        self.reason = reason
        self.why = why


class BoundedIterable:
    """Stands for an object of the app's that can be iterated (a numpy array, a class with
    ``__iter__``): a declared event's model may iterate it, and this stops that iteration
    one item past the bound. Converting it otherwise refuses it, as any unknown type."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __iter__(self) -> Iterator[Any]:
        items = iter(self.value)  # type: ignore[call-overload]
        yield from itertools.islice(items, MAX_ITEMS)
        for _ in itertools.islice(items, 1):
            raise ValueError(too_many_items())


# How the first letters of a name are said, for with_article. Letters whose names start
# with a vowel sound: "an HTTPResponse", "an SSLContext", "an MD5".
_AN_LETTERS = frozenset("AEFHILMNORSX")
# A vowel said as "you" or "w": "a UUID" spelt small, "a Union", "a UserDict", "a uint8".
_SAID_YOU_OR_W = ("uu", "uni", "use", "usu", "uti", "uint", "url", "uri", "eu", "one", "once")
# A small consonant that no English word starts with before another one: said as its
# letter ("an ndarray", "an mmap", "an xml..."), as the acronyms above.
_SPELT = frozenset("hlmnx")
_VOWELS = frozenset("aeiouAEIOU")


def with_article(noun: str) -> str:
    """``noun`` after "a" or "an", chosen by how it is said: ``with_article("object")`` is
    ``"an object"``.

    For the names messages quote (types, words), decided by their first letters:

    - An acronym (two capitals first, or one capital alone) is said letter by letter:
      "an HTTPResponse", "an SSLContext", "an OSError", but "a UUID", "a JSONDecoder".
    - A word starting with a vowel takes "an" ("an object", "an int", "an Enum"), unless
      the vowel is said "you" or "w": "a Union", "a UserDict", "a uint8", "a one-off".
    - A word starting with h, l, m, n or x and another consonant is said letter by
      letter: "an ndarray", "an mmap"; any other takes "a" ("a str", "a datetime").

    Leading underscores are skipped. A silent h ("an hour") is not detected: type names
    rarely start with one.
    """
    return f"{'an' if _vowel_sound(noun.lstrip('_')) else 'a'} {noun}"


def _vowel_sound(said: str) -> bool:
    first, second = said[:1], said[1:2]
    if first.isupper() and (not second or second.isupper()):
        return first in _AN_LETTERS  # an acronym
    if said.lower().startswith(_SAID_YOU_OR_W):
        return False
    if first in _VOWELS:
        return True
    return first in _SPELT and second.isalpha() and second.lower() not in "aeiouy"


def too_many_items() -> str:
    """Why a value of more than :data:`MAX_ITEMS` items cannot be sent."""
    return (
        f"holds more than {MAX_ITEMS:,} items in all; an operation of at most "
        f"{MAX_OPERATION_BYTES:,} bytes cannot hold them"
    )


def too_many_digits(digits: float) -> str | None:
    """Why a number of ``digits`` digits cannot be encoded; None if it can.

    At most ``sys.get_int_max_str_digits()`` (Python refuses a longer int -> str) and
    never more than an operation's bytes.
    """
    limit = min(sys.get_int_max_str_digits() or MAX_OPERATION_BYTES, MAX_OPERATION_BYTES)
    if digits <= limit:
        return None
    return f"is a number of about {int(digits):,} digits; at most {limit:,} can be encoded"


def coerce_data(fields: dict[str, Any]) -> dict[str, Any]:
    """An event's data as JSON-ready attributes, each key minus a trailing underscore.

    Raises:
        InvalidEventError: A value has no JSON form within bounds, or two keys are one.
    """
    # Most values are str, int, bool or None and need no call (once per key per event),
    # and most keys were seen before: their attribute name is looked up, not worked out.
    plain = _PLAIN
    names = _attribute_names
    data = {
        (names.get(key) or _attribute_name(key)): (
            value if type(value) in plain else coerce(value, key, 0)
        )
        for key, value in fields.items()
    }
    if len(data) != len(fields):
        # Two keys that became one (from and from_): say so rather than lose one.
        raise _collision([(k, _attribute_name(k)) for k in fields], None)
    return data


_attribute_names: dict[str, str] = {}
_NAMES_KEPT = 4096  # distinct keys whose attribute name is kept; the rest are worked out
_NAME_KEPT_CHARS = 64  # a longer key is worked out each time, never kept


def _attribute_name(key: str) -> str:
    """A key's attribute name: a trailing underscore lets a log call use a Python
    keyword (``from_`` -> ``"from"``)."""
    name = key[:-1] if key[-1:] == "_" and len(key) > 1 else key
    if len(_attribute_names) < _NAMES_KEPT and len(key) <= _NAME_KEPT_CHARS:
        _attribute_names[key] = name
    return name


def coerce(value: Any, path: str, depth: int, budget: list[int] | None = None) -> Any:
    """``value`` as JSON-ready data; ``budget``: items the whole field may still hold."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        raise InvalidEventError(
            f"{path} is nested more than {MAX_DEPTH} levels deep (a cycle?)",
            reason=TOO_DEEP,
            field=f"attributes.{path}",
        )
    if budget is None:
        budget = [MAX_ITEMS]
    plain = _PLAIN  # most items are: no call, and no path, for them
    if isinstance(value, dict):
        if kind is dict:  # the common case, inline: its len() is its size
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _too_many(path)
            pairs: Any = value.items()
        else:
            pairs = _take(value, path, budget, items=True)
        out = {
            _key(k, path): v if type(v) in plain else coerce(v, f"{path}.{k}", depth + 1, budget)
            for k, v in pairs
        }
        if len(out) != len(pairs):
            raise _collision([(k, _key(k, path)) for k, _ in pairs], path)
        return out
    if isinstance(value, list | tuple):
        if kind is list or kind is tuple:  # the common case, inline
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _too_many(path)
        else:
            value = _take(value, path, budget)
        return [
            v if type(v) in plain else coerce(v, f"{path}[{i}]", depth + 1, budget)
            for i, v in enumerate(value)
        ]
    if isinstance(value, set | frozenset):
        items = [coerce(v, f"{path}[]", depth + 1, budget) for v in _take(value, path, budget)]
        try:
            return sorted(items)
        except TypeError:
            return items
    return _coerce_scalar(value, path, depth, budget)


def _coerce_object(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump()
        except Exception as exc:  # noqa: BLE001 - the app's serializer: translated here
            raise _unsupported(
                path, f"is a pydantic model whose model_dump() raised {type(exc).__name__}"
            ) from None
        return coerce(dumped, path, depth + 1, budget)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # One level at a time, not dataclasses.asdict: that recurses without a bound and
        # a cycle would end in RecursionError instead of too_deep.
        shallow = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return coerce(shallow, path, depth + 1, budget)
    if isinstance(value, Refused):
        raise InvalidEventError(
            f"{path} {value.why}", reason=value.reason, field=f"attributes.{path}"
        )
    if isinstance(value, BoundedIterable):
        value = value.value
    raise _unsupported(
        path,
        f"is {with_article(type(value).__qualname__)}, which has no JSON form; log a str, "
        "number, bool, list, dict, datetime, Decimal, UUID, Enum or a pydantic model",
    )


def _coerce_scalar(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        try:
            return int(aware.timestamp())
        except (OverflowError, ValueError, OSError):
            raise _unsupported(path, "is a datetime with no Unix timestamp") from None
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return coerce(value.value, path, depth + 1, budget)
    if isinstance(value, str):  # a str subclass (bool has none: coerce returned it)
        return str(value)
    if isinstance(value, int):
        # Checked before any conversion: int -> str takes time quadratic in the digits.
        _check_digits(int.bit_length(value) * DIGITS_PER_BIT, path)
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return _decimal(value, path)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise _unsupported(path, "is bytes that are not UTF-8 text") from None
    return _coerce_object(value, path, depth, budget)


def _decimal(value: Decimal, path: str) -> int | float | None:
    if not value.is_finite():
        return None
    if value.is_zero():
        return 0
    # Its digits are counted from the exponent before any conversion: int() of
    # Decimal("1e1000000") holds the GIL for close to a minute.
    _check_digits(value.adjusted() + 1, path)
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)  # beyond a float's range this is inf: null, like inf itself
    return as_float if math.isfinite(as_float) else None


def _check_digits(digits: float, path: str) -> None:
    why = too_many_digits(digits)
    if why is not None:
        raise _unsupported(path, why)


def _take(value: Any, path: str, budget: list[int], *, items: bool = False) -> Any:
    """The container's items (``items()`` of a dict), but never more than the budget.

    A subclass may override ``__iter__`` or ``items``: its iteration may never end.
    """
    if type(value) in CONTAINERS:  # a built-in container: its len() is its size
        budget[0] -= len(value)
        taken: Any = value.items() if items else value
    else:
        try:
            taken = list(itertools.islice(value.items() if items else value, budget[0] + 1))
        except Exception as exc:  # noqa: BLE001 - the app's __iter__ or items()
            raise _unsupported(path, f"raised {type(exc).__name__} when iterated") from None
        budget[0] -= len(taken)
    if budget[0] < 0:
        raise _too_many(path)
    return taken


def _too_many(path: str) -> InvalidEventError:
    return InvalidEventError(
        f"{path} {too_many_items()}", reason=OPERATION_TOO_LARGE, field=f"attributes.{path}"
    )


def _unsupported(path: str, what: str) -> InvalidEventError:
    return InvalidEventError(f"{path} {what}", reason=UNSUPPORTED_VALUE, field=f"attributes.{path}")


def _collision(pairs: Iterable[tuple[object, str]], path: str | None) -> InvalidEventError:
    """The error for two keys that are one key in JSON (``1`` and ``"1"``, ``from`` and
    ``from_``): one of the two values would be lost."""
    seen: dict[str, object] = {}
    for key, name in pairs:
        if name in seen:
            where = _shown(name if path is None else f"{path}.{name}", repr_=False)
            return InvalidEventError(
                f"{where} is given twice: the keys {_shown(seen[name])} and "
                f"{_shown(key)} are the same key in JSON; rename one",
                reason=DUPLICATE_KEY,
                field=f"attributes.{where}",
            )
        seen[name] = key
    raise AssertionError("no two keys collide")  # pragma: no cover - callers check first


def _shown(key: object, *, repr_: bool = True) -> str:
    text = repr(key) if repr_ else str(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(key: object, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int):
        _check_digits(int.bit_length(key) * DIGITS_PER_BIT, path)
    if isinstance(key, int | float) or key is None:
        return json.dumps(key)
    raise InvalidEventError(
        f"{path} has {with_article(type(key).__qualname__)} key; JSON object keys are strings",
        reason=UNSUPPORTED_VALUE,
        field=f"attributes.{path}",
    )


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
quote = json.encoder.encode_basestring
"""A str as a JSON string, as :func:`encode` writes it."""


def _fast_encode() -> Callable[[Any], str]:
    """``_encoder.encode``, minus the C encoder it builds anew on every call.

    Halves the cost of encoding a small dict (once per event). Built from the same C
    function JSONEncoder uses, with the arguments CPython 3.11+ passes it; checked
    against ``_encoder`` once, and ``_encoder.encode`` is used if anything differs.
    Values reach it already coerced, so its missing cycle check (``markers=None``) and
    its ``default`` never matter.
    """
    make = getattr(json.encoder, "c_make_encoder", None)

    def refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    try:
        iterencode = make(None, refuse, quote, None, ":", ",", False, False, False)  # type: ignore[misc]

        def fast(value: Any) -> str:
            return "".join(iterencode(value, 0))

        sample = {"a": [1, 2.5, None, True, 'é\n"x'], "b": {"c": -3}}
        if fast(sample) == _encoder.encode(sample):
            return fast
    except Exception:  # noqa: BLE001, S110 - any surprise means: use the public encoder
        pass
    return _encoder.encode


encode_text = _fast_encode()
"""Coerced data as compact JSON text (``str``), as :func:`encode` writes it."""


def _orjson_dumps() -> Callable[[Any], bytes] | None:
    try:
        from orjson import dumps
    except ImportError:  # not installed, or no wheel for this interpreter (PyPy)
        return None

    def dumps_to_size(value: Any) -> bytes:
        # orjson's bytes keep the buffer it wrote into, 4 KiB at least whatever their
        # length; an operation's body waits in queues and batches for long (20 times its
        # size, per event): copied out at its own size.
        return memoryview(dumps(value)).tobytes()

    return dumps_to_size


fast_dumps = _orjson_dumps()
"""orjson's ``dumps`` (its bytes copied out at their own size) when it is installed, else
None: the same compact UTF-8 JSON as the standard library's, at a fraction of the cost. It
refuses what the standard library's path handles or refuses with its own words (an integer
beyond 64 bits, a lone surrogate, a key that is not a str), so every caller falls back to
that path when it raises."""


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the Track API receives it.

    Raises:
        ValueError: ``value`` holds an int too long for ``str()``
            (``sys.get_int_max_str_digits()``), or a str with a lone surrogate
            (``UnicodeEncodeError``).
    """
    if fast_dumps is not None:
        try:
            return fast_dumps(value)
        except TypeError:  # orjson.JSONEncodeError: see fast_dumps
            pass
    return encode_text(value).encode()
