"""The approvals store: programs waiting for a person, their decisions, and an append-only audit log.

The approvals database (:mod:`safety.database`: one SQLite file in WAL mode, shared with the accounts of
:mod:`safety.accounts` and the gate's log) holds two tables of the store:

- ``programs``: every submitted program, its G-code as a blob (never a file named by a user), the optional
  expert program, and what the validator and the embedded simulation said at submission (the simulation
  and its preview are :func:`safety.console.preview.simulate_for_review`'s);
- ``audit``: one row per decision (who — a user of :class:`~safety.accounts.Accounts` —, when in UTC,
  program id, SHA-256, approve/reject, comment).
  Triggers make the database itself refuse UPDATE and DELETE on it, and refuse rewriting a program's
  G-code or SHA-256, so an approval always names the exact bytes that were reviewed;
- ``advisories``: at most one :class:`~safety.advisory.Advisory` per program, given at submission (a trained
  predictor's probability of success and its abstain band), shown to the reviewer and never deciding;
  append-only too.

A decision is made by a user with the ``reviewer`` role; the user who submitted a program cannot approve it
(unless the caller allows it: the console's ``submitter_may_approve``). A program is pending until its one
decision is recorded. :meth:`ApprovalStore.is_approved` answers by
SHA-256 alone: the gate hashes the bytes it is about to send, so a program changed by one byte after
approval is not approved.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from safety.accounts import REVIEWER, Accounts
from safety.advisory import Advisory
from safety.console.preview import simulate_for_review
from safety.database import StoreError, connect, open_database
from safety.validator import validate
from sim_bridge.backends import EMBEDDED, OFFLINE_BACKENDS
from sim_bridge.config import ConfigError
from sim_bridge.failures import UNREADABLE
from sim_bridge.printers import load_printer

Decision = Literal["approve", "reject"]
DECISIONS: tuple[str, ...] = ("approve", "reject")

MAX_COMMENT_CHARS = 4000
MAX_JOB_CHARS = 200
MAX_DESCRIPTION_CHARS = 20000

SCHEMA = """
CREATE TABLE IF NOT EXISTS programs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
    printer TEXT NOT NULL,
    job TEXT NOT NULL,
    description TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    gcode BLOB NOT NULL,
    expert_gcode BLOB,
    verdict_json TEXT NOT NULL,
    report_json TEXT NOT NULL,
    preview_zjson BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS programs_sha256 ON programs (sha256);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_utc TEXT NOT NULL,
    user TEXT NOT NULL,
    program_id INTEGER NOT NULL REFERENCES programs (id),
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_sha256 ON audit (sha256);
CREATE INDEX IF NOT EXISTS audit_program ON audit (program_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: rows cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: rows cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS programs_code_fixed BEFORE UPDATE OF sha256, gcode ON programs
BEGIN SELECT RAISE(ABORT, 'a submitted program cannot be changed: submit the new version'); END;
CREATE TABLE IF NOT EXISTS advisories (
    program_id INTEGER PRIMARY KEY REFERENCES programs (id),
    advisory_json TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS advisories_no_update BEFORE UPDATE ON advisories
BEGIN SELECT RAISE(ABORT, 'an advisory cannot be changed: submit the program again'); END;
CREATE TRIGGER IF NOT EXISTS programs_no_delete_decided BEFORE DELETE ON programs
WHEN EXISTS (SELECT 1 FROM audit WHERE program_id = OLD.id)
BEGIN SELECT RAISE(ABORT, 'a decided program cannot be deleted'); END;
"""


class ApprovalError(StoreError):
    """A request the store refuses: unknown user or program, a decision on a decided program, bad input."""


class UnknownProgram(ApprovalError, LookupError):
    """No program has this id."""


@dataclass(frozen=True)
class AuditRow:
    """One decision, as recorded."""

    id: int
    time_utc: str
    """ISO 8601 with offset, e.g. ``2025-01-31T12:00:00.123456+00:00``."""
    user: str
    program_id: int
    sha256: str
    decision: str
    comment: str


@dataclass(frozen=True)
class ProgramSummary:
    """A program without its G-code and reports, for queues and lists."""

    id: int
    sha256: str
    printer: str
    job: str
    submitted_at: str
    submitted_by: str
    verdict: str
    """The validator's verdict at submission: ``allow`` or ``block``."""
    status: str
    """``pending``, ``approved`` or ``rejected``."""
    size_bytes: int


@dataclass(frozen=True)
class Program:
    """A submitted program with everything the reviewer sees."""

    id: int
    sha256: str
    printer: str
    job: str
    description: str
    submitted_at: str
    submitted_by: str
    gcode: bytes
    expert_gcode: bytes | None
    verdict: dict[str, Any]
    """The validator's :meth:`Verdict.as_dict`."""
    report: dict[str, Any]
    """The simulation's :meth:`PrintReport.to_dict` without traces, plus ``temperatures``: peak values."""
    preview: dict[str, Any]
    """Per-layer toolpaths and thinned temperature traces, see
    :func:`safety.console.preview.simulate_for_review`."""
    decision: AuditRow | None
    advisory: Advisory | None = None
    """A predictor's advice given at submission (:mod:`safety.advisory`); None when none was given."""

    @property
    def status(self) -> str:
        """``pending``, ``approved`` or ``rejected``."""
        return _status(self.decision.decision if self.decision else None)


def _status(decision: str | None) -> str:
    return {None: "pending", "approve": "approved", "reject": "rejected"}[decision]


def _now_utc() -> str:
    return datetime.now(UTC).isoformat()


class ApprovalStore:
    """Programs and the audit log in the approvals database, beside its :attr:`accounts`. Safe to share
    between threads and processes: each call opens its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.accounts = Accounts(path)
        """The console users of this database (a decision needs one)."""
        self.path = open_database(path, SCHEMA)

    # -- programs --------------------------------------------------------------------------------------
    def submit(self, gcode: bytes, *, printer: str, job: str, description: str = "",
               expert_gcode: bytes | None = None, submitted_by: str = "", backend: str = EMBEDDED,
               advisory: Advisory | None = None) -> int:
        """Validate and simulate a program on ``printer`` and queue it for a decision; return its id.

        ``printer`` is a bundled profile name or a profile file (see :func:`sim_bridge.printers.load_printer`);
        ``backend`` simulates for the review beside the embedded simulator (one of
        :data:`sim_bridge.backends.OFFLINE_BACKENDS`: ``klipper-batch`` runs the real Klipper host);
        ``advisory`` is shown to the reviewer beside the program and stored with it (it decides nothing).
        """
        if backend not in OFFLINE_BACKENDS:
            raise ApprovalError(f"backend {backend!r}: a review simulates with one of {', '.join(OFFLINE_BACKENDS)}")
        if not isinstance(gcode, bytes) or not gcode:
            raise ApprovalError("program: expected non-empty G-code bytes")
        if advisory is not None and not isinstance(advisory, Advisory):
            raise ApprovalError(f"advisory: expected a safety.advisory.Advisory, got {type(advisory).__name__}")
        if expert_gcode is not None and not isinstance(expert_gcode, bytes):
            raise ApprovalError("expert program: expected G-code bytes")
        job = job.strip()
        if not job or len(job) > MAX_JOB_CHARS:
            raise ApprovalError(f"job name {job!r}: 1 to {MAX_JOB_CHARS} characters")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise ApprovalError(f"job description: at most {MAX_DESCRIPTION_CHARS} characters")
        try:
            profile = load_printer(printer)
        except ConfigError as exc:
            raise ApprovalError(str(exc)) from None
        verdict = validate(gcode, profile, name=job)
        report, preview = simulate_for_review(gcode, profile, job, backend=backend)
        unreadable = next((f for f in report["failures"] if f["mode"] == UNREADABLE), None)
        if unreadable is not None:
            raise ApprovalError(f"program cannot be read as G-code: {unreadable['message']}")
        sha256 = hashlib.sha256(gcode).hexdigest()
        if verdict.sha256 != sha256:
            raise ApprovalError(f"validator hashed {verdict.sha256}, store hashed {sha256}: not the same bytes")
        preview_blob = zlib.compress(json.dumps(preview, separators=(",", ":")).encode(), 6)
        with connect(self.path) as db:
            db.execute("BEGIN")  # the program and its advisory are stored together or not at all
            cur = db.execute(
                "INSERT INTO programs (sha256, printer, job, description, submitted_at, submitted_by, gcode,"
                " expert_gcode, verdict_json, report_json, preview_zjson) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, str(printer), job, description, _now_utc(), submitted_by, gcode, expert_gcode,
                 json.dumps(verdict.as_dict()), json.dumps(report, allow_nan=False, default=float), preview_blob))
            program_id = int(cur.lastrowid)
            if advisory is not None:
                db.execute("INSERT INTO advisories (program_id, advisory_json) VALUES (?, ?)",
                           (program_id, json.dumps(advisory.as_dict())))
            db.execute("COMMIT")
            return program_id

    def _summaries(self, where: str, args: tuple[Any, ...] = ()) -> list[ProgramSummary]:
        sql = ("SELECT p.id, p.sha256, p.printer, p.job, p.submitted_at, p.submitted_by, p.verdict_json,"
               " length(p.gcode) AS size, (SELECT decision FROM audit a WHERE a.program_id = p.id"
               " ORDER BY a.id DESC LIMIT 1) AS decision FROM programs p " + where + " ORDER BY p.id")
        with connect(self.path) as db:
            rows = db.execute(sql, args).fetchall()
        return [ProgramSummary(r["id"], r["sha256"], r["printer"], r["job"], r["submitted_at"], r["submitted_by"],
                               json.loads(r["verdict_json"]).get("verdict", "?"), _status(r["decision"]),
                               r["size"]) for r in rows]

    def pending(self) -> list[ProgramSummary]:
        """Programs with no decision yet, oldest first."""
        return self._summaries("WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.program_id = p.id)")

    def programs(self) -> list[ProgramSummary]:
        """Every program, oldest first."""
        return self._summaries("")

    def program(self, program_id: int) -> Program:
        """One program with its G-code, reports and decision; :class:`UnknownProgram` if there is none."""
        with connect(self.path) as db:
            r = db.execute("SELECT * FROM programs WHERE id = ?", (int(program_id),)).fetchone()
            a = db.execute("SELECT * FROM audit WHERE program_id = ? ORDER BY id DESC LIMIT 1",
                           (int(program_id),)).fetchone()
            adv = db.execute("SELECT advisory_json FROM advisories WHERE program_id = ?", (int(program_id),)).fetchone()
        if r is None:
            raise UnknownProgram(f"program {program_id}: no such program")
        return Program(r["id"], r["sha256"], r["printer"], r["job"], r["description"], r["submitted_at"],
                       r["submitted_by"], bytes(r["gcode"]),
                       None if r["expert_gcode"] is None else bytes(r["expert_gcode"]),
                       json.loads(r["verdict_json"]), json.loads(r["report_json"]),
                       json.loads(zlib.decompress(r["preview_zjson"])), _audit_row(a) if a else None,
                       Advisory.from_dict(json.loads(adv["advisory_json"])) if adv else None)

    # -- decisions -------------------------------------------------------------------------------------
    def decide(self, program_id: int, user: str, decision: str, comment: str, *,
               submitter_may_approve: bool = False) -> AuditRow:
        """Record ``approve`` or ``reject`` of a pending program by a known reviewer, with a comment.

        The user must hold the ``reviewer`` role (:data:`safety.accounts.REVIEWER`). A program the validator
        blocked can only be rejected. The user who submitted the program may reject it but not approve it,
        unless ``submitter_may_approve`` (the console's option of that name). Raises :class:`ApprovalError`
        (or :class:`UnknownProgram`) and records nothing when the request is refused.
        """
        if decision not in DECISIONS:
            raise ApprovalError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
        comment = comment.strip()
        if not comment:
            raise ApprovalError("comment: say why (a decision needs a comment)")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ApprovalError(f"comment: at most {MAX_COMMENT_CHARS} characters")
        if not self.accounts.has_user(user):  # users are never removed: checking before the lock is enough
            raise ApprovalError(f"user {user!r}: no such user (add one with `adduser`)")
        if not self.accounts.has_role(user, REVIEWER):
            raise ApprovalError(f"user {user!r} is not a {REVIEWER}: only a {REVIEWER} approves or rejects "
                                f"(python -m safety.console set-roles {user} --role {REVIEWER} ...)")
        with connect(self.path) as db:
            # BEGIN IMMEDIATE takes the write lock first, so two reviewers deciding the same program at
            # once cannot both see it pending.
            db.execute("BEGIN IMMEDIATE")
            try:
                prog = db.execute("SELECT sha256, verdict_json, submitted_by FROM programs WHERE id = ?",
                                  (int(program_id),)).fetchone()
                if prog is None:
                    raise UnknownProgram(f"program {program_id}: no such program")
                done = db.execute("SELECT decision, user, time_utc FROM audit WHERE program_id = ?"
                                  " ORDER BY id DESC LIMIT 1", (int(program_id),)).fetchone()
                if done is not None:
                    raise ApprovalError(f"program {program_id} is not pending: {_status(done['decision'])} by "
                                        f"{done['user']} at {done['time_utc']}")
                if decision == "approve" and json.loads(prog["verdict_json"]).get("verdict") != "allow":
                    raise ApprovalError(f"program {program_id}: the validator blocked it; it can only be rejected")
                if decision == "approve" and prog["submitted_by"] == user and not submitter_may_approve:
                    raise ApprovalError(f"program {program_id} was submitted by {user}: the submitter cannot "
                                        "approve it alone; another reviewer must (console option "
                                        "submitter_may_approve)")
                cur = db.execute("INSERT INTO audit (time_utc, user, program_id, sha256, decision, comment)"
                                 " VALUES (?, ?, ?, ?, ?, ?)",
                                 (_now_utc(), user, int(program_id), prog["sha256"], decision, comment))
                row = db.execute("SELECT * FROM audit WHERE id = ?", (cur.lastrowid,)).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return _audit_row(row)

    def is_approved(self, sha256: str) -> bool:
        """True only if the latest decision recorded for exactly this SHA-256 is ``approve``."""
        with connect(self.path) as db:
            row = db.execute("SELECT decision FROM audit WHERE sha256 = ? ORDER BY id DESC LIMIT 1",
                             (sha256.lower(),)).fetchone()
        return row is not None and row["decision"] == "approve"

    def audit(self) -> list[AuditRow]:
        """Every decision, oldest first."""
        with connect(self.path) as db:
            return [_audit_row(r) for r in db.execute("SELECT * FROM audit ORDER BY id")]


def _audit_row(r: sqlite3.Row) -> AuditRow:
    return AuditRow(r["id"], r["time_utc"], r["user"], r["program_id"], r["sha256"], r["decision"], r["comment"])

