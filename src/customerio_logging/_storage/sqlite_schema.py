"""The spool file's format: its stamp, tables and byte-counting triggers.

A file is ours when ``PRAGMA application_id`` says so; ``PRAGMA user_version`` is the
format it was written in. The triggers keep the byte counts in ``meta`` exact whoever
writes, so bounding the spool never sums its rows.
"""

from __future__ import annotations

import sqlite3

__all__ = [
    "APPLICATION_ID",
    "DEAD_LETTER_BYTES",
    "SCHEMA_VERSION",
    "create_schema",
    "meta_int",
]

APPLICATION_ID = 0x43494F4C  # "CIOL": marks the file as ours (PRAGMA application_id)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('spool_bytes', 0);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    name TEXT,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS spool_lease_owner ON spool (lease_owner);
CREATE TRIGGER IF NOT EXISTS spool_bytes_added AFTER INSERT ON spool BEGIN
    UPDATE meta SET value = value + length(NEW.body) WHERE key = 'spool_bytes';
END;
CREATE TRIGGER IF NOT EXISTS spool_bytes_removed AFTER DELETE ON spool BEGIN
    UPDATE meta SET value = value - length(OLD.body) WHERE key = 'spool_bytes';
END;
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT,
    action TEXT,
    name TEXT,
    reason TEXT NOT NULL,
    field TEXT,
    message TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dead_letters_evicted', 0);
CREATE TRIGGER IF NOT EXISTS dead_letter_bytes_added AFTER INSERT ON dead_letter BEGIN
    UPDATE meta SET value = value + ({new}) WHERE key = 'dead_letter_bytes';
END;
CREATE TRIGGER IF NOT EXISTS dead_letter_bytes_removed AFTER DELETE ON dead_letter BEGIN
    UPDATE meta SET value = value - ({old}) WHERE key = 'dead_letter_bytes';
END;
-- After the triggers: a file from before them is counted once, rows written meanwhile
-- by another process included.
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'dead_letter_bytes', (SELECT COALESCE(SUM({row}), 0) FROM dead_letter)
    WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'dead_letter_bytes');
"""


def _dead_letter_bytes(row: str) -> str:
    """SQL for a dead letter's size in bytes: its body and its texts (UTF-8)."""
    texts = ("id", "action", "name", "reason", "field", "message")
    parts = [f"COALESCE(length({row}body), 0)"]
    parts += [f"COALESCE(length(CAST({row}{column} AS BLOB)), 0)" for column in texts]
    return " + ".join(parts)


DEAD_LETTER_BYTES = _dead_letter_bytes("")
"""SQL for the size of a ``dead_letter`` row, as its bound counts it."""
_SCHEMA = _SCHEMA.format(
    new=_dead_letter_bytes("NEW."), old=_dead_letter_bytes("OLD."), row=DEAD_LETTER_BYTES
)


def _statements(script: str) -> list[str]:
    """The script's statements one by one: ``executescript`` would commit between them."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


_SCHEMA_STATEMENTS = _statements(_SCHEMA)


def create_schema(conn: sqlite3.Connection, *, stamp: bool) -> None:
    """Make the file a spool (``stamp``: mark it ours), or bring an older one up to date:
    all in one transaction, so that a process killed meanwhile leaves no half-made file."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if stamp:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in _SCHEMA_STATEMENTS:
            conn.execute(statement)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    """A count kept in ``meta`` (0 when missing)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])
