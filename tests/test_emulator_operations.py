"""What the emulator shows other processes of what it accepted: ``GET /_emulator/operations``
and the dump file."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from customerio_logging.testing import FaultPlan, TrackAPIEmulator

from .helpers import (
    HTTP_TIMEOUT,
    batch_op,
    mode_of,
    open_session,
    post_batch,
    raw_exchange,
)

EMAIL: dict[str, Any] = {
    "transactional_message_id": 3,
    "to": "a@example.com",
    "identifiers": {"id": "u2"},
}


def listed(emulator: TrackAPIEmulator, query: str = "") -> list[dict[str, Any]]:
    """The records ``GET /_emulator/operations`` answers with, asked without credentials."""
    reply = requests.get(emulator.operations_url + query, timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200, reply.text
    records: list[dict[str, Any]] = reply.json()["operations"]
    return records


def names(records: list[dict[str, Any]]) -> list[str | None]:
    return [record["operation"].get("name") for record in records]


def send_email(emulator: TrackAPIEmulator, body: dict[str, Any]) -> None:
    reply = requests.post(
        f"{emulator.url}/v1/send/email",
        json=body,
        headers={"Authorization": f"Bearer {emulator.app_api_key}"},
        timeout=HTTP_TIMEOUT,
    )
    assert reply.status_code == 200, reply.text


def a_mix(emulator: TrackAPIEmulator, session: requests.Session) -> None:
    """A batch of two events and an identify, a v1 track, a v1 identify and an email."""
    batch = [
        batch_op("signed_up", "u1"),
        batch_op("plan_changed", "u2"),
        {"type": "person", "identifiers": {"id": "u1"}, "action": "identify"},
    ]
    assert post_batch(session, emulator, batch).status_code == 200
    track = session.post(
        f"{emulator.url}/api/v1/customers/u3/events", json={"name": "signed_up"}, timeout=5
    )
    assert track.status_code == 200
    assert session.put(f"{emulator.url}/api/v1/customers/u3", json={}, timeout=5).ok
    send_email(emulator, EMAIL)


class TestOperationsEndpoint:
    def test_it_lists_every_accepted_operation_in_order_with_when_and_where(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        before = time.time()
        a_mix(emulator, session)
        after = time.time()
        records = listed(emulator)
        assert [r["route"] for r in records] == [
            *["batch"] * 3,
            "v1_track",
            "v1_identify",
            "send_email",
        ]
        track_ops = [r["operation"] for r in records if r["route"] != "send_email"]
        assert track_ops == emulator.operations
        assert records[-1]["operation"] == emulator.transactional[0]
        assert all(before <= r["received_at"] <= after for r in records)
        assert set(records[0]) == {"received_at", "route", "operation"}

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("?name=signed_up", [("batch", "u1"), ("v1_track", "u3")]),
            ("?action=identify", [("batch", "u1"), ("v1_identify", "u3")]),
            ("?user_id=u2", [("batch", "u2"), ("send_email", "u2")]),
            ("?route=v1_track&route=send_email", [("v1_track", "u3"), ("send_email", "u2")]),
            ("?name=signed_up&user_id=u1", [("batch", "u1")]),
            ("?name=signed_up&name=plan_changed&route=batch", [("batch", "u1"), ("batch", "u2")]),
            ("?name=sign%65d_up&route=v1_track", [("v1_track", "u3")]),
            ("?name=", []),
            ("?name=nothing", []),
        ],
    )
    def test_filters(
        self,
        emulator: TrackAPIEmulator,
        session: requests.Session,
        query: str,
        expected: list[tuple[str, str]],
    ) -> None:
        a_mix(emulator, session)
        records = listed(emulator, query)
        people = [
            (r["route"], (r["operation"].get("request") or r["operation"])["identifiers"]["id"])
            for r in records
        ]
        assert people == expected

    def test_a_user_id_given_as_a_number_matches_as_text(self, emulator: TrackAPIEmulator) -> None:
        send_email(emulator, {**EMAIL, "identifiers": {"id": 42}})
        assert len(listed(emulator, "?user_id=42")) == 1

    def test_an_unknown_filter_is_a_400_that_names_the_known_ones(
        self, emulator: TrackAPIEmulator
    ) -> None:
        reply = requests.get(emulator.operations_url + "?names=x", timeout=HTTP_TIMEOUT)
        assert reply.status_code == 400
        assert reply.json() == {
            "error": "unknown filter 'names': filter by name, action, user_id or route"
        }

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
    def test_other_methods_get_405(self, emulator: TrackAPIEmulator, method: str) -> None:
        reply = requests.request(method, emulator.operations_url, json={}, timeout=HTTP_TIMEOUT)
        assert reply.status_code == 405
        assert reply.headers["Allow"] == "GET"

    @pytest.mark.parametrize("path", ["/_emulator", "/_emulator/", "/_emulator/requests"])
    def test_other_paths_of_its_own_get_404(self, emulator: TrackAPIEmulator, path: str) -> None:
        reply = requests.get(emulator.url + path, timeout=HTTP_TIMEOUT)
        assert reply.status_code == 404
        assert "/_emulator/operations" in reply.json()["error"]
        assert emulator.requests == []

    def test_it_needs_no_credentials_and_ignores_wrong_ones(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        post_batch(session, emulator, [batch_op()])
        wrong = requests.get(emulator.operations_url, auth=("x", "y"), timeout=HTTP_TIMEOUT)
        assert wrong.status_code == 200
        assert len(wrong.json()["operations"]) == 1

    def test_it_is_not_a_track_api_request(self, emulator: TrackAPIEmulator) -> None:
        for _ in range(3):
            listed(emulator)
        assert emulator.requests == []
        assert not emulator.wait_for_requests(1, timeout=0.05)

    def test_a_request_refused_unread_is_not_recorded_either(
        self, emulator: TrackAPIEmulator
    ) -> None:
        answer = raw_exchange(
            emulator, b"GET /_emulator/operations HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 400")
        assert emulator.requests == []

    def test_it_is_never_faulted_and_leaves_the_plan_untouched(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        # A delay longer than the client's timeout: a faulted answer would time out.
        emulator.set_faults(FaultPlan(script=(500,), failure_rate=1.0, delay=30, trickle=30))
        for _ in range(3):
            assert listed(emulator) == []
        emulator.set_faults(FaultPlan(script=(500,)))
        listed(emulator)
        assert post_batch(session, emulator, [batch_op()]).status_code == 500
        assert [r.fault for r in emulator.requests] == ["script"]

    def test_refused_operations_are_not_listed(
        self, emulator: TrackAPIEmulator, session: requests.Session
    ) -> None:
        reply = post_batch(session, emulator, [batch_op("ok"), batch_op("")])
        assert reply.status_code == 207
        assert names(listed(emulator)) == ["ok"]

    def test_reset_empties_it(self, emulator: TrackAPIEmulator, session: requests.Session) -> None:
        post_batch(session, emulator, [batch_op()])
        emulator.reset()
        assert listed(emulator) == []

    def test_operations_url_needs_a_started_emulator(self) -> None:
        with pytest.raises(RuntimeError, match="call start"):
            TrackAPIEmulator().operations_url  # noqa: B018


def dumped(path: Path) -> list[dict[str, Any]]:
    """The dump's records, each line read as JSON; every line ends with a newline."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


