"""A value -> its JSON form: conversions, cycles, keys, and bounds on size and digits."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_serializer

from customerio_logging import _values
from customerio_logging._capture import UnreadableTag, capture_event_dict, capture_record
from customerio_logging._limits import MAX_OPERATION_BYTES
from customerio_logging._operation import build_operation
from customerio_logging._schema import Event, Taxonomy
from customerio_logging._values import with_article
from customerio_logging.exceptions import InvalidEventError

from .helpers import (
    JSON_LEAVES,
    attributes,
    build,
    cap,
    capture_through,
    invalid,
    outcome,
    run_python,
)

# Each test runs with both JSON encoders (orjson's and the standard library's).
pytestmark = pytest.mark.usefixtures("json_path")


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Size(enum.IntEnum):
    LARGE = 3


class Plan(enum.StrEnum):
    PRO = "pro"


class Address(BaseModel):
    city: str
    since: dt.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Line:
    start: Point
    end: Point


class Label(str):
    pass


NAIVE = dt.datetime(2024, 1, 1, 12, 0, 0)
NAIVE_TS = 1_704_110_400

VALUES: list[tuple[str, object, object]] = [
    ("str", "pro", "pro"),
    ("str subclass", Label("x"), "x"),
    ("int", 3, 3),
    ("bool", True, True),
    ("none", None, None),
    ("float", 1.5, 1.5),
    ("nan", math.nan, None),
    ("inf", math.inf, None),
    ("-inf", -math.inf, None),
    ("naive datetime is UTC", NAIVE, NAIVE_TS),
    (
        "aware datetime",
        dt.datetime(2024, 1, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        NAIVE_TS,
    ),
    ("UTC datetime", NAIVE.replace(tzinfo=dt.UTC), NAIVE_TS),
    ("datetime microseconds dropped", NAIVE.replace(microsecond=999_999), NAIVE_TS),
    ("date", dt.date(2024, 1, 2), "2024-01-02"),
    ("time", dt.time(12, 30), "12:30:00"),
    ("timedelta", dt.timedelta(minutes=1, seconds=30), 90.0),
    ("decimal int", Decimal("10"), 10),
    ("decimal int with exponent", Decimal("1E+3"), 1000),
    ("decimal fraction", Decimal("1.25"), 1.25),
    ("decimal nan", Decimal("NaN"), None),
    ("decimal inf", Decimal("-Infinity"), None),
    ("decimal beyond a float", Decimal("1" * 400 + ".5"), None),
    ("uuid", uuid.UUID(int=255), "00000000-0000-0000-0000-0000000000ff"),
    ("enum", Color.RED, "red"),
    ("enum tuple value", Color.PAIR, [1, 2]),
    ("int enum", Size.LARGE, 3),
    ("str enum", Plan.PRO, "pro"),
    ("path", PurePosixPath("/var/log/app.log"), "/var/log/app.log"),
    ("windows path", PureWindowsPath("C:/x/y.txt"), "C:\\x\\y.txt"),
    ("set", {3, 1, 2}, [1, 2, 3]),
    ("frozenset", frozenset({"b", "a"}), ["a", "b"]),
    ("tuple", (1, "a", None), [1, "a", None]),
    ("empty list", [], []),
    ("empty dict", {}, {}),
    (
        "nested",
        {"a": [1, {"b": NAIVE, "c": (Decimal("2.5"),)}]},
        {"a": [1, {"b": NAIVE_TS, "c": [2.5]}]},
    ),
    (
        "non-str keys",
        {1: "a", 2.5: "b", None: "c", False: "d"},
        {"1": "a", "2.5": "b", "null": "c", "false": "d"},
    ),
    ("nested key underscore kept", {"from_": 1}, {"from_": 1}),
    ("pydantic model", Address(city="Paris", since=NAIVE), {"city": "Paris", "since": NAIVE_TS}),
    ("dataclass", Point(1, 2.5, ("a",)), {"x": 1, "y": 2.5, "tags": ["a"]}),
    (
        "nested dataclass",
        Line(Point(0, 0.0), Point(1, math.inf)),
        {"start": {"x": 0, "y": 0.0, "tags": []}, "end": {"x": 1, "y": None, "tags": []}},
    ),
    ("bytes", "héllo".encode(), "héllo"),
    ("unicode", "日本語 ✓", "日本語 ✓"),
    ("list of models", [Address(city="A", since=NAIVE)], [{"city": "A", "since": NAIVE_TS}]),
]


class TestValues:
    @pytest.mark.parametrize(
        ("value", "expected"), [(v, e) for _, v, e in VALUES], ids=[n for n, _, _ in VALUES]
    )
    def test_conversion(self, value: object, expected: object) -> None:
        assert attributes(value=value) == {"value": expected}

    def test_mixed_set_keeps_every_item(self) -> None:
        (value,) = attributes(value={1, "a", None}).values()
        assert sorted(value, key=repr) == sorted([1, "a", None], key=repr)

    def test_path_object(self) -> None:
        assert attributes(p=Path("logs", "app.log")) == {"p": str(Path("logs", "app.log"))}

    @pytest.mark.parametrize(
        ("key", "sent"),
        [
            ("from_", "from"),
            ("class_", "class"),
            ("type_", "type"),
            ("_", "_"),
            ("__", "_"),
            ("a_b", "a_b"),
            ("_private", "_private"),
        ],
    )
    def test_trailing_underscore(self, key: str, sent: str) -> None:
        assert attributes(**{key: 1}) == {sent: 1}

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"thing": object()}, "attributes.thing"),
            ({"outer": {"inner": object()}}, "attributes.outer.inner"),
            ({"items": [1, object()]}, "attributes.items[1]"),
            ({"fn": len}, "attributes.fn"),
            ({"cls": int}, "attributes.cls"),
            ({"ba": bytearray(b"x")}, "attributes.ba"),
            ({"complex": 1j}, "attributes.complex"),
            ({"bad_bytes": b"\xff\xfe"}, "attributes.bad_bytes"),
            ({"key": {(1, 2): "tuple key"}}, "attributes.key"),
        ],
    )
    def test_unsupported(self, fields: dict[str, Any], field: str) -> None:
        error = invalid(cap(user_id="u", **fields))
        assert error.reason == "unsupported_value"
        assert error.field == field
        assert field.removeprefix("attributes.").split(".")[0].split("[")[0] in str(error)

    def test_unsupported_message_does_not_quote_the_value(self) -> None:
        class Secretive:
            def __repr__(self) -> str:
                return "SECRET-REPR"

            __str__ = __repr__

        error = invalid(cap(user_id="u", thing=Secretive()))
        assert "SECRET-REPR" not in str(error)
        assert "Secretive" in str(error)

    def test_lone_surrogate_is_invalid_not_a_crash(self) -> None:
        for capture in (
            cap(user_id="u", note="a\ud800b"),
            cap("bad\udfffname", user_id="u"),
            cap(user_id="\ud800"),
            cap(user_id="u", cio_action="identify", note="\ud800"),
        ):
            error = invalid(capture)
            assert error.reason == "unsupported_value"
            assert "\ud800" not in str(error)

    def test_integer_too_large_to_encode(self) -> None:
        error = invalid(cap(user_id="u", n=10**5000))
        assert error.reason == "unsupported_value"

    def test_deep_nesting(self) -> None:
        deep: Any = "leaf"
        for _ in range(100):
            deep = [deep]
        error = invalid(cap(user_id="u", deep=deep))
        assert error.reason == "too_deep"
        assert error.field is not None
        assert error.field.startswith("attributes.deep")


class TestWithArticle:
    @pytest.mark.parametrize(
        ("noun", "expected"),
        [
            ("object", "an object"),
            ("int", "an int"),
            ("Enum", "an Enum"),
            ("IntEnum", "an IntEnum"),
            ("OrderedDict", "an OrderedDict"),
            ("UnboundLocalError", "an UnboundLocalError"),
            ("list", "a list"),
            ("str", "a str"),
            ("datetime", "a datetime"),
            ("Decimal", "a Decimal"),
            ("hybrid", "a hybrid"),
            # Said "you" or "w": a consonant sound.
            ("UUID", "a UUID"),
            ("uuid", "a uuid"),
            ("Union", "a Union"),
            ("UserDict", "a UserDict"),
            ("uint8", "a uint8"),
            ("one-off", "a one-off"),
            # Acronyms, said letter by letter.
            ("HTTPResponse", "an HTTPResponse"),
            ("SSLContext", "an SSLContext"),
            ("OSError", "an OSError"),
            ("MD5", "an MD5"),
            ("JSONDecoder", "a JSONDecoder"),
            ("X", "an X"),
            ("T", "a T"),
            # A small consonant before another: said as its letter.
            ("ndarray", "an ndarray"),
            ("mmap", "an mmap"),
            ("mypy", "a mypy"),
            # A private name is said without its underscores.
            ("_Entry", "an _Entry"),
            ("_Sentinel", "a _Sentinel"),
        ],
    )
    def test_the_article_follows_how_the_name_is_said(self, noun: str, expected: str) -> None:
        assert with_article(noun) == expected

    @pytest.mark.parametrize(
        ("name", "said"),
        [
            ("object", "an object"),
            ("Interval", "an Interval"),
            ("HTTPResponse", "an HTTPResponse"),
            ("UUIDish", "a UUIDish"),
            ("Money", "a Money"),
        ],
    )
    def test_a_value_without_a_json_form(self, name: str, said: str) -> None:
        # The report: "when is a object".
        value = object() if name == "object" else type(name, (), {})()
        error = invalid(cap(user_id="u", when=value))
        assert str(error).startswith(f"when is {said}, which has no JSON form; log a str")

    @pytest.mark.parametrize(
        ("key", "said"),
        [((1, 2), "a tuple"), (object(), "an object"), (frozenset(), "a frozenset")],
    )
    def test_a_key_that_is_not_a_string(self, key: object, said: str) -> None:
        error = invalid(cap(user_id="u", lookup={key: 1}))
        assert str(error) == f"lookup has {said} key; JSON object keys are strings"

    def test_a_tag_whose_truth_cannot_be_tested(self) -> None:
        array = type("ndarray", (), {})()  # named as numpy names its arrays
        error = invalid(cap(UnreadableTag(array), user_id="u"))
        assert str(error) == (
            "cio_event must be True or the event name; it is an ndarray, whose truth value "
            "cannot be tested"
        )


class TestCycles:
    def test_dict_cycle(self) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        self.assert_cycle_rejected(loop)

    def test_list_cycle(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(loop)

    def test_dataclass_cycle(self) -> None:
        loop = Line(Point(1, 2.0), Point(3, 4.0))
        loop.start = {"back": loop}  # type: ignore[assignment]
        self.assert_cycle_rejected(loop)

    def test_dataclass_holding_a_cyclic_list(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(Point(1, 2.0, loop))  # type: ignore[arg-type]

    def test_pydantic_model_holding_a_cyclic_list(self) -> None:
        class Bag(BaseModel):
            items: list[Any]

        loop: list[Any] = []
        loop.append(loop)
        self.assert_cycle_rejected(Bag(items=loop))

    def test_cycle_through_a_record(self) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "loop": loop}
        )
        capture = capture_record(record)
        assert capture is not None
        assert invalid(capture).reason == "too_deep"

    @staticmethod
    def assert_cycle_rejected(value: object) -> None:
        capture = capture_event_dict(
            {"event": "e", "cio_event": True, "user_id": "u", "loop": value}
        )
        assert capture is not None
        result = outcome(capture)  # a RecursionError would escape and fail the test
        assert isinstance(result, InvalidEventError)
        assert result.reason == "too_deep"
        assert result.field is not None
        assert result.field.startswith("attributes.loop")


class Endless(list):  # type: ignore[type-arg]
    """A list whose iteration never ends; stops the test (rather than hanging it) far
    past the point where capture must have given up."""

    def __iter__(self) -> Iterator[int]:
        yield from range(10 * MAX_OPERATION_BYTES)
        raise AssertionError("iterated far past what an operation can hold")


class EndlessItems(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return ((f"k{i}", i) for i in Endless())


class HashOnce:
    """A key that hashes once (going into the dict), then raises."""

    def __init__(self) -> None:
        self.hashed = False

    def __hash__(self) -> int:
        if self.hashed:
            raise TypeError("unhashable now")
        self.hashed = True
        return 1


class BigInt(int):
    pass


class BadOffset(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=30)  # out of range: timestamp() raises ValueError


class Unserializable(BaseModel):
    n: int

    @field_serializer("n")
    def _refuse(self, n: int) -> int:
        raise RuntimeError("the app's serializer fails")


def _shared(width: int, levels: int) -> list[Any]:
    """A list of a list of ... sharing one object: ``width ** levels`` items, little memory."""
    value: list[Any] = [0] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


class TestUnboundedValues:
    """No value's size may hold a thread: conversions are bounded, or refused with a reason."""

    # Sizes that take milliseconds even unbounded; the sizes that froze the process for
    # minutes are in TestNoFreeze, in a subprocess with a hard timeout.
    @pytest.mark.parametrize(
        "value", [Decimal("1e5000"), Decimal(f"-1.5e{MAX_OPERATION_BYTES}")], ids=str
    )
    def test_a_decimal_with_too_many_digits_is_invalid(self, value: Decimal) -> None:
        error = invalid(cap(user_id="u", amount=value))
        assert error.reason == "unsupported_value"
        assert error.field == "attributes.amount"
        assert "digits" in str(error)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (Decimal("1e400"), 10**400),
            (Decimal("0e1000000"), 0),
            (Decimal("-0e-1000000"), 0),
            (Decimal("1e-1000000"), 0.0),
            (Decimal("2.5e-3"), 0.0025),
        ],
    )
    def test_decimals_within_bounds_still_convert(self, value: Decimal, expected: object) -> None:
        assert attributes(amount=value) == {"amount": expected}
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "amounts": [value]}
        )
        capture = capture_record(record)  # checked there too, before any model sees it
        assert capture is not None
        assert build(capture)["attributes"] == {"amounts": [expected]}

    def test_a_declared_event_never_converts_a_decimal_with_too_many_digits(self) -> None:
        class Paid(Event, name="paid"):
            amount: int

        capture = capture_event_dict(
            {"event": "paid", "cio_event": True, "user_id": "u", "amount": Decimal("1e32000")}
        )
        assert capture is not None
        error = invalid(capture, Taxonomy([Paid]))
        assert error.field == "attributes.amount"

    def test_an_int_subclass_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", n=BigInt(10**5000)))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.n")

    def test_an_int_key_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", m={10**5000: 1}))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.m")

    def test_an_integer_identifier_with_too_many_digits_is_invalid(self) -> None:
        error = invalid(cap(user_id=10**5000))
        assert (error.reason, error.field) == ("identifier_too_long", "identifiers.user_id")

    def test_a_datetime_without_a_timestamp_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", when=dt.datetime(2024, 1, 1, tzinfo=BadOffset())))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.when")

    def test_a_model_whose_model_dump_raises_is_invalid(self) -> None:
        error = invalid(cap(user_id="u", order=Unserializable(n=1)))
        assert (error.reason, error.field) == ("unsupported_value", "attributes.order")
        assert "model_dump" in str(error)

    @pytest.mark.parametrize(
        "value",
        [Endless(), EndlessItems(), {"nested": [Endless()]}],
        ids=["list", "dict-items", "nested"],
    )
    def test_a_container_whose_iteration_never_ends_is_invalid(self, value: object) -> None:
        capture = capture_event_dict({"event": "e", "cio_event": True, "user_id": "u", "v": value})
        assert capture is not None
        error = invalid(capture)
        assert error.reason == "operation_too_large"
        assert error.field is not None
        assert error.field.startswith("attributes.v")
        assert f"{MAX_OPERATION_BYTES:,} items" in str(error)

    def test_a_value_sharing_one_list_many_times_is_not_copied_whole(self) -> None:
        # A million items in a few kilobytes: copying or converting them all would take
        # a second on the app's thread; none of them could ever be sent.
        record = logging.makeLogRecord(
            {"msg": "e", "cio_event": True, "user_id": "u", "grid": _shared(1000, 2)}
        )
        capture = capture_record(record)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("operation_too_large", "attributes.grid")

    def test_items_up_to_the_bound_are_kept(self) -> None:
        # Counted across the whole value, items stay legal up to what an operation holds.
        assert attributes(grid=_shared(10, 3)) == {"grid": [[[0] * 10] * 10] * 10}

    @pytest.mark.parametrize("through", ["record", "event_dict", "dict_message"])
    @pytest.mark.parametrize("kind", ["dict_key", "set_item"])
    def test_a_key_whose_hash_raises_is_invalid_with_a_reason(
        self, through: str, kind: str
    ) -> None:
        value: object = {HashOnce(): 1} if kind == "dict_key" else {HashOnce()}
        fields = {"cio_event": True, "user_id": "u", "m": value}
        capture = capture_through(through, fields)
        assert capture is not None
        error = invalid(capture)
        assert (error.reason, error.field) == ("unsupported_value", "attributes.m")
        assert "hash" in str(error)


