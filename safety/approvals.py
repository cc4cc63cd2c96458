"""The approvals store: programs waiting for a person, their decisions, and an append-only audit log.

One SQLite file in WAL mode (readers never block the writer, so the console and the deployment gate can
share it). Three tables:

- ``users``: console users, each password hashed with scrypt and a per-user salt;
- ``programs``: every submitted program, its G-code as a blob (never a file named by a user), the optional
  expert program, and what the validator and the embedded simulation said at submission;
- ``audit``: one row per decision (who, when in UTC, program id, SHA-256, approve/reject, comment).
  Triggers make the database itself refuse UPDATE and DELETE on it, and refuse rewriting a program's
  G-code or SHA-256, so an approval always names the exact bytes that were reviewed.

A program is pending until its one decision is recorded. :meth:`ApprovalStore.is_approved` answers by
SHA-256 alone: the gate hashes the bytes it is about to send, so a program changed by one byte after
approval is not approved.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safety.validator import validate
from sim_bridge.config import ConfigError
from sim_bridge.events import F_EXTRUDE, F_KINEMATIC
from sim_bridge.failures import UNREADABLE
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile, load_printer
from sim_bridge.simulator import Simulator

Decision = Literal["approve", "reject"]
DECISIONS: tuple[str, ...] = ("approve", "reject")

SCRYPT_N = 2**14
"""scrypt cost (CPU/memory); 16 MiB and about 50 ms per check: slow for a guesser, quick for a login."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
MIN_PASSWORD_CHARS = 8
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_COMMENT_CHARS = 4000
MAX_JOB_CHARS = 200
MAX_DESCRIPTION_CHARS = 20000
BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another writer's lock before failing."""
PREVIEW_MAX_POINTS_PER_LAYER = 20000
"""Points kept per layer in the stored toolpath preview; denser layers are thinned evenly (the full program
is still in the listing)."""
TRACE_MAX_POINTS = 400
"""Samples kept of each temperature trace for the report's plot."""
TRACE_INTERVAL_S = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    kdf TEXT NOT NULL,
    salt BLOB NOT NULL,
    password_hash BLOB NOT NULL,
    created TEXT NOT NULL
);
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
CREATE TRIGGER IF NOT EXISTS programs_no_delete_decided BEFORE DELETE ON programs
WHEN EXISTS (SELECT 1 FROM audit WHERE program_id = OLD.id)
BEGIN SELECT RAISE(ABORT, 'a decided program cannot be deleted'); END;
"""


class ApprovalError(ValueError):
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
    """Per-layer toolpaths and thinned temperature traces, see :func:`simulate_for_review`."""
    decision: AuditRow | None

    @property
    def status(self) -> str:
        """``pending``, ``approved`` or ``rejected``."""
        return _status(self.decision.decision if self.decision else None)


def _status(decision: str | None) -> str:
    return {None: "pending", "approve": "approved", "reject": "rejected"}[decision]


def _now_utc() -> str:
    return datetime.now(UTC).isoformat()


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=64 * 1024 * 1024, dklen=32)


KDF = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"


def _thin(n: int, keep: int) -> np.ndarray:
    """Indices of at most ``keep`` of ``n`` items, evenly spread, first and last kept."""
    if n <= keep:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))


def _polylines(starts: np.ndarray, ends: np.ndarray) -> list[list[float]]:
    """Chain segments into polylines (a new one wherever a segment does not start where the last ended);
    each polyline is flat ``[x0, y0, x1, y1, …]`` rounded to 0.01 mm."""
    lines: list[list[float]] = []
    current: list[float] = []
    last: tuple[float, float] | None = None
    for (sx, sy), (ex, ey) in zip(starts.round(2).tolist(), ends.round(2).tolist(), strict=True):
        if last != (sx, sy):
            if len(current) >= 4:
                lines.append(current)
            current = [sx, sy]
        current += [ex, ey]
        last = (ex, ey)
    if len(current) >= 4:
        lines.append(current)
    return lines


def _toolpaths(sim: Simulator) -> dict[str, Any]:
    """Per-layer extrusion and travel polylines (XY, machine coordinates) of the moves that ran, for the
    layers that extrude."""
    if not sim.executed:
        return {"layers": [], "bbox_mm": None, "thinned": False}
    starts = np.concatenate([m.starts[:, :2] for m in sim.executed])
    ends = np.concatenate([m.xyz[:, :2] for m in sim.executed])
    z = np.concatenate([m.xyz[:, 2] for m in sim.executed])
    flags = np.concatenate([m.flags for m in sim.executed])
    layer = np.concatenate([m.layer for m in sim.executed])
    line = np.concatenate([m.line for m in sim.executed])
    extruding = (flags & F_EXTRUDE) != 0
    moving = ((flags & F_KINEMATIC) != 0) & (np.abs(ends - starts).sum(axis=1) > 0)
    # Layers with extrusion only: the homing and travel before the first layer would be a layer of its own.
    shown = np.unique(layer[moving & extruding]) if (moving & extruding).any() else np.unique(layer[moving])
    layers, thinned = [], False
    for index in shown.tolist():
        sel = np.flatnonzero((layer == index) & moving)
        keep = _thin(len(sel), PREVIEW_MAX_POINTS_PER_LAYER)
        thinned |= len(keep) < len(sel)
        sel = sel[keep]
        ext, trav = sel[extruding[sel]], sel[~extruding[sel]]
        z_mm = float(np.median(z[ext])) if len(ext) else float(np.median(z[sel]))
        layers.append({
            "index": int(index), "z_mm": round(z_mm, 3),
            "first_line": int(line[sel].min()), "last_line": int(line[sel].max()),
            "extrude": _polylines(starts[ext], ends[ext]), "travel": _polylines(starts[trav], ends[trav]),
        })
    # Framed on the part: travel to the home corner or a park position would shrink it to a speck.
    framed = moving & extruding if (moving & extruding).any() else moving
    pts = np.concatenate([starts[framed], ends[framed]]) if framed.any() else np.zeros((1, 2))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return {"layers": layers, "bbox_mm": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])],
            "thinned": bool(thinned)}


def _thin_traces(traces: dict[str, list[float]] | None) -> dict[str, list[float]]:
    if not traces or not traces.get("t_s"):
        return {}
    keep = _thin(len(traces["t_s"]), TRACE_MAX_POINTS).tolist()
    return {k: [round(float(traces[k][i]), 2) for i in keep]
            for k in ("t_s", "hotend_c", "hotend_target_c", "bed_c", "bed_target_c")}


def simulate_for_review(gcode: bytes, printer: PrinterProfile | str, name: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the embedded simulator on a program; return (report without traces, preview).

    The preview holds per-layer toolpaths (``layers``: index, z, line range, ``extrude`` and ``travel``
    polylines) and thinned temperature ``traces``; the report gains ``temperatures``: peak readings and
    targets (°C).
    """
    sim = Simulator(printer, options=SimOptions(traces=True, trace_interval_s=TRACE_INTERVAL_S))
    report = sim.run(gcode, name=name or None).to_dict()
    traces = report.pop("traces") or {}
    report["temperatures"] = {
        key: (max(traces[key]) if traces.get(key) else None)
        for key in ("hotend_c", "hotend_target_c", "bed_c", "bed_target_c")
    }
    preview = _toolpaths(sim)
    preview["traces"] = _thin_traces(traces)
    return report, preview


