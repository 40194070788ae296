"""``spool`` and ``dead-letter`` against the fleet's backlog in Redis (``--redis-url``,
``CUSTOMERIO_REDIS_URL``): a real ``redis-server`` and the emulator, the CLI in-process."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from customerio_logging._redis_client import namespace
from customerio_logging._storage import DeadLetterRow
from customerio_logging._storage.redis import RedisStorage
from customerio_logging._storage.sqlite_path import default_spool_path
from customerio_logging._wire import Operation
from customerio_logging.cli import main
from customerio_logging.testing import FaultPlan, TrackAPIEmulator
from customerio_logging.testing._redis import RedisServer

from ..helpers import (
    BIG,
    fill_spool,
    free_port,
    letter_for,
    read_spool,
    valid_operation,
)

PASSWORD = "s3cret-redis-pw-7d41"


@pytest.fixture
def api(emulator: TrackAPIEmulator, monkeypatch: pytest.MonkeyPatch) -> TrackAPIEmulator:
    """The emulator, with the environment it sets up emptied: the flags say it all, the
    API key only when a command sends, and the spool file is the workspace's own."""
    for name in ("SITE_ID", "TRACK_API_KEY", "TRACK_URL", "SPOOL_PATH", "REDIS_URL"):
        monkeypatch.delenv(f"CUSTOMERIO_{name}", raising=False)
    return emulator


class Fleet:
    """The fleet's backlog in one Redis, for the emulator's workspace, and this host's
    spool file beside it (in the test's own state directory)."""

    def __init__(self, url: str, emulator: TrackAPIEmulator) -> None:
        self.url = url
        self.emulator = emulator
        self.local_file = default_spool_path(emulator.site_id, emulator.url)

    def args(self, *, api_key: bool = False) -> list[str]:
        """The flags that point a command at this backlog (no API key unless asked)."""
        site = ["--site-id", self.emulator.site_id, "--track-url", self.emulator.url]
        key = ["--api-key", self.emulator.api_key] if api_key else []
        return ["--redis-url", self.url, *site, *key]

    @contextmanager
    def app(self) -> Iterator[RedisStorage]:
        """The backlog as an app of the fleet opens it."""
        storage = RedisStorage(
            self.url, max_bytes=BIG, site_id=self.emulator.site_id, track_url=self.emulator.url
        )
        with closing(storage):
            yield storage

    def fill(self, ops: list[Operation], letters: list[DeadLetterRow] | None = None) -> None:
        with self.app() as storage:
            storage.add(ops)
            storage.dead_letter(letters or [])

    def read(self) -> tuple[int, list[DeadLetterRow]]:
        """What waits in the backlog, and its dead letter."""
        with self.app() as storage:
            return storage.pending(), list(storage.dead_letters())

    def fill_local(self, ops: list[Operation], letters: list[DeadLetterRow] | None = None) -> None:
        """Rows in this host's spool file, as the app leaves them while Redis is down."""
        site, url = self.emulator.site_id, self.emulator.url
        fill_spool(self.local_file, ops, letters, site_id=site, track_url=url)

    @property
    def server(self) -> str:
        """How messages name the Redis server: without the password."""
        return f"redis://127.0.0.1:{urlsplit(self.url).port}/0"

    @property
    def location(self) -> str:
        """How the commands show the backlog: the server, and the namespace."""
        keys = namespace(self.emulator.site_id, self.emulator.url)
        return f"{self.server} (namespace {keys})"


@pytest.fixture
def fleet(redis_server: RedisServer, api: TrackAPIEmulator) -> Fleet:
    return Fleet(redis_server.url, api)


def _ops(count: int) -> list[Operation]:
    return [valid_operation() for _ in range(count)]


def _closed_port() -> str:
    """The URL, password included, of a Redis that is not there."""
    return f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"