# Logs one event per argument, an amount of Decimal(argument), through the handler; prints
# what became of them. With --declared, the event is declared with an int amount: its
# model converts a Decimal itself.
_AMOUNTS_PROGRAM = """
import json, logging, sys
from decimal import Decimal
import customerio_logging as cio

class Paid(cio.Event, name="paid"):
    amount: int

class Unused:
    def send(self, body):
        raise AssertionError("nothing here is valid: nothing is sent")
    def close(self):
        pass

declared = sys.argv[1] == "--declared"
bridge = cio.configure(
    site_id="s", api_key="k", transport=Unused(), spool_path=False,
    install_signal_handlers=False, events=[Paid] if declared else [],
)
log = logging.getLogger("app")
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for text in sys.argv[2:]:
    log.warning("paid", extra={"cio_event": True, "user_id": "u1", "amount": Decimal(text)})
cio.flush(10)
letters = [(d.reason, d.field) for d in bridge.dead_letters()]
print(json.dumps({"invalid": cio.stats().invalid, "letters": letters}))
"""


def _run_unfrozen(program: str, *args: str) -> Any:
    """Run ``program`` in a fresh interpreter; its JSON output. A freeze fails the test
    (after 30 s) instead of hanging the suite."""
    frozen = "converting the event's values froze the process"
    result = run_python("-c", program, *args, timeout=30, on_timeout=frozen, check=True)
    return json.loads(result.stdout)


