"""The deployments store: each deployment to a printer, its events, and the operators' requests to it.

Three append-only tables in the approvals database (:mod:`safety.database`), the contract between the one
process that moves a printer (:mod:`safety.deploy`) and the people watching it (the console):

- ``deployments``: one row per deployment (program SHA-256, stage, printer URL, who started it, when);
- ``deployment_events``: what happened, in order — ``state`` (printing, paused, complete …), ``telemetry``
  (temperatures, layer, progress, ETA), ``proposal``/``verdict``/``sent`` (the supervisor's tuning),
  ``watchdog`` (a watchdog fired and the action taken), ``action`` (an operator's request carried out),
  ``summary`` (the end), ``label`` (a person's verdict on the printed part: outcome, failure mode, note).
  Each with a JSON body.
- ``deployment_requests``: an operator's request (``confirm-first-layer``, ``pause``, ``resume``, ``abort``,
  ``estop``) with the user; the deployment process polls for the ones it has not handled and records each
  as an ``action`` event when done.

Nothing is updated or deleted: a deployment's state is its last ``state`` event. No API key, password or
session value is ever written here (the deployment records the printer URL without credentials).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safety.database import StoreError, append_only, connect, open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    stage TEXT NOT NULL,
    printer_url TEXT NOT NULL,
    printer TEXT NOT NULL,
    started_by TEXT NOT NULL,
    started_at REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    at REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL
);
""" + append_only("deployments", "deployment_events", "deployment_requests")

EVENT_KINDS = ("state", "telemetry", "proposal", "verdict", "sent", "watchdog", "action", "summary", "error",
               "label")
"""What a deployment event can be (module docstring)."""
REQUESTS = ("confirm-first-layer", "pause", "resume", "abort", "estop")
"""What an operator can ask of a running deployment."""
LABEL_OUTCOMES = ("success", "failure")
"""A person's verdict on a printed part (the feedback CSV's ``outcome``)."""


@dataclass(frozen=True)
class Deployment:
    id: int
    sha256: str
    stage: str
    printer_url: str
    printer: str
    started_by: str
    started_at: float
    pid: int


@dataclass(frozen=True)
class Event:
    id: int
    deployment_id: int
    at: float
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Request:
    id: int
    deployment_id: int
    at: float
    user: str
    action: str


def _deployment(row: Any) -> Deployment:
    return Deployment(row["id"], row["sha256"], row["stage"], row["printer_url"], row["printer"], row["started_by"],
                      row["started_at"], row["pid"])


class DeploymentStore:
    """Deployments, their events and requests in the approvals database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = open_database(path, SCHEMA)

    def start(self, sha256: str, stage: str, printer_url: str, printer: str, user: str, pid: int) -> int:
        with connect(self.path) as db:
            cursor = db.execute("INSERT INTO deployments (sha256, stage, printer_url, printer, started_by, "
                                "started_at, pid) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (sha256, stage, printer_url, printer, user, time.time(), pid))
            return int(cursor.lastrowid or 0)

    def event(self, deployment_id: int, kind: str, body: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise StoreError(f"event kind {kind!r}: one of {', '.join(EVENT_KINDS)}")
        with connect(self.path) as db:
            db.execute("INSERT INTO deployment_events (deployment_id, at, kind, body) VALUES (?, ?, ?, ?)",
                       (deployment_id, time.time(), kind, json.dumps(body, sort_keys=True)))

    def request(self, deployment_id: int, user: str, action: str) -> int:
        """An operator's request (the console calls this); the deployment carries it out."""
        if action not in REQUESTS:
            raise StoreError(f"request {action!r}: one of {', '.join(REQUESTS)}")
        self.deployment(deployment_id)
        with connect(self.path) as db:
            cursor = db.execute("INSERT INTO deployment_requests (deployment_id, at, user, action) "
                                "VALUES (?, ?, ?, ?)", (deployment_id, time.time(), user, action))
            return int(cursor.lastrowid or 0)

    def requests_after(self, deployment_id: int, after_id: int) -> list[Request]:
        with connect(self.path) as db:
            rows = db.execute("SELECT * FROM deployment_requests WHERE deployment_id = ? AND id > ? ORDER BY id",
                              (deployment_id, after_id)).fetchall()
        return [Request(r["id"], r["deployment_id"], r["at"], r["user"], r["action"]) for r in rows]

    def deployment(self, deployment_id: int) -> Deployment:
        with connect(self.path) as db:
            row = db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        if row is None:
            raise StoreError(f"deployment {deployment_id}: no such deployment")
        return _deployment(row)

    def deployments(self) -> list[Deployment]:
        with connect(self.path) as db:
            rows = db.execute("SELECT * FROM deployments ORDER BY id DESC").fetchall()
        return [_deployment(r) for r in rows]

    def events(self, deployment_id: int, kind: str | None = None, after_id: int = 0) -> list[Event]:
        query = "SELECT * FROM deployment_events WHERE deployment_id = ? AND id > ?"
        args: tuple[Any, ...] = (deployment_id, after_id)
        if kind is not None:
            query += " AND kind = ?"
            args += (kind,)
        with connect(self.path) as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [Event(r["id"], r["deployment_id"], r["at"], r["kind"], json.loads(r["body"])) for r in rows]

    def label(self, deployment_id: int, user: str, outcome: str, failure_mode: str = "", note: str = "") -> None:
        """A person's verdict on what the deployment printed (what a real-world dataset may learn from)."""
        if outcome not in LABEL_OUTCOMES:
            raise StoreError(f"outcome {outcome!r}: one of {', '.join(LABEL_OUTCOMES)}")
        if not user.strip():
            raise StoreError("a label needs the name of the person who looked at the part")
        self.deployment(deployment_id)
        self.event(deployment_id, "label", {"user": user, "outcome": outcome, "failure_mode": failure_mode,
                                            "note": note})

    def state(self, deployment_id: int) -> str:
        """The deployment's last ``state`` event (``starting`` before the first)."""
        states = self.events(deployment_id, "state")
        return str(states[-1].body.get("state", "?")) if states else "starting"
