"""bind(): fields added to every tagged log call made in a ``with`` block, by the handler and
the processor alike, as if the call had passed them (its own keys win); nesting, threads,
asyncio tasks, a block ended in another context."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import customerio_logging as cio
from customerio_logging import _binding
from customerio_logging._capture import ACTION, TAG, Snapshot, capture_record
from customerio_logging.testing import MockTransport, TrackAPIEmulator

from .helpers import build, capture_through, invalid

THROUGH = ["record", "event_dict", "dict_msg"]


@pytest.fixture
def unwarned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not yet warned of a block ended in another context."""
    monkeypatch.setattr(_binding, "_warned_other_context", False)


def fields_of(through: str = "record", **call: object) -> dict[str, Any]:
    """The fields a tagged call passing ``call`` is captured with, here and now."""
    capture = capture_through(through, {"cio_event": True, **call})
    assert capture is not None
    return capture.fields


def bound_now() -> dict[str, Any]:
    """What a tagged call with no keys of its own gets from the current context."""
    return fields_of()


class TestWhatATaggedCallGets:
    @pytest.mark.parametrize("through", THROUGH)
    def test_bound_fields_are_added(self, through: str) -> None:
        with cio.bind(user_id="42", plan="pro"):
            fields = fields_of(through, seats=3)
        assert fields == {"seats": 3, "user_id": "42", "plan": "pro"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_they_become_the_person_and_attributes(self, through: str) -> None:
        with cio.bind(user_id="42", plan="pro"):
            capture = capture_through(through, {"cio_event": "signed_up"})
        assert capture is not None
        body = build(capture)
        assert body["identifiers"] == {"id": "42"}
        assert body["attributes"] == {"plan": "pro"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_a_key_the_call_passes_wins(self, through: str) -> None:
        with cio.bind(user_id="42", plan="free"):
            assert fields_of(through, plan="pro") == {"plan": "pro", "user_id": "42"}

    def test_a_call_passing_none_keeps_its_none(self) -> None:
        with cio.bind(plan="free"):
            assert fields_of(plan=None, user_id="u1") == {"plan": None, "user_id": "u1"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_a_logged_email_is_data_of_the_bound_user(self, through: str) -> None:
        # What the Django middleware binds for a logged-in user, and an email change.
        with cio.bind(user_id="42"):
            capture = capture_through(through, {"cio_event": True, "email": "new@example.com"})
        assert capture is not None
        body = build(capture)
        assert body["identifiers"] == {"id": "42"}
        assert body["attributes"] == {"email": "new@example.com"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_the_calls_user_id_wins_over_the_bound_one(self, through: str) -> None:
        with cio.bind(user_id="42", plan="pro"):
            capture = capture_through(through, {"cio_event": True, "user_id": "7"})
        assert capture is not None
        body = build(capture)
        assert body["identifiers"] == {"id": "7"}
        assert body["attributes"] == {"plan": "pro"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_a_user_id_passed_as_none_sends_by_email(self, through: str) -> None:
        with cio.bind(user_id="42"):
            call = {"cio_event": True, "user_id": None, "email": "invitee@example.com"}
            capture = capture_through(through, call)
        assert capture is not None
        body = build(capture)
        assert body["identifiers"] == {"email": "invitee@example.com"}
        assert "attributes" not in body

    @pytest.mark.parametrize(
        ("bound", "call", "identifiers"),
        [
            ({"user_id": "42"}, {"customer_id": "c1"}, {"id": "c1"}),
            ({"customer_id": "c1"}, {"user_id": "42"}, {"id": "42"}),
            (
                {"customer_id": "c1"},
                {"user_id": None, "email": "x@example.com"},
                {"email": "x@example.com"},
            ),
        ],
    )
    def test_user_id_and_customer_id_are_one_key(
        self, bound: dict[str, str], call: dict[str, Any], identifiers: dict[str, str]
    ) -> None:
        with cio.bind(**bound):
            fields = fields_of(**call)
        assert fields == call
        body = build(Snapshot("e", "e", fields, 0.0))
        assert body["identifiers"] == identifiers

    @pytest.mark.parametrize(
        ("bound", "call"),
        [
            ({"user_id": "42"}, {"email": "new@example.com", "plan": "pro"}),
            ({"anonymous_id": "a1", "plan": "free"}, {"email": "x@example.com", "plan": "pro"}),
            ({"user_id": "42", "plan": "free"}, {"plan": "pro", "cio_action": "page"}),
            ({"user_id": "42"}, {"cio_action": "identify", "plan": "pro"}),
        ],
    )
    def test_bound_fields_are_sent_as_if_the_call_had_passed_them(
        self, bound: dict[str, str], call: dict[str, Any]
    ) -> None:
        with cio.bind(**bound):
            with_bound = build(Snapshot("e", "e", fields_of(**call), 0.0))
        passed = build(Snapshot("e", "e", fields_of(**{**bound, **call}), 0.0))
        with_bound.pop("id", None)  # each named operation's own ULID
        passed.pop("id", None)
        assert with_bound == passed

    @pytest.mark.parametrize(
        ("bound", "call", "identifiers"),
        [
            # An event names someone else by an id: nothing of the bound person rides along.
            ({"anonymous_id": "a1"}, {"user_id": "42"}, {"id": "42"}),
            ({"user_id": "42"}, {"anonymous_id": "a1"}, {"anonymous_id": "a1"}),
            ({"email": "42@example.com"}, {"user_id": "7"}, {"id": "7"}),
            ({"user_id": "42"}, {"cio_id": "c9"}, {"cio_id": "c9"}),
            ({"user_id": "42", "email": "42@x.io"}, {"user_id": "7"}, {"id": "7"}),
            # Any other action names someone by any person key, an email included.
            ({"user_id": "u1"}, {"cio_action": "delete", "email": "o@x.io"}, {"email": "o@x.io"}),
            ({"user_id": "u1"}, {"cio_action": "suppress", "email": "o@x.io"}, {"email": "o@x.io"}),
            (
                {"user_id": "admin", "email": "admin@x.io"},
                {"cio_action": "identify", "email": "invitee@x.io"},
                {"email": "invitee@x.io"},
            ),
            (
                {"email": "a@x.io"},
                {"cio_action": "identify", "user_id": "u2"},
                {"id": "u2"},
            ),
        ],
    )
    def test_a_call_that_names_someone_else_gets_no_bound_person_key(
        self, bound: dict[str, str], call: dict[str, Any], identifiers: dict[str, str]
    ) -> None:
        with cio.bind(**bound):
            body = build(Snapshot("e", "e", fields_of(**call), 0.0))
        assert body["identifiers"] == identifiers
        person_values = set(bound.values())
        assert not person_values & set(map(str, body.get("attributes", {}).values()))

    def test_a_person_key_passed_as_none_removes_the_bound_one(self) -> None:
        with cio.bind(user_id="42", email="42@example.com"):
            assert fields_of(user_id=None, email=None) == {"user_id": None, "email": None}

    def test_nothing_bound_adds_nothing(self) -> None:
        assert fields_of(plan="pro") == {"plan": "pro"}

    @pytest.mark.parametrize("through", THROUGH)
    def test_an_untagged_call_is_untouched(self, through: str) -> None:
        record = logging.makeLogRecord({"msg": "hello", "plan": "free"})
        before = dict(record.__dict__)
        with cio.bind(user_id="42", plan="pro"):
            assert capture_through(through, {"plan": "free"}) is None
            assert capture_record(record) is None
        assert record.__dict__ == before


class TestBoundValuesAreData:
    def test_a_bound_container_is_copied_when_the_call_is_logged(self) -> None:
        items = ["a"]
        with cio.bind(user_id="42", items=items):
            items.append("b")
            fields = bound_now()
            items.append("c")
        assert fields["items"] == ["a", "b"]
        assert fields["items"] is not items

    def test_a_value_that_cannot_be_sent_makes_the_event_invalid(self) -> None:
        with cio.bind(user_id="42", handle=object()):
            capture = capture_through("record", {"cio_event": "e"})
        assert capture is not None
        error = invalid(capture)
        assert error.reason == "unsupported_value"
        assert error.field == "attributes.handle"

    def test_too_many_items_is_refused_at_the_call(self) -> None:
        with cio.bind(user_id="42", many=range(10**9)):
            capture = capture_through("record", {"cio_event": "e"})
        assert capture is not None
        assert invalid(capture).reason == "unsupported_value"

    def test_an_int_user_id_becomes_text(self) -> None:
        with cio.bind(user_id=42):
            capture = capture_through("event_dict", {"cio_event": "e"})
        assert capture is not None
        assert build(capture)["identifiers"] == {"id": "42"}


class TestNesting:
    def test_inner_adds_and_overrides_then_is_undone(self) -> None:
        with cio.bind(user_id="42", plan="free"):
            with cio.bind(plan="pro", seats=3):
                assert bound_now() == {"user_id": "42", "plan": "pro", "seats": 3}
            assert bound_now() == {"user_id": "42", "plan": "free"}
        assert bound_now() == {}

    def test_none_hides_an_outer_value_inside_the_block(self) -> None:
        with cio.bind(user_id="42", plan="free"):
            with cio.bind(user_id=None, anonymous_id="a1"):
                assert bound_now() == {"plan": "free", "anonymous_id": "a1"}
            assert bound_now() == {"user_id": "42", "plan": "free"}

    def test_undone_when_the_block_raises(self) -> None:
        with pytest.raises(KeyError), cio.bind(user_id="42"):
            raise KeyError("boom")
        assert bound_now() == {}

    def test_one_binding_serves_one_block_at_a_time(self) -> None:
        binding = cio.bind(plan="pro")
        with binding:
            with pytest.raises(RuntimeError, match="already in use"), binding:
                pass  # pragma: no cover - never entered
            assert bound_now() == {"plan": "pro"}
        with binding:  # free again once its block exited
            assert bound_now() == {"plan": "pro"}

    def test_an_inner_customer_id_replaces_an_outer_user_id(self) -> None:
        with cio.bind(user_id="42", plan="free"):
            with cio.bind(customer_id="c1"):
                assert bound_now() == {"plan": "free", "customer_id": "c1"}
            assert bound_now() == {"user_id": "42", "plan": "free"}

    def test_a_block_ended_in_another_context_is_warned_about_once(
        self, caplog: pytest.LogCaptureFixture, unwarned: None
    ) -> None:
        # What a sync generator dependency in FastAPI does: each step in its own copy.
        binding = cio.bind(user_id="42")
        with caplog.at_level(logging.WARNING, logger="customerio_logging"):
            for _ in range(3):
                contextvars.copy_context().run(binding.__enter__)
                contextvars.copy_context().run(binding.__exit__, None, None, None)
        (warning,) = [r for r in caplog.records if r.name == "customerio_logging"]
        assert "ended on another thread or task" in warning.getMessage()
        assert "`async def` dependency" in warning.getMessage()
        assert bound_now() == {}

    def test_nothing_is_bound_before_the_block(self) -> None:
        binding = cio.bind(plan="pro")
        assert bound_now() == {}
        with binding:
            pass
        assert bound_now() == {}


class TestContexts:
    def test_a_thread_started_inside_starts_with_nothing_bound(self) -> None:
        seen: list[dict[str, Any]] = []
        with cio.bind(user_id="42"):
            thread = threading.Thread(target=lambda: seen.append(bound_now()))
            thread.start()
            thread.join()
            carried = contextvars.copy_context()
        assert seen == [{}]
        assert carried.run(bound_now) == {"user_id": "42"}

    def test_threads_binding_at_once_each_see_their_own(self) -> None:
        both_bound = threading.Barrier(2, timeout=5)
        seen: dict[str, dict[str, Any]] = {}

        def worker(user: str) -> None:
            with cio.bind(user_id=user):
                both_bound.wait()  # the other thread's block is open too
                seen[user] = bound_now()
                both_bound.wait()
            seen[f"{user} after"] = bound_now()

        threads = [threading.Thread(target=worker, args=(u,)) for u in ("u1", "u2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == {
            "u1": {"user_id": "u1"},
            "u2": {"user_id": "u2"},
            "u1 after": {},
            "u2 after": {},
        }

    def test_asyncio_tasks_inherit_and_keep_their_own(self) -> None:
        async def request(user: str, both_bound: asyncio.Barrier) -> dict[str, Any]:
            with cio.bind(user_id=user):
                await both_bound.wait()  # the other task's block is open too
                return bound_now()

        async def main() -> tuple[Any, ...]:
            with cio.bind(app="shop"):
                both_bound = asyncio.Barrier(2)
                first, second = await asyncio.gather(
                    asyncio.create_task(request("u1", both_bound)),
                    asyncio.create_task(request("u2", both_bound)),
                )
                return first, second, bound_now()

        first, second, after = asyncio.run(main())
        assert first == {"app": "shop", "user_id": "u1"}
        assert second == {"app": "shop", "user_id": "u2"}
        assert after == {"app": "shop"}  # the tasks' binds stayed theirs


class TestBindArguments:
    @pytest.mark.parametrize("key", [TAG, ACTION])
    def test_the_tag_and_action_cannot_be_bound(self, key: str) -> None:
        with pytest.raises(TypeError, match=f"cannot bind {key}"):
            cio.bind(**{key: True})

    def test_the_per_call_keys_are_the_tag_and_action(self) -> None:
        assert {TAG, ACTION} == _binding._PER_CALL_KEYS

    def test_the_repr_shows_keys_not_values(self) -> None:
        assert repr(cio.bind(user_id="secret-42", plan="pro")) == "<bind plan, user_id>"


# -- through the real handler and processor, to the emulator -----------------------------


@pytest.fixture
def shop_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tests.binding.shop")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = cio.CustomerIOHandler()
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


class TestDelivered:
    def test_handler_and_processor_send_the_bound_person(
        self,
        cio_bridge: cio.Bridge,
        track_api_emulator: TrackAPIEmulator,
        shop_logger: logging.Logger,
    ) -> None:
        slog = structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[cio.CustomerIOProcessor(), structlog.processors.JSONRenderer()],
        )
        with cio.bind(user_id="42", plan="pro"):
            shop_logger.info("stdlib_signup", extra={"cio_event": True})
            slog.info("structlog_signup", cio_event=True, plan="team")
        assert cio_bridge.flush(5.0)
        got = {
            op["name"]: (op["identifiers"], op["attributes"]) for op in track_api_emulator.events()
        }
        assert got == {
            "stdlib_signup": ({"id": "42"}, {"plan": "pro"}),
            "structlog_signup": ({"id": "42"}, {"plan": "team"}),
        }

    def test_a_logged_email_stays_the_bound_users_on_every_path(
        self,
        cio_bridge: cio.Bridge,
        track_api_emulator: TrackAPIEmulator,
        shop_logger: logging.Logger,
    ) -> None:
        slog = structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[cio.CustomerIOProcessor(), structlog.processors.JSONRenderer()],
        )
        through_stdlib = structlog.wrap_logger(  # ProcessorFormatter's way: msg is the dict
            shop_logger,
            processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        with cio.bind(user_id="42"):
            shop_logger.info("handler", extra={"cio_event": True, "email": "new@example.com"})
            slog.info("processor", cio_event=True, email="new@example.com")
            through_stdlib.info("formatter", cio_event=True, email="new@example.com")
            shop_logger.info(
                "invited", extra={"cio_event": True, "user_id": None, "email": "friend@example.com"}
            )
        assert cio_bridge.flush(5.0)
        got = {
            op["name"]: (op["identifiers"], op.get("attributes"))
            for op in track_api_emulator.events()
        }
        assert got == {
            "handler": ({"id": "42"}, {"email": "new@example.com"}),
            "processor": ({"id": "42"}, {"email": "new@example.com"}),
            "formatter": ({"id": "42"}, {"email": "new@example.com"}),
            "invited": ({"email": "friend@example.com"}, None),
        }

    def test_direct_calls_ignore_bound_fields(self) -> None:
        transport = MockTransport()
        cio.configure(site_id="s", api_key="k", transport=transport, install_signal_handlers=False)
        with cio.bind(user_id="42", plan="pro"):
            receipt = cio.track("u1", "signed_up", seats=3)
        assert receipt.result(5.0).ok
        (op,) = transport.operations
        assert op["identifiers"] == {"id": "u1"}
        assert op["attributes"] == {"seats": 3}
