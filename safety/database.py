"""The approvals database: one SQLite file shared by the accounts (:mod:`safety.accounts`), the approvals store
(:mod:`safety.approvals`) and the gate's log (:mod:`safety.gate`).

WAL mode, so readers never block the writer (the console and the deployment gate share the file), and
owner-only from its creation, since it holds password hashes. Each call opens its own connection, so a
store is safe to share between threads and processes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another writer's lock before failing."""
FILE_MODE = 0o600
"""Owner read/write only (SQLite gives its ``-wal`` and ``-shm`` files the same mode)."""


class StoreError(ValueError):
    """A request the approvals database refuses (bad input, an unknown name, a missing folder)."""


def append_only(*tables: str) -> str:
    """SQL triggers that make the database itself refuse ``UPDATE`` and ``DELETE`` on ``tables`` (for every
    client of the file, not only ours)."""
    return "".join(
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t}\n"
        f"BEGIN SELECT RAISE(ABORT, '{t} is append-only: rows cannot be {verb}'); END;\n"
        for t in tables for op, verb in (("UPDATE", "changed"), ("DELETE", "deleted")))


def open_database(path: str | Path, schema: str) -> Path:
    """Create the database file if needed (owner-only), switch it to WAL mode and apply ``schema``
    (``CREATE … IF NOT EXISTS`` statements); returns the path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(f"database {path}: folder {path.parent} does not exist")
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    with connect(path) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"database {path}: could not switch to WAL mode (got {mode!r})")
        db.executescript(schema)
    return path


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode, rows by column name, foreign keys enforced; closed on exit."""
    # Autocommit: every write states its own transaction, so a check and the write it guards (a decision
    # on a pending program) commit together or not at all.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        db.execute("PRAGMA foreign_keys=ON")
        db.row_factory = sqlite3.Row
        yield db
    finally:
        db.close()