class TestNoFreeze:
    @pytest.mark.parametrize(
        ("declared", "reason"), [(False, "unsupported_value"), (True, "schema_mismatch")]
    )
    def test_a_huge_decimal_neither_freezes_the_process_nor_is_lost(
        self, declared: bool, reason: str
    ) -> None:
        # Before: 51 s with every thread frozen for 1e1000000, 26 min for 1e100000000.
        amounts = ["1e1000000", "-1e100000000", "9.5e999999999"]
        mode = "--declared" if declared else "--undeclared"
        outcome = _run_unfrozen(_AMOUNTS_PROGRAM, mode, *amounts)
        assert outcome["invalid"] == len(amounts)
        assert outcome["letters"] == [[reason, "attributes.amount"]] * len(amounts)


_DECLARED_PROGRAM = """
import collections, itertools, json, logging, sys
from decimal import Decimal
import customerio_logging as cio

class Paid(cio.Event, name="paid"):
    amount: int = 0
    tags: list[int] = []
    meta: dict[str, int] = {}

class Big(Decimal):
    pass

class Endless:
    def __iter__(self):
        return itertools.count()

class EndlessList(list):
    def __iter__(self):
        return itertools.count()

class EndlessItems(collections.OrderedDict):
    def items(self):
        return ((str(i), i) for i in itertools.count())

class Unused:
    def send(self, body):
        raise AssertionError("nothing here is valid: nothing is sent")
    def close(self):
        pass

bridge = cio.configure(
    site_id="s", api_key="k", transport=Unused(), spool_path=False,
    install_signal_handlers=False, events=[Paid],
)
log = logging.getLogger("app")
log.propagate = False
log.addHandler(cio.CustomerIOHandler())
for field, value in [
    ("amount", Big("1e10000000")),
    ("amount", Big("-1e30000000")),
    ("tags", Endless()),
    ("tags", EndlessList()),
    ("tags", itertools.count()),
    ("meta", EndlessItems()),
]:
    log.warning("paid", extra={"cio_event": True, "user_id": "u1", field: value})
cio.flush(10)
letters = [d.field for d in bridge.dead_letters()]
print(json.dumps({"invalid": cio.stats().invalid, "letters": letters}))
"""


