"""Event, Taxonomy and UserAttributes: the app's event schema."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from customerio_logging._limits import MAX_NAME_BYTES
from customerio_logging._operation import build_operation
from customerio_logging._schema import Event, Taxonomy, UserAttributes
from customerio_logging.exceptions import ConfigurationError, InvalidEventError

from .helpers import cap

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
LEAK = "LEAKED-PAYLOAD-7731"


class PlanChanged(Event, name="plan_changed"):
    to: str
    from_: str | None = None
    seats: int = 1


class Signup(Event, name="signup"):
    source: Literal["web", "ios", "android"] = "web"


class Card(BaseModel):
    kind: Literal["card"]
    last4: Annotated[str, Field(pattern=r"^\d{4}$")]


class Wire(BaseModel):
    kind: Literal["wire"]
    iban: str


class Checkout(Event, name="checkout"):
    model_config = ConfigDict(extra="forbid")

    order_id: uuid.UUID
    total: Annotated[int, Field(ge=0)]
    currency: Literal["EUR", "USD"] = "EUR"
    at: dt.datetime | None = None
    day: dt.date | None = None
    coupon: Annotated[str, Field(max_length=8)] | None = None
    payment: Annotated[Card | Wire, Field(discriminator="kind")] | None = None
    items: list[int] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    ratio: float | None = None
    flag: bool | None = None


class Profile(UserAttributes):
    plan: Literal["free", "pro"] = "free"
    age: int | None = None


def mismatch(taxonomy: Taxonomy, name: str, data: dict[str, Any]) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        taxonomy.validate_event(name, data)
    assert info.value.reason == "schema_mismatch"
    return info.value


class TestEvent:
    def test_name_keyword_declares_the_event(self) -> None:
        assert PlanChanged.event_name == "plan_changed"
        assert Signup.event_name == "signup"

    def test_base_has_no_name(self) -> None:
        assert Event.event_name == ""

    def test_intermediate_base_without_a_name(self) -> None:
        class Audited(Event):
            request_id: str | None = None

        class Login(Audited, name="login"):
            pass

        assert Audited.event_name == ""
        assert Login.event_name == "login"
        assert "request_id" in Login.model_fields

    def test_subclass_of_a_declared_event_keeps_its_name(self) -> None:
        class PlanChangedV2(PlanChanged):
            reason: str | None = None

        assert PlanChangedV2.event_name == "plan_changed"

    @pytest.mark.parametrize(
        "name",
        ["x" * MAX_NAME_BYTES, "é" * (MAX_NAME_BYTES // 2), "a", "Plan Changed!", "日本"],
    )
    def test_valid_names(self, name: str) -> None:
        class Named(Event, name=name):
            pass

        assert Named.event_name == name

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "   ",
            "\n",
            "x" * (MAX_NAME_BYTES + 1),
            "é" * (MAX_NAME_BYTES // 2 + 1),
            "€" * 34,
            123,
            b"bytes",
        ],
    )
    def test_invalid_names_fail_at_class_definition(self, name: object) -> None:
        with pytest.raises(ConfigurationError) as info:

            class Bad(Event, name=name):  # type: ignore[arg-type]
                pass

        assert info.value.setting == "events"
        assert "Bad" in str(info.value)

    def test_extra_keys_are_allowed_by_default(self) -> None:
        assert Taxonomy([Signup]).validate_event("signup", {"request_id": "r1"}) == {
            "source": "web",
            "request_id": "r1",
        }


class TestTaxonomy:
    def test_names(self) -> None:
        taxonomy = Taxonomy([PlanChanged, Signup])
        assert taxonomy.is_known("plan_changed")
        assert taxonomy.is_known("signup")
        assert not taxonomy.is_known("x")
        # Nothing declared: no name is refused, even with unknown_events="reject".
        assert Taxonomy(unknown_events="reject").validate_event("x", {"a": 1}) == {"a": 1}

    def test_is_known(self) -> None:
        taxonomy = Taxonomy([Signup])
        assert taxonomy.is_known("signup")
        assert not taxonomy.is_known("other")
        assert Taxonomy().is_known("anything")  # nothing declared: everything goes

    def test_same_class_twice_is_fine(self) -> None:
        taxonomy = Taxonomy([Signup, Signup])
        assert taxonomy.is_known("signup")
        assert not taxonomy.is_known("plan_changed")

    def test_duplicate_names(self) -> None:
        class SignupAgain(Event, name="signup"):
            pass

        with pytest.raises(ConfigurationError) as info:
            Taxonomy([Signup, SignupAgain])
        assert info.value.setting == "events"
        assert "signup" in str(info.value)
        assert "Signup" in str(info.value)
        assert "SignupAgain" in str(info.value)

    def test_accepts_any_iterable(self) -> None:
        taxonomy = Taxonomy(iter([Signup]))
        assert taxonomy.is_known("signup")
        assert not taxonomy.is_known("plan_changed")
        taxonomy = Taxonomy(m for m in [Signup, PlanChanged])
        assert taxonomy.is_known("signup")
        assert taxonomy.is_known("plan_changed")
        assert not taxonomy.is_known("x")

    @pytest.mark.parametrize(
        "model",
        [Event, Profile, BaseModel, Card, object, "signup", None, Signup(source="web")],
        ids=["Event", "UserAttributes", "BaseModel", "model", "object", "str", "None", "instance"],
    )
    def test_only_named_event_classes(self, model: object) -> None:
        with pytest.raises(ConfigurationError) as info:
            Taxonomy([model])  # type: ignore[list-item]
        assert info.value.setting == "events"

    def test_unnamed_event_subclass(self) -> None:
        class Unnamed(Event):
            pass

        with pytest.raises(ConfigurationError, match="name"):
            Taxonomy([Unnamed])


class TestValidateEvent:
    taxonomy = Taxonomy([PlanChanged, Signup, Checkout])

    def test_valid_data_passes(self) -> None:
        assert self.taxonomy.validate_event(
            "plan_changed", {"to": "pro", "from_": "free", "seats": 3}
        ) == {"to": "pro", "from_": "free", "seats": 3}

    def test_defaults_fill_in(self) -> None:
        assert self.taxonomy.validate_event("plan_changed", {"to": "pro"}) == {
            "to": "pro",
            "from_": None,
            "seats": 1,
        }

    def test_values_are_coerced_by_the_model(self) -> None:
        result = self.taxonomy.validate_event("plan_changed", {"to": "pro", "seats": "4"})
        assert result["seats"] == 4

    def test_extra_keys_ride_along(self) -> None:
        result = self.taxonomy.validate_event("plan_changed", {"to": "pro", "request_id": "r1"})
        assert result["request_id"] == "r1"

    def test_input_is_not_mutated(self) -> None:
        data = {"to": "pro"}
        self.taxonomy.validate_event("plan_changed", data)
        assert data == {"to": "pro"}

    def test_from_underscore_is_sent_as_from(self) -> None:
        op = build_operation(
            cap("plan_changed", user_id="u1", to="pro", from_="free"), self.taxonomy
        )
        assert json.loads(op.body)["attributes"] == {"from": "free", "to": "pro", "seats": 1}

    def test_from_underscore_is_validated(self) -> None:
        error = mismatch(self.taxonomy, "plan_changed", {"to": "pro", "from_": 5})
        assert error.field == "attributes.from_"

    def test_missing_required_field(self) -> None:
        error = mismatch(self.taxonomy, "plan_changed", {"from_": "free"})
        assert error.field == "attributes.to"
        assert "PlanChanged" in str(error)
        assert "to" in str(error)

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ({"order_id": LEAK, "total": 1}, "attributes.order_id"),
            ({"order_id": uuid.uuid4(), "total": LEAK}, "attributes.total"),
            ({"order_id": uuid.uuid4(), "total": -1}, "attributes.total"),
            ({"order_id": uuid.uuid4(), "total": 1, "currency": LEAK}, "attributes.currency"),
            ({"order_id": uuid.uuid4(), "total": 1, "at": LEAK}, "attributes.at"),
            ({"order_id": uuid.uuid4(), "total": 1, "day": LEAK}, "attributes.day"),
            ({"order_id": uuid.uuid4(), "total": 1, "coupon": LEAK}, "attributes.coupon"),
            (
                {"order_id": uuid.uuid4(), "total": 1, "payment": {"kind": LEAK}},
                "attributes.payment",
            ),
            ({"order_id": uuid.uuid4(), "total": 1, "payment": LEAK}, "attributes.payment"),
            (
                {"order_id": uuid.uuid4(), "total": 1, "payment": {"kind": "card", "last4": LEAK}},
                "attributes.payment.card.last4",
            ),
            ({"order_id": uuid.uuid4(), "total": 1, "items": [1, LEAK]}, "attributes.items.1"),
            ({"order_id": uuid.uuid4(), "total": 1, "items": LEAK}, "attributes.items"),
            ({"order_id": uuid.uuid4(), "total": 1, "counts": {"a": LEAK}}, "attributes.counts.a"),
            ({"order_id": uuid.uuid4(), "total": 1, "ratio": LEAK}, "attributes.ratio"),
            ({"order_id": uuid.uuid4(), "total": 1, "flag": LEAK}, "attributes.flag"),
            ({"order_id": uuid.uuid4(), "total": 1, "extra_key": LEAK}, "attributes.extra_key"),
            (
                {"order_id": LEAK[:8] + "-0000-0000-0000-000000000000", "total": 1},
                "attributes.order_id",
            ),
        ],
    )
    def test_mismatch_names_the_field_and_never_the_value(
        self, data: dict[str, Any], field: str
    ) -> None:
        error = mismatch(self.taxonomy, "checkout", data)
        assert error.field == field
        assert "Checkout" in str(error)
        for text in (str(error), repr(error), *map(str, error.args)):
            assert LEAK not in text
            assert LEAK[:8] not in text
        assert error.__cause__ is None
        assert error.__suppress_context__

    @pytest.mark.parametrize(
        "order_id",
        ["§" * 36, "§§§§§§§§-0000-0000-0000-000000000000", "§"],
        ids=["long", "uuid", "one"],
    )
    def test_not_even_one_character_of_the_value(self, order_id: str) -> None:
        # pydantic's UUID message quotes the first bad character: the payload, in part.
        error = mismatch(self.taxonomy, "checkout", {"order_id": order_id, "total": 1})
        assert error.field == "attributes.order_id"
        assert "§" not in str(error)

    def test_many_errors_are_summarised(self) -> None:
        class Wide(Event, name="wide"):
            a: int
            b: int
            c: int
            d: int
            e: int
            f: int
            g: int

        error = mismatch(Taxonomy([Wide]), "wide", {})
        assert error.field == "attributes.a"
        assert "(and 2 more)" in str(error)

    def test_root_error_has_no_field(self) -> None:
        class Consistent(Event, name="consistent"):
            plan: str = "free"
            seats: int = 1

            @model_validator(mode="after")
            def check(self) -> Consistent:
                if self.plan == "free" and self.seats > 1:
                    raise ValueError("a free plan has one seat")
                return self

        error = mismatch(Taxonomy([Consistent]), "consistent", {"seats": 5})
        assert error.field is None
        assert "(root)" in str(error)
        assert "a free plan has one seat" in str(error)

    def test_mismatch_through_build_operation(self) -> None:
        with pytest.raises(InvalidEventError) as info:
            build_operation(cap("checkout", user_id="u", total=LEAK), self.taxonomy)
        assert info.value.reason == "schema_mismatch"
        assert LEAK not in str(info.value)


class TestUnknownEvents:
    @pytest.mark.parametrize("policy", ["allow", "warn"])
    def test_passed_through_unchanged(self, policy: str) -> None:
        taxonomy = Taxonomy([Signup], unknown_events=policy)
        data = {"anything": [1, 2], "from_": "x"}
        assert taxonomy.validate_event("undeclared", data) == data

    def test_rejected(self) -> None:
        taxonomy = Taxonomy([Signup], unknown_events="reject")
        with pytest.raises(InvalidEventError) as info:
            taxonomy.validate_event("undeclared", {"secret": LEAK})
        assert info.value.reason == "unknown_event"
        assert info.value.field == "name"
        assert "undeclared" in str(info.value)
        assert LEAK not in str(info.value)

    def test_reject_still_validates_declared_events(self) -> None:
        taxonomy = Taxonomy([Signup], unknown_events="reject")
        assert taxonomy.validate_event("signup", {}) == {"source": "web"}

    def test_reject_with_nothing_declared_allows_everything(self) -> None:
        taxonomy = Taxonomy(unknown_events="reject")
        assert taxonomy.validate_event("anything", {"a": 1}) == {"a": 1}

    @pytest.mark.parametrize("policy", ["allow", "warn", "reject"])
    def test_policy_is_kept(self, policy: str) -> None:
        assert Taxonomy(unknown_events=policy).unknown_events == policy


class TestUserAttributes:
    def test_without_a_schema_data_passes(self) -> None:
        data = {"anything": object()}
        assert Taxonomy().validate_attributes(data) is data

    def test_valid_and_defaults(self) -> None:
        taxonomy = Taxonomy(user_attributes=Profile)
        assert taxonomy.validate_attributes({"age": "41", "company": "ACME"}) == {
            "plan": "free",
            "age": 41,
            "company": "ACME",
        }

    def test_mismatch(self) -> None:
        taxonomy = Taxonomy(user_attributes=Profile)
        with pytest.raises(InvalidEventError) as info:
            taxonomy.validate_attributes({"plan": LEAK})
        assert info.value.reason == "schema_mismatch"
        assert info.value.field == "attributes.plan"
        assert "Profile" in str(info.value)
        assert LEAK not in str(info.value)

    def test_identify_is_validated(self) -> None:
        taxonomy = Taxonomy(user_attributes=Profile)
        op = build_operation(cap(user_id="u1", cio_action="identify", age=30), taxonomy)
        assert json.loads(op.body)["attributes"] == {"plan": "free", "age": 30}

    def test_identify_mismatch(self) -> None:
        taxonomy = Taxonomy(user_attributes=Profile)
        with pytest.raises(InvalidEventError) as info:
            build_operation(cap(user_id="u1", cio_action="identify", age=LEAK), taxonomy)
        assert info.value.reason == "schema_mismatch"
        assert info.value.field == "attributes.age"
        assert LEAK not in str(info.value)

    def test_events_are_not_validated_as_user_attributes(self) -> None:
        taxonomy = Taxonomy(user_attributes=Profile)
        op = build_operation(cap("evt", user_id="u1", plan="enterprise"), taxonomy)
        assert json.loads(op.body)["attributes"] == {"plan": "enterprise"}

    def test_strict_user_attributes(self) -> None:
        class Strict(UserAttributes):
            model_config = ConfigDict(extra="forbid")
            plan: str = "free"

        with pytest.raises(InvalidEventError) as info:
            Taxonomy(user_attributes=Strict).validate_attributes({"nickname": LEAK})
        assert info.value.field == "attributes.nickname"
        assert LEAK not in str(info.value)