class ApprovalStore:
    """Programs, users and the audit log in one SQLite file (WAL mode). Safe to share between threads and
    processes: each call opens its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ApprovalError(f"database {self.path}: folder {self.path.parent} does not exist")
        # Owner-only from birth: the file holds password hashes (SQLite gives its -wal/-shm the same mode).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._connect() as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise ApprovalError(f"database {self.path}: could not switch to WAL mode (got {mode!r})")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode: every write below states its own transaction, so a check and the write it
        # guards (a decision on a pending program) commit together or not at all.
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    # -- users -----------------------------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Add a console user; the name must be new (letters, digits, ``_.@-``), the password 8+ characters."""
        if not USER_NAME_RE.fullmatch(name or ""):
            raise ApprovalError(f"user name {name!r}: use 1 to 64 letters, digits or _.@-")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ApprovalError(f"password for {name!r}: at least {MIN_PASSWORD_CHARS} characters")
        salt = secrets.token_bytes(SALT_BYTES)
        try:
            with self._connect() as db:
                db.execute("INSERT INTO users (name, kdf, salt, password_hash, created) VALUES (?, ?, ?, ?, ?)",
                           (name, KDF, salt, _hash_password(password, salt), _now_utc()))
        except sqlite3.IntegrityError:
            raise ApprovalError(f"user {name!r} already exists") from None

    def check_password(self, name: str, password: str) -> bool:
        """True if the user exists and the password is theirs."""
        with self._connect() as db:
            row = db.execute("SELECT kdf, salt, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or row["kdf"] != KDF:
            # Hash anyway, so the answer takes as long for an unknown name as for a wrong password.
            _hash_password(password, b"\0" * SALT_BYTES)
            return False
        return hmac.compare_digest(_hash_password(password, row["salt"]), row["password_hash"])

    def users(self) -> list[str]:
        """The user names."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM users ORDER BY name")]

    def has_user(self, name: str) -> bool:
        """Whether a user of this name exists."""
        with self._connect() as db:
            return db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None

    # -- programs --------------------------------------------------------------------------------------
    def submit(self, gcode: bytes, *, printer: str, job: str, description: str = "",
               expert_gcode: bytes | None = None, submitted_by: str = "") -> int:
        """Validate and simulate a program on ``printer`` and queue it for a decision; return its id.

        ``printer`` is a bundled profile name or a profile file (see :func:`sim_bridge.profiles.load_printer`).
        """
        if not isinstance(gcode, bytes) or not gcode:
            raise ApprovalError("program: expected non-empty G-code bytes")
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
        report, preview = simulate_for_review(gcode, profile, job)
        unreadable = next((f for f in report["failures"] if f["mode"] == UNREADABLE), None)
        if unreadable is not None:
            raise ApprovalError(f"program cannot be read as G-code: {unreadable['message']}")
        sha256 = hashlib.sha256(gcode).hexdigest()
        if verdict.sha256 != sha256:
            raise ApprovalError(f"validator hashed {verdict.sha256}, store hashed {sha256}: not the same bytes")
        preview_blob = zlib.compress(json.dumps(preview, separators=(",", ":")).encode(), 6)
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO programs (sha256, printer, job, description, submitted_at, submitted_by, gcode,"
                " expert_gcode, verdict_json, report_json, preview_zjson) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, str(printer), job, description, _now_utc(), submitted_by, gcode, expert_gcode,
                 json.dumps(verdict.as_dict()), json.dumps(report, allow_nan=False, default=float), preview_blob))
            return int(cur.lastrowid)

    def _summaries(self, where: str, args: tuple[Any, ...] = ()) -> list[ProgramSummary]:
        sql = ("SELECT p.id, p.sha256, p.printer, p.job, p.submitted_at, p.submitted_by, p.verdict_json,"
               " length(p.gcode) AS size, (SELECT decision FROM audit a WHERE a.program_id = p.id"
               " ORDER BY a.id DESC LIMIT 1) AS decision FROM programs p " + where + " ORDER BY p.id")
        with self._connect() as db:
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
        with self._connect() as db:
            r = db.execute("SELECT * FROM programs WHERE id = ?", (int(program_id),)).fetchone()
            a = db.execute("SELECT * FROM audit WHERE program_id = ? ORDER BY id DESC LIMIT 1",
                           (int(program_id),)).fetchone()
        if r is None:
            raise UnknownProgram(f"program {program_id}: no such program")
        return Program(r["id"], r["sha256"], r["printer"], r["job"], r["description"], r["submitted_at"],
                       r["submitted_by"], bytes(r["gcode"]),
                       None if r["expert_gcode"] is None else bytes(r["expert_gcode"]),
                       json.loads(r["verdict_json"]), json.loads(r["report_json"]),
                       json.loads(zlib.decompress(r["preview_zjson"])), _audit_row(a) if a else None)

    # -- decisions -------------------------------------------------------------------------------------
    def decide(self, program_id: int, user: str, decision: str, comment: str) -> AuditRow:
        """Record ``approve`` or ``reject`` of a pending program by a known user, with a comment.

        A program the validator blocked can only be rejected. Raises :class:`ApprovalError` (or
        :class:`UnknownProgram`) and records nothing when the request is refused.
        """
        if decision not in DECISIONS:
            raise ApprovalError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
        comment = comment.strip()
        if not comment:
            raise ApprovalError("comment: say why (a decision needs a comment)")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ApprovalError(f"comment: at most {MAX_COMMENT_CHARS} characters")
        with self._connect() as db:
            # BEGIN IMMEDIATE takes the write lock first, so two reviewers deciding the same program at
            # once cannot both see it pending.
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                    raise ApprovalError(f"user {user!r}: no such user (add one with `adduser`)")
                prog = db.execute("SELECT sha256, verdict_json FROM programs WHERE id = ?",
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
        with self._connect() as db:
            row = db.execute("SELECT decision FROM audit WHERE sha256 = ? ORDER BY id DESC LIMIT 1",
                             (sha256.lower(),)).fetchone()
        return row is not None and row["decision"] == "approve"

    def audit(self) -> list[AuditRow]:
        """Every decision, oldest first."""
        with self._connect() as db:
            return [_audit_row(r) for r in db.execute("SELECT * FROM audit ORDER BY id")]


def _audit_row(r: sqlite3.Row) -> AuditRow:
    return AuditRow(r["id"], r["time_utc"], r["user"], r["program_id"], r["sha256"], r["decision"], r["comment"])