class TestStatus:
    def test_it_shows_the_fleets_backlog_and_needs_no_api_key(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill(_ops(3), [letter_for(valid_operation()), letter_for(None)])
        with fleet.app() as app:
            assert len(app.claim(1)) == 1  # an app of the fleet is sending one right now
            assert main(["spool", "status", *fleet.args()]) == 0
        out, err = capsys.readouterr()
        assert f"spool:         {fleet.location}\n" in out
        assert re.search(
            r"waiting:       3 operations, \d+ B of JSON \(1 being sent right now\)", out
        )
        assert re.search(r"size:          \S+ \S+ of 100\.0 MiB \(\d+%\)", out)
        assert "s ago)" in out  # the oldest and newest, with their ages
        assert "dead letters:  2 (see: python -m customerio_logging dead-letter list)" in out
        assert "this host:" not in out
        assert err == ""

    def test_json(self, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
        fleet.fill(_ops(4), [letter_for(None)])
        assert main(["spool", "status", "--json", *fleet.args()]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["backend"] == "redis"
        assert shown["path"] == fleet.location
        assert shown["namespace"] == namespace(fleet.emulator.site_id, fleet.emulator.url)
        assert (shown["exists"], shown["pending"], shown["leased"]) == (True, 4, 0)
        assert (shown["dead_letters"], shown["max_bytes"]) == (1, 100 * 1024 * 1024)
        assert shown["oldest"] <= shown["newest"]
        assert (shown["local_pending"], shown["local_dead_letters"]) == (0, 0)
        assert shown["local_path"] == str(fleet.local_file)
        assert not fleet.local_file.exists()  # looked for, not made

    def test_rows_left_in_this_hosts_file_by_an_outage_are_named(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill(_ops(1))
        fleet.fill_local(_ops(2), [letter_for(valid_operation())])
        assert main(["spool", "status", *fleet.args()]) == 0
        out = capsys.readouterr().out
        assert "waiting:       1 operation," in out  # the fleet's, in Redis
        assert (
            f"this host:     2 operations in the spool file {fleet.local_file} (kept while "
            "Redis was down) move to Redis at the next replay\n"
        ) in out
        assert f"this host:     1 dead letter in the spool file {fleet.local_file}" in out
        assert main(["spool", "status", "--json", *fleet.args()]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["pending"], shown["local_pending"], shown["local_dead_letters"]) == (1, 2, 1)

    def test_the_environment_names_redis_and_spool_path_wins_over_it(
        self,
        fleet: Fleet,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fleet.fill(_ops(2))
        monkeypatch.setenv("CUSTOMERIO_REDIS_URL", fleet.url)
        site = ["--site-id", fleet.emulator.site_id, "--track-url", fleet.emulator.url]
        assert main(["spool", "status", "--json", *site]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["backend"], shown["pending"]) == ("redis", 2)
        named = tmp_path / "named.sqlite3"
        fill_spool(named, _ops(5))
        assert main(["spool", "status", "--json", "--spool-path", str(named)]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["backend"], shown["pending"], shown["path"]) == ("file", 5, str(named))

    def test_spool_path_and_redis_url_together_are_a_usage_error(
        self, api: TrackAPIEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        nowhere = Fleet(_closed_port(), api)
        args = ["spool", "status", "--spool-path", str(tmp_path / "x"), *nowhere.args()]
        assert main(args) == 2
        assert "argument --redis-url: not allowed with argument --spool-path" in (
            capsys.readouterr().err
        )

    def test_another_workspaces_backlog_is_not_counted(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        other = RedisStorage(
            fleet.url, max_bytes=BIG, site_id="other", track_url=fleet.emulator.url
        )
        with closing(other):
            other.add(_ops(3))
        assert main(["spool", "status", "--json", *fleet.args()]) == 0
        assert json.loads(capsys.readouterr().out)["pending"] == 0


class TestReplay:
    def test_the_backlog_and_this_hosts_rows_are_sent_once_beside_a_running_app(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        in_redis, on_this_host = _ops(30), _ops(10)
        fleet.fill(in_redis)
        fleet.fill_local(on_this_host)
        with fleet.app() as app:
            held = app.claim(5)  # an app of the fleet is sending these: not sent twice
            args = ["spool", "replay", *fleet.args(api_key=True), "--batch-size", "10"]
            assert main(args) == 0
            out, err = capsys.readouterr()
            held_ids = {op.id for op in held}
            everything = in_redis + on_this_host
            assert fleet.emulator.accepted_ids() == {
                op.id: 1 for op in everything if op.id not in held_ids
            }
            assert fleet.read()[0] == 5  # the app's, still claimed by it
            app.ack(list(held_ids))
        assert read_spool(fleet.local_file) == (0, [])  # moved to Redis, then sent
        assert fleet.read() == (0, [])
        assert f"replaying 40 operations from {fleet.location} to 127.0.0.1:" in err
        assert f"10 of them wait in this host's spool file {fleet.local_file}" in err
        assert "sent:          35\n" in out
        assert "still waiting: 5 (5 claimed by a sender right now)\n" in out
        assert fleet.emulator.api_key not in out + err

    def test_refused_operations_go_to_the_fleets_dead_letter_and_no_file_is_made(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ops = _ops(3)
        fleet.fill(ops)
        fleet.emulator.set_faults(
            FaultPlan(reject_ops=lambda op: "blocked_by_test" if op["id"] == ops[1].id else None)
        )
        assert main(["spool", "replay", *fleet.args(api_key=True)]) == 0
        assert fleet.emulator.accepted_ids() == {ops[0].id: 1, ops[2].id: 1}
        pending, [letter] = fleet.read()
        assert (pending, letter.id, letter.reason) == (0, ops[1].id, "blocked_by_test")
        assert "refused:       1 (1 blocked_by_test)" in capsys.readouterr().out
        assert not fleet.local_file.exists()

    def test_it_paces_itself_with_the_fleets_rate_limit(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill(_ops(3))
        direct = redis.Redis.from_url(fleet.url)
        bucket = f"{namespace(fleet.emulator.site_id, fleet.emulator.url)}rate:bucket"
        assert not direct.exists(bucket)
        assert main(["spool", "replay", *fleet.args(api_key=True), "--batch-size", "1"]) == 0
        assert direct.exists(bucket)  # each request took its token from the fleet's bucket
        assert len(fleet.emulator.accepted_ids()) == 3

    def test_it_needs_the_api_key(
        self, api: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["spool", "replay", *Fleet(_closed_port(), api).args()]) == 2
        assert "configuration error: api_key is not set" in capsys.readouterr().err


class TestPurge:
    def test_it_deletes_what_waits_in_redis_and_leaves_the_rest(
        self, fleet: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill(_ops(3), [letter_for(None)])
        fleet.fill_local(_ops(2))
        assert main(["spool", "purge", *fleet.args()]) == 1
        err = capsys.readouterr().err
        assert f"this would delete 3 operations waiting in {fleet.location}, unsent" in err
        assert fleet.read()[0] == 3
        assert main(["spool", "purge", "--yes", *fleet.args()]) == 0
        out, err = capsys.readouterr()
        assert f"deleted 3 waiting operations from {fleet.location}\n" == out
        assert f"note: 2 operations in this host's spool file {fleet.local_file}" in err
        assert f"spool purge --spool-path {fleet.local_file}" in err
        pending, letters = fleet.read()
        assert (pending, len(letters)) == (0, 1)  # the dead letter is kept
        assert read_spool(fleet.local_file)[0] == 2


class TestDeadLetters:
    @pytest.fixture
    def refused(self, fleet: Fleet) -> list[Operation]:
        """Three dead letters in Redis (two refused by the API, one invalid event)."""
        ops = _ops(2)
        letters = [letter_for(ops[0]), letter_for(None, "invalid_name"), letter_for(ops[1])]
        fleet.fill([], letters)
        return ops

    def test_list_as_a_table_and_as_json(
        self, fleet: Fleet, refused: list[Operation], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["dead-letter", "list", *fleet.args()]) == 0
        out = capsys.readouterr().out
        assert out.startswith("SEQ  WHEN ")
        assert all(op.id in out for op in refused)
        assert "3 dead letters\n" in out
        assert main(["dead-letter", "list", "--json", "--reason", "http_400", *fleet.args()]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["id"] for r in records] == [op.id for op in refused]
        assert records[0]["operation"] == json.loads(refused[0].body)

    def test_list_names_this_hosts_own_dead_letters(
        self, fleet: Fleet, refused: list[Operation], capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill_local([], [letter_for(None)])
        assert main(["dead-letter", "list", *fleet.args()]) == 0
        err = capsys.readouterr().err
        assert f"note: this host's spool file {fleet.local_file} holds 1 dead letter too" in err

    def test_export_to_a_private_file(
        self,
        fleet: Fleet,
        refused: list[Operation],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        output = tmp_path / "refused.jsonl"
        assert main(["dead-letter", "export", "--output", str(output), *fleet.args()]) == 0
        assert f"exported 3 dead letters to {output}" in capsys.readouterr().err
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["reason"] for r in lines] == ["http_400", "invalid_name", "http_400"]

    def test_requeue_then_replay_sends_them(
        self, fleet: Fleet, refused: list[Operation], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["dead-letter", "requeue", "--all", *fleet.args()]) == 0
        out = capsys.readouterr().out
        assert f"moved 2 dead letters back into the spool at {fleet.location}" in out
        assert "1 dead letter stayed: invalid events have no operation to send" in out
        pending, letters = fleet.read()
        assert (pending, [x.reason for x in letters]) == (2, ["invalid_name"])
        assert main(["spool", "replay", *fleet.args(api_key=True)]) == 0
        assert fleet.emulator.accepted_ids() == {op.id: 1 for op in refused}

    def test_purge_needs_yes_and_deletes_the_chosen_rows(
        self, fleet: Fleet, refused: list[Operation], capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["dead-letter", "purge", "--reason", "http_400", *fleet.args()]
        assert main(args) == 1
        assert "this would delete 2 dead letters" in capsys.readouterr().err
        assert len(fleet.read()[1]) == 3
        assert main([*args, "--yes"]) == 0
        assert f"deleted 2 dead letters from {fleet.location}" in capsys.readouterr().out
        assert [x.reason for x in fleet.read()[1]] == ["invalid_name"]


class TestThePasswordIsNeverShown:
    @pytest.fixture
    def locked(self, redis_server: RedisServer, api: TrackAPIEmulator) -> Fleet:
        """The backlog in a Redis that needs a password: one dead letter, one waiting.

        The plugin's server, told at run time to ask for a password: the URL every
        command gets holds it."""
        with closing(redis.Redis.from_url(redis_server.url)) as client:
            client.config_set("requirepass", PASSWORD)
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
        fleet = Fleet(url, api)
        fleet.fill(_ops(1), [letter_for(valid_operation())])
        return fleet

    def test_in_what_any_command_prints(
        self, locked: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        commands = [
            (["spool", "status"], 0),
            (["spool", "status", "--json"], 0),
            (["spool", "purge"], 1),  # refused without --yes
            (["dead-letter", "list"], 0),
            (["dead-letter", "list", "--json"], 0),
            (["dead-letter", "export", "--output", str(tmp_path / "out.jsonl")], 0),
            (["dead-letter", "purge", "--all"], 1),  # refused without --yes
            (["dead-letter", "requeue", "--all"], 0),
            (["spool", "replay"], 0),
            (["spool", "purge", "--yes"], 0),
            (["dead-letter", "purge", "--all", "--yes"], 0),
        ]
        for command, code in commands:
            assert main([*command, *locked.args(api_key=True)]) == code, command
            out, err = capsys.readouterr()
            assert out + err, command
            assert PASSWORD not in out + err, command
        assert len(locked.emulator.accepted_ids()) == 2  # the waiting one, the requeued one

    def test_nor_when_it_is_wrong_or_the_url_malformed(
        self, locked: Fleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        wrong = locked.url.replace(PASSWORD, PASSWORD[::-1])
        site = ["--site-id", "s"]
        assert main(["spool", "status", "--redis-url", wrong, *site]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"FAILED: Redis at {locked.server} failed (")
        assert PASSWORD[::-1] not in err
        malformed = f"redis://:{PASSWORD}@127.0.0.1:notaport/0"
        assert main(["spool", "status", "--redis-url", malformed, *site]) == 2
        err = capsys.readouterr().err
        assert "configuration error: redis_url must look like" in err
        assert PASSWORD not in err


class TestRedisDown:
    """Redis cannot be reached: every command exits 1 with one clear line, no traceback,
    and a replay does not fall back to sending this host's rows alone."""

    @pytest.mark.parametrize(
        "command",
        [
            ["spool", "status"],
            ["spool", "status", "--json"],
            ["spool", "replay"],
            ["spool", "purge", "--yes"],
            ["dead-letter", "list"],
            ["dead-letter", "export", "--output", "out.jsonl"],
            ["dead-letter", "requeue", "--all"],
            ["dead-letter", "purge", "--all", "--yes"],
        ],
        ids=" ".join,
    )
    def test_exit_1_with_a_clear_message(
        self,
        api: TrackAPIEmulator,
        command: list[str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.chdir(tmp_path)
        down = Fleet(_closed_port(), api)
        down.fill_local(_ops(2))
        assert main([*command, *down.args(api_key=True)]) == 1
        out, err = capsys.readouterr()
        assert err.startswith(f"FAILED: Redis at {down.server} failed (ConnectionError: "), err
        assert err.endswith(
            ": is the server up, and is the URL right (--redis-url, CUSTOMERIO_REDIS_URL)?\n"
        )
        assert err.count("\n") == 1
        assert out == ""
        assert PASSWORD not in err
        assert api.requests == []
        assert read_spool(down.local_file)[0] == 2
        assert not (tmp_path / "out.jsonl").exists()

    def test_a_server_that_stopped(
        self, fleet: Fleet, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fleet.fill(_ops(1))
        redis_server.stop()
        assert main(["spool", "status", *fleet.args()]) == 1
        assert capsys.readouterr().err.startswith(f"FAILED: Redis at {fleet.server} failed (")


class TestNoApiKeyForTheLocalFile:
    def test_the_site_id_finds_the_workspaces_file(
        self, api: TrackAPIEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = default_spool_path(api.site_id, api.url)
        fill_spool(path, _ops(2), [letter_for(None)])
        site = ["--site-id", api.site_id, "--track-url", api.url]
        assert main(["spool", "status", "--json", *site]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["backend"], shown["path"], shown["pending"]) == ("file", str(path), 2)
        assert main(["dead-letter", "list", *site]) == 0
        assert "1 dead letter\n" in capsys.readouterr().out
