"""Issue 12's acceptance run: apps in processes of their own log against the emulator command,
and the emulator's dump and ``GET /_emulator/operations`` show every event exactly once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from ..helpers import program, start_python, users
from .emulator_process import EmulatorProcess, emulator_process

EVENTS = 150  # per app
APPS = ("a", "b", "c")  # each app's user prefix
APP_TIMEOUT = 120.0
FAULTS = (
    "--seed",
    "11",
    "--failure-rate",
    "0.3",
    "--drop-rate",
    "0.05",
    "--drop-after-accept-rate",
    "0.05",
    "--rate-limit",
    "40",
)


def run_apps(emulator: EmulatorProcess, name: str) -> list[dict[str, Any]]:
    """Run the tagged app once per prefix, all at once, against the emulator's printed
    environment; their counters once they all ended."""
    procs = [
        start_python(program("tagged_app"), name, prefix, EVENTS, env=emulator.env, clean=True)
        for prefix in APPS
    ]
    stats = []
    for proc in procs:
        out, err = proc.communicate(timeout=APP_TIMEOUT)
        assert proc.returncode == 0, err
        stats.append(json.loads(out))
    return stats


def dumped(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def listed(emulator: EmulatorProcess, query: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{emulator.url}/_emulator/operations{query}", timeout=10)
    assert reply.status_code == 200, reply.text
    records: list[dict[str, Any]] = reply.json()["operations"]
    return records


def assert_every_event_once(records: list[dict[str, Any]], name: str) -> None:
    """One event ``name`` per user of every app, each under an id of its own; an id seen
    twice (a batch accepted, then its answer dropped) is the same event, sent again."""
    events = [record["operation"] for record in records]
    assert {op["name"] for op in events} == {name}
    expected = set().union(*(users(prefix, EVENTS) for prefix in APPS))
    ids_by_user: dict[str, set[str]] = {}
    for op in events:
        ids_by_user.setdefault(op["identifiers"]["id"], set()).add(op["id"])
    assert set(ids_by_user) == expected
    assert [user for user, ids in ids_by_user.items() if len(ids) > 1] == []


def test_apps_in_other_processes_are_seen_whole_in_the_dump_and_the_endpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ops.jsonl"
    with emulator_process("--dump", path) as emulator:
        stats = run_apps(emulator, "order_placed")
        records = dumped(path)
        orders = listed(emulator, "?name=order_placed")
        assert listed(emulator, "") == records
        assert len(listed(emulator, "?name=order_placed&user_id=b7")) == 1
        code, rest, stderr = emulator.stop()
    assert code == 0, stderr
    # Without faults, exactly once: no id twice, nothing but the apps' events.
    assert_every_event_once(orders, "order_placed")
    assert Counter(op["operation"]["id"] for op in records).most_common(1)[0][1] == 1
    assert orders == [r for r in records if r["operation"]["name"] == "order_placed"]
    heartbeats = [r["operation"]["identifiers"]["id"] for r in records if r not in orders]
    assert sorted(heartbeats) == [f"{prefix}heartbeat" for prefix in APPS]
    assert {r["route"] for r in records} == {"batch"}
    assert [s["sent"] for s in stats] == [EVENTS + 1] * len(APPS)
    assert f"Stopped: accepted {len(records)} operations in " in rest
    # The file was complete before the emulator stopped: the lines were flushed as written.
    assert dumped(path) == records


def test_through_the_fault_flags_every_event_still_arrives(tmp_path: Path) -> None:
    path = tmp_path / "ops.jsonl"
    with emulator_process("--dump", path, *FAULTS) as emulator:
        assert emulator.shown("Faults") == (
            "--seed 11 --failure-rate 0.3 --failure-statuses 500,503 --drop-rate 0.05 "
            "--drop-after-accept-rate 0.05 --rate-limit 40"
        )
        stats = run_apps(emulator, "signed_up")
        signups = listed(emulator, "?name=signed_up")
        records = dumped(path)
        code, _, stderr = emulator.stop()
    assert code == 0, stderr
    assert_every_event_once(signups, "signed_up")
    assert signups == [r for r in records if r["operation"]["name"] == "signed_up"]
    # The faults happened: the apps had to retry.
    assert sum(s["retried"] for s in stats) > 0
    assert [s["sent"] for s in stats] == [EVENTS + 1] * len(APPS)
