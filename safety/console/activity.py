"""The console's action log: every action taken through the console or its CLI, append-only.

The decisions on programs stay in the approvals store's ``audit`` table (the gate reads it); that table
holds only approve/reject of a program, so everything else a person does — log in (and fail to), log out,
revoke sessions, add a user or change roles, submit, decide, act on a deployment, and every refusal (a
missing role, a wrong CSRF token, a rate-limited login) — is a row of the ``console_audit`` table here, in
the same approvals database, which refuses UPDATE and DELETE like the audit table.

A row never holds a password, a session cookie, a CSRF token or an API key: only who, from where, what,
on what, the outcome and a short detail. Failed logins under a name that is no user are recorded with an
empty user, so a password typed into the name field never reaches the log.

The login rate limit (:func:`login_retry_at`) counts the failed-login rows, so it holds across restarts
and across console processes sharing the database.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safety.database import append_only, connect, open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS console_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    time_utc TEXT NOT NULL,
    user TEXT NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('done', 'refused')),
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_audit_action_at ON console_audit (action, at);
""" + append_only("console_audit")

DONE = "done"
REFUSED = "refused"
LOGIN = "login"
LOGIN_FAILED = "login-failed"
"""A wrong password (or an unknown name, recorded with an empty user): what the rate limit counts."""
LOGIN_REFUSED = "login-refused"
"""A login refused by the rate limit before the password was checked (not counted as a failure)."""
MAX_FIELD_CHARS = 200
MAX_DETAIL_CHARS = 2000
CLI_CLIENT = "cli"
"""The ``client`` of a row written by the command line."""


@dataclass(frozen=True)
class Action:
    """One row of the console's action log."""

    id: int
    at: float
    """Unix time (s)."""
    time_utc: str
    user: str
    """Who acted ('' for a stranger: a failed login under an unknown name, a refused anonymous request)."""
    client: str
    """The client's address as the console saw it, or ``cli``."""
    action: str
    target: str
    """What it acted on: ``program:3``, ``deployment:2``, ``user:alice``, or ''."""
    outcome: str
    """``done`` or ``refused``."""
    detail: dict[str, Any]


def _action(r: sqlite3.Row) -> Action:
    return Action(r["id"], r["at"], r["time_utc"], r["user"], r["client"], r["action"], r["target"], r["outcome"],
                  json.loads(r["detail"]))


class ActivityLog:
    """The ``console_audit`` table of an approvals database."""

    def __init__(self, path: str | Path) -> None:
        self.path = open_database(path, SCHEMA)

    def record(self, user: str, client: str, action: str, target: str = "", outcome: str = DONE,
               **detail: Any) -> Action:
        """Append one row; ``detail`` is kept as JSON (cut to :data:`MAX_DETAIL_CHARS`)."""
        if outcome not in (DONE, REFUSED):
            raise ValueError(f"outcome {outcome!r}: {DONE} or {REFUSED}")
        body = json.dumps(detail, sort_keys=True, default=str)
        if len(body) > MAX_DETAIL_CHARS:
            body = json.dumps({"cut": body[:MAX_DETAIL_CHARS]})
        now = time.time()
        with connect(self.path) as db:
            cur = db.execute(
                "INSERT INTO console_audit (at, time_utc, user, client, action, target, outcome, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now, datetime.fromtimestamp(now, UTC).isoformat(), user[:MAX_FIELD_CHARS],
                 client[:MAX_FIELD_CHARS], action, target[:MAX_FIELD_CHARS], outcome, body))
            row = db.execute("SELECT * FROM console_audit WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _action(row)

    def rows(self, action: str | None = None, limit: int | None = None) -> list[Action]:
        """Rows oldest first (only ``action`` ones if given; the newest ``limit`` if given)."""
        sql, args = "SELECT * FROM console_audit", ()
        if action is not None:
            sql, args = sql + " WHERE action = ?", (action,)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        with connect(self.path) as db:
            return [_action(r) for r in db.execute(sql + " ORDER BY id", args)]

    def failures_since(self, since_at: float, *, user: str | None = None, client: str | None = None) -> list[float]:
        """The times of failed logins after ``since_at`` under ``user`` (after that user's last success)
        or from ``client``, oldest first."""
        if (user is None) == (client is None):
            raise ValueError("failures_since: give exactly one of user and client")
        with connect(self.path) as db:
            if user is not None:
                # A success ends a run of failures for that user; it does not for an address, or a guesser
                # with an account of their own could reset their address's count by logging in.
                rows = db.execute(
                    "SELECT at FROM console_audit WHERE action = ? AND user = ? AND at > ? AND id > "
                    "(SELECT coalesce(max(id), 0) FROM console_audit WHERE action = ? AND user = ?) ORDER BY at",
                    (LOGIN_FAILED, user, since_at, LOGIN, user)).fetchall()
            else:
                rows = db.execute("SELECT at FROM console_audit WHERE action = ? AND client = ? AND at > ?"
                                  " ORDER BY at", (LOGIN_FAILED, client, since_at)).fetchall()
        return [float(r["at"]) for r in rows]


def login_retry_at(log: ActivityLog, user: str, client: str, max_failures: int, window_s: float,
                   now: float | None = None) -> float | None:
    """When a login for ``user`` from ``client`` may be tried again (Unix time), or ``None`` if it may now.

    Refused once ``max_failures`` failed logins lie within the last ``window_s`` seconds, for that user
    name (known users only) or for that address; allowed again when enough of them have aged out.
    """
    now = time.time() if now is None else now
    since = now - window_s
    retry: float | None = None
    groups = [log.failures_since(since, client=client)]
    if user:
        groups.append(log.failures_since(since, user=user))
    for times in groups:
        if len(times) >= max_failures:
            # Oldest first: once times[k - max] has aged out, max - 1 are left in the window.
            at = times[len(times) - max_failures] + window_s
            retry = at if retry is None else max(retry, at)
    return retry