class TestDump:
    def test_each_accepted_operation_is_a_line_as_it_arrives(self, tmp_path: Path) -> None:
        path = tmp_path / "ops.jsonl"
        with TrackAPIEmulator(dump=path) as emu, open_session(emu) as session:
            post_batch(session, emu, [batch_op("a"), batch_op("")])  # the second refused
            # Read while it runs: each line is flushed as it is written.
            assert names(dumped(path)) == ["a"]
            a_mix(emu, session)
            assert dumped(path) == listed(emu)
            assert len(dumped(path)) == 7
        assert emu.dump_error is None

    def test_a_new_file_is_0600_and_one_that_was_there_is_truncated_and_made_0600(
        self, tmp_path: Path
    ) -> None:
        made, found = tmp_path / "made.jsonl", tmp_path / "found.jsonl"
        found.write_text('{"from": "an earlier run"}\n')
        found.chmod(0o644)
        for path in (made, found):
            with TrackAPIEmulator(dump=path) as emu, open_session(emu) as session:
                post_batch(session, emu, [batch_op()])
            assert mode_of(path) == 0o600
            assert names(dumped(path)) == ["signed_up"]

    def test_a_restart_appends_and_reset_leaves_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "ops.jsonl"
        emu = TrackAPIEmulator(dump=path)
        with emu, open_session(emu) as session:
            post_batch(session, emu, [batch_op("first")])
        emu.reset()
        with emu, open_session(emu) as session:
            post_batch(session, emu, [batch_op("second")])
        assert names(dumped(path)) == ["first", "second"]
        assert [op["name"] for op in emu.operations] == ["second"]

    def test_a_failed_write_ends_the_dump_and_the_emulator_goes_on(self) -> None:
        if not os.path.exists("/dev/full"):
            pytest.skip("needs /dev/full, a file every write to fails with ENOSPC")
        with TrackAPIEmulator(dump="/dev/full") as emu, open_session(emu) as session:
            assert post_batch(session, emu, [batch_op("a")]).status_code == 200
            assert post_batch(session, emu, [batch_op("b")]).status_code == 200
            assert [op["name"] for op in emu.operations] == ["a", "b"]
        error = emu.dump_error
        assert isinstance(error, OSError)
        assert error.errno == errno.ENOSPC

    def test_a_file_that_cannot_be_opened_fails_start_before_it_binds(self, tmp_path: Path) -> None:
        path = tmp_path / "missing" / "ops.jsonl"
        emu = TrackAPIEmulator(dump=path)
        with pytest.raises(FileNotFoundError) as info:
            emu.start()
        assert info.value.filename == str(path)
        with pytest.raises(RuntimeError, match="call start"):
            emu.url  # noqa: B018
        emu.stop()  # nothing to stop: still safe

    def test_without_a_dump_there_is_no_dump_error(self, emulator: TrackAPIEmulator) -> None:
        assert emulator.dump_error is None