class TestNoFreezeInADeclaredEvent:
    def test_values_without_a_bound_never_reach_the_events_model(self) -> None:
        # A declared event's pydantic model sees the values before building bounds them.
        # Before: a Decimal subclass of ten million digits held every thread for 5 s
        # (28 s for thirty million); an endless iterable in a list field never returned.
        outcome = _run_unfrozen(_DECLARED_PROGRAM)
        assert outcome["invalid"] == 6
        fields = [*["attributes.amount"] * 2, *["attributes.tags"] * 3, "attributes.meta"]
        assert len(outcome["letters"]) == len(fields)
        # The model names the item it stopped at (attributes.tags.32000) or the field.
        for letter, field in zip(outcome["letters"], fields, strict=True):
            assert letter == field or letter.startswith(f"{field}."), (letter, field)

    @pytest.mark.parametrize(
        "value",
        [
            collections.OrderedDict(a=1, b=2),
            collections.defaultdict(int, a=1),
            type("Ints", (list,), {})([1, 2]),
            collections.namedtuple("Pair", "x y")(1, 2),
        ],
        ids=["OrderedDict", "defaultdict", "list subclass", "namedtuple"],
    )
    def test_container_subclasses_are_copied_and_still_sent(self, value: object) -> None:
        capture = capture_event_dict({"cio_event": "e", "event": "e", "user_id": "u1", "v": value})
        assert capture is not None
        op = build_operation(capture, Taxonomy(()))
        assert json.loads(op.body)["attributes"]["v"] == (
            dict(value) if isinstance(value, dict) else list(value)  # type: ignore[call-overload]
        )


class TestKeyCollisions:
    """Two keys that are one key in JSON would silently lose a value: refused instead."""

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ({1: "a", "1": "b"}, "attributes.m.1"),
            ({"1": "a", 1: "b"}, "attributes.m.1"),
            ({None: "a", "null": "b"}, "attributes.m.null"),
            ({1.5: "a", "1.5": "b"}, "attributes.m.1.5"),
            ({True: "a", "true": "b"}, "attributes.m.true"),
            ({"ok": {2: "a", "2": "b"}}, "attributes.m.ok.2"),
        ],
    )
    def test_colliding_keys_are_invalid_naming_the_key(
        self, value: dict[Any, Any], field: str
    ) -> None:
        error = invalid(cap(user_id="u", m=value))
        assert error.reason == "duplicate_key"
        assert error.field == field
        assert field.removeprefix("attributes.") in str(error)
        assert "'b'" not in str(error)  # keys are named, values never quoted

    def test_a_keyword_and_its_trailing_underscore_form_collide(self) -> None:
        error = invalid(cap(user_id="u", **{"from": "a", "from_": "b"}))
        assert (error.reason, error.field) == ("duplicate_key", "attributes.from")
        assert "'from_'" in str(error)

    def test_distinct_keys_are_all_kept(self) -> None:
        assert attributes(m={1: "a", "2": "b", None: "c"}) == {
            "m": {"1": "a", "2": "b", "null": "c"}
        }


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        value=st.recursive(
            st.one_of(
                JSON_LEAVES,
                st.binary(max_size=8),
                st.datetimes(timezones=st.none() | st.timezones()),
                st.dates(),
                st.decimals(),
                st.uuids(),
                st.just(object()),
                st.just(Color.PAIR),
                st.text(alphabet=st.characters(codec=None, categories=None), max_size=5),
                st.sampled_from(["\ud800", "a\udfffb"]),  # lone surrogates
                st.integers(min_value=10**4400, max_value=10**4400 + 10),
            ),
            lambda children: st.one_of(
                st.lists(children, max_size=4),
                st.tuples(children, children),
                st.frozensets(st.integers() | st.text(max_size=3), max_size=4),
                st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4),
            ),
            max_leaves=15,
        )
    )
    def test_anything_is_an_operation_or_an_invalid_event(self, value: object) -> None:
        op = outcome(cap("evt", user_id="u1", value=value))
        if isinstance(op, InvalidEventError):
            assert op.reason in {"unsupported_value", "operation_too_large", "too_deep"}
            return
        assert len(op.body) <= MAX_OPERATION_BYTES
        json.loads(op.body.decode("utf-8"))


_FINITE_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=5), children, max_size=4
        ),
    ),
    max_leaves=12,
)


_ORJSON_DUMPS = _values.fast_dumps  # taken before any test swaps it out


@pytest.mark.skipif(_ORJSON_DUMPS is None, reason="orjson is not installed")
class TestBothEncoders:
    """orjson's encoder says what the standard library's does, and hands it what it refuses."""

    @settings(max_examples=300, deadline=None)
    @given(value=_FINITE_JSON)
    def test_same_json(self, value: object) -> None:
        assert _ORJSON_DUMPS is not None
        fast = _ORJSON_DUMPS(value)
        assert json.loads(fast) == json.loads(_values.encode_text(value))
        # Byte for byte but for floats, which each spells its own way (1e+16, 1e16).
        if "e" not in fast.decode() and "." not in fast.decode():
            assert fast == _values.encode_text(value).encode()

    def test_what_orjson_refuses_goes_the_standard_way(self) -> None:
        assert _values.encode({"n": 2**64}) == b'{"n":18446744073709551616}'
        assert _values.encode({1: "a"}) == b'{"1":"a"}'
        with pytest.raises(UnicodeEncodeError):
            _values.encode({"s": "a\ud800"})
