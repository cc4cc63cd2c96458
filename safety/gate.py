"""The deployment gate: whether a program may go to a printer, at which stage, and exactly which bytes.

A program passes only when all of these hold, each recorded as a :class:`Check`:

1. **validator** — :func:`safety.validator.validate` allows it for the target profile;
2. **simulation** — the embedded simulator (or, with ``backend="klipper-batch"``/``--backend klipper-batch``,
   the real Klipper host in batch mode) runs it to the end on that profile without any failure;
3. **approval** — a person approved that exact program: the latest decision recorded for its SHA-256 in the
   approvals store is ``approve`` (a one-byte change is another program, unapproved);
4. **printer state** — the printer reports ready and idle, with every heater reading inside its range and
   no target above it (:class:`~sim_bridge.moonraker.PrinterState`, from Moonraker's status objects).

Stages, in order (:data:`STAGES`), each needing the one before it for the same SHA-256:

* ``dry-run`` — checks 1 and 2 only; nothing is sent;
* ``first-layer`` — all four checks; the payload is the program up to the end of its first layer, then a
  safe stop (heaters off, nozzle lifted, motors off) — the payload itself passes the validator again;
* ``full`` — all four checks, plus a person's confirmation that the first layer printed well
  (:meth:`GateLog.confirm_first_layer`); the payload is the program as approved, printed under supervision,
  where every live-tuning command goes through :class:`LiveTuning` (tighter windows, logged).

Every gate decision, confirmation and tuning command is appended to the approvals database (tables
``gate_log`` and ``tuning_log``, append-only as the audit table is). The gate sends nothing itself: it says
what may be sent; the deployment code sends only a :class:`GateResult` payload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safety.approvals import ApprovalStore
from safety.database import append_only, open_database
from safety.policy import SafetyPolicy
from safety.tuning import TuningState, validate_tuning
from safety.validator import Verdict, validate
from sim_bridge.backends import OFFLINE_BACKENDS, simulate
from sim_bridge.failures import UNREADABLE
from sim_bridge.moonraker import IDLE_PRINT_STATES, KLIPPY_READY, PrinterState, parse_printer_state
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import EMBEDDED, PrintReport
from sim_bridge.simulator import Simulator

STAGES = ("dry-run", "first-layer", "full")
FIRST_LAYER_STOP = "M104 S0\nM140 S0\nM107\nG91\nG1 Z5 F600\nG90\nM84\n"
"""Appended to a first-layer payload: heaters and fan off, nozzle lifted 5 mm, motors off."""


@dataclass(frozen=True)
class Check:
    """One condition of the gate."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    """What the gate decided for one program and stage; ``payload`` is what may be sent (None: nothing)."""

    stage: str
    sha256: str
    checks: tuple[Check, ...]
    payload: bytes | None = None
    verdict: Verdict | None = None

    @property
    def allowed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "sha256": self.sha256, "allowed": self.allowed,
                "checks": [asdict(c) for c in self.checks],
                "payload_sha256": hashlib.sha256(self.payload).hexdigest() if self.payload is not None else None}


# -- the printer's state -----------------------------------------------------------------------------------------
def printer_state_check(state: PrinterState | None, profile: PrinterProfile) -> Check:
    """Ready, idle, and every heater reading inside its range with no target above it."""
    if state is None:
        return Check("printer-state", False, "no printer state: the printer's status must be read before deploying")
    problems = []
    if state.klippy_state != KLIPPY_READY:
        problems.append(f"klippy is {state.klippy_state!r}, not {KLIPPY_READY!r}")
    if state.print_state not in IDLE_PRINT_STATES:
        problems.append(f"print state is {state.print_state!r}, not idle ({', '.join(IDLE_PRINT_STATES)})")
    for name, heater, temp, target in (("hotend", profile.hotend, state.hotend_temp_c, state.hotend_target_c),
                                       ("bed", profile.bed, state.bed_temp_c, state.bed_target_c)):
        if not heater.min_temp_c <= temp <= heater.max_temp_c:
            problems.append(f"{name} reads {temp:g} C, outside [{heater.min_temp_c:g}, {heater.max_temp_c:g}] "
                            "(a faulty or disconnected sensor, or a runaway)")
        if target > heater.max_temp_c:
            problems.append(f"{name} target {target:g} C above its max_temp {heater.max_temp_c:g}")
    return Check("printer-state", not problems, "; ".join(problems) or
                 f"ready, {state.print_state}, hotend {state.hotend_temp_c:g} C, bed {state.bed_temp_c:g} C")


# -- the log -----------------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS gate_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, sha256 TEXT NOT NULL, stage TEXT NOT NULL,
    allowed INTEGER NOT NULL, user TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tuning_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, sha256 TEXT NOT NULL, command TEXT NOT NULL,
    allowed INTEGER NOT NULL, detail TEXT NOT NULL);
""" + append_only("gate_log", "tuning_log")
GATE_LOG_BUSY_TIMEOUT_S = 30.0
"""How long the gate's log waits for another writer's lock (longer than a reviewer's: a deployment waits)."""
CONFIRMED = "first-layer-confirmed"
"""The ``stage`` column of a person's confirmation that the first layer printed well."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class GateLog:
    """The gate's append-only records, in the approvals database (SQLite, WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = open_database(path, _SCHEMA)
        self.db = sqlite3.connect(self.path, timeout=GATE_LOG_BUSY_TIMEOUT_S)

    def record(self, result: GateResult, user: str = "") -> None:
        with self.db:
            self.db.execute("INSERT INTO gate_log (time, sha256, stage, allowed, user, detail) VALUES (?,?,?,?,?,?)",
                            (_now(), result.sha256, result.stage, int(result.allowed), user,
                             json.dumps(result.as_dict())))

    def passed(self, sha256: str, stage: str) -> bool:
        """True when ``stage`` was passed (allowed) for this program."""
        row = self.db.execute("SELECT 1 FROM gate_log WHERE sha256 = ? AND stage = ? AND allowed = 1 LIMIT 1",
                              (sha256, stage)).fetchone()
        return row is not None

    def confirm_first_layer(self, sha256: str, user: str, comment: str = "") -> None:
        """A person saw the first layer of this program print well (needed before the ``full`` stage)."""
        if not user.strip():
            raise ValueError("confirm_first_layer: who confirms? (user is empty)")
        if not self.passed(sha256, "first-layer"):
            raise ValueError(f"{sha256[:12]}…: its first layer was never deployed through the gate")
        with self.db:
            self.db.execute("INSERT INTO gate_log (time, sha256, stage, allowed, user, detail) VALUES (?,?,?,?,?,?)",
                            (_now(), sha256, CONFIRMED, 1, user, json.dumps({"comment": comment})))

    def log_tuning(self, sha256: str, command: str, verdict: Verdict) -> None:
        with self.db:
            self.db.execute("INSERT INTO tuning_log (time, sha256, command, allowed, detail) VALUES (?,?,?,?,?)",
                            (_now(), sha256, command, int(verdict.allowed), json.dumps(verdict.as_dict())))

    def rows(self, table: str = "gate_log") -> list[dict[str, Any]]:
        if table not in ("gate_log", "tuning_log"):
            raise ValueError(f"table {table!r}: gate_log or tuning_log")
        cur = self.db.execute(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608 - table is from the fixed pair above
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# -- the checks --------------------------------------------------------------------------------------------------
GATE_BACKENDS = OFFLINE_BACKENDS
"""Backends the simulation check may use (:data:`sim_bridge.backends.OFFLINE_BACKENDS`: they move no printer)."""


def simulation_check(program: bytes, profile: PrinterProfile, material: str = "PLA", backend: str = EMBEDDED
                     ) -> tuple[Check, PrintReport | None]:
    """The program runs to its end on ``profile`` without any failure — on the embedded simulator, or with
    ``backend="klipper-batch"`` on the real Klipper host in batch mode (errors, time and notices Klippy's,
    temperatures and deposition the embedded simulator's); the check and the report (None when the text is not
    G-code the simulator can read)."""
    if backend not in GATE_BACKENDS:
        raise ValueError(f"backend {backend!r}: the gate simulates with one of {', '.join(GATE_BACKENDS)}")
    sim = Simulator(profile, material)
    report = sim.run(program.decode("utf-8", errors="replace"))
    unreadable = next((f for f in report.failures if f.mode == UNREADABLE), None)
    if unreadable is not None:
        return Check("simulation", False, f"not G-code the simulator can read: {unreadable.message}"), None
    if backend != EMBEDDED:
        report = simulate(program, profile, backend=backend, material=material)
    by = f" [{backend}]" if backend != EMBEDDED else ""
    if report.failures:
        first = report.failures[:3]
        return Check("simulation", False, f"{len(report.failures)} failure(s){by}: " +
                     "; ".join(f"line {f.line}: {f.mode}: {f.message}" for f in first)), report
    return Check("simulation", True, f"completes in {report.print_time_s:.0f} s{by}, {report.filament_mm:.0f} mm "
                                     f"of filament, {report.layer_count} layer(s), no failure"), report


def first_layer_payload(program: bytes, report: PrintReport) -> bytes:
    """The program up to the line where its second layer starts, then :data:`FIRST_LAYER_STOP`.

    The layers are the simulator's (``report.layers``, from the run of this very program): slicer layer
    markers where the program has them, else each rise of Z before extruding; the start sequence's purge is
    not a layer. A program of one layer is sent whole.
    """
    if len(report.layers) < 2:
        return program if program.endswith(b"\n") else program + b"\n"
    lines = program.splitlines(keepends=True)
    head = b"".join(lines[: report.layers[1].first_line - 1])
    return head + (b"" if head.endswith(b"\n") else b"\n") + FIRST_LAYER_STOP.encode()


def gate(program: bytes, profile: PrinterProfile, stage: str, *, approvals: ApprovalStore | None = None,
         log: GateLog | None = None,
         printer_state: PrinterState | None = None, policy: SafetyPolicy | None = None, material: str = "PLA",
         name: str = "<program>", backend: str = EMBEDDED) -> GateResult:
    """Decide whether ``program`` may go to the printer at ``stage`` (see the module docstring).

    ``approvals`` is the :class:`safety.approvals.ApprovalStore` (needed from ``first-layer`` on); ``log`` the
    :class:`GateLog` that records the decision and knows the stages already passed (needed from
    ``first-layer`` on); ``backend`` the simulation check's (:data:`GATE_BACKENDS`). Nothing is sent here.
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}")
    sha = hashlib.sha256(program).hexdigest()
    verdict = validate(program, profile, policy, name=name)
    checks = [Check("validator", verdict.allowed, f"{len(verdict.violations)} violation(s)" if not verdict.allowed
                    else f"{verdict.lines} lines allowed for {profile.name}")]
    simulated, report = simulation_check(program, profile, material, backend)
    checks.append(simulated)
    payload: bytes | None = None
    if stage != "dry-run":
        if approvals is None or log is None:
            raise ValueError(f"stage {stage!r} needs the approvals store and the gate log")
        approved = bool(approvals.is_approved(sha))
        checks.append(Check("approval", approved, "approved by a person" if approved else
                            "no approval of this exact program (SHA-256) is on record"))
        checks.append(printer_state_check(printer_state, profile))
        before = STAGES[STAGES.index(stage) - 1]
        checks.append(Check("stage-order", log.passed(sha, before),
                            f"stage {before!r} passed" if log.passed(sha, before) else f"stage {before!r} not passed yet"))
        if stage == "full":
            confirmed = log.passed(sha, CONFIRMED)
            checks.append(Check("first-layer-confirmed", confirmed, "a person confirmed the first layer" if confirmed
                                else "nobody confirmed the first layer yet"))
            payload = program
        else:
            payload = first_layer_payload(program, report) if report is not None else b""
            again = validate(payload, profile, policy, name=f"{name} (first layer)")
            checks.append(Check("first-layer-payload", again.allowed, "the cut program passes the validator"
                                if again.allowed else f"the cut program is blocked: {again.violations[0].message}"))
    result = GateResult(stage, sha, tuple(checks), payload if all(c.passed for c in checks) else None, verdict)
    if log is not None:
        log.record(result)
    return result


@dataclass
class LiveTuning:
    """The channel for a supervisor's live-tuning commands during a ``full`` print: each batch passes
    :func:`safety.tuning.validate_tuning` (the tight windows) and is logged, allowed or not; only allowed
    batches are returned for sending."""

    profile: PrinterProfile
    state: TuningState
    log: GateLog
    sha256: str
    policy: SafetyPolicy = field(default_factory=SafetyPolicy)

    def send(self, commands: str) -> tuple[bool, Verdict]:
        """``(allowed, verdict)``; the caller sends ``commands`` only when allowed."""
        if not self.log.passed(self.sha256, "full"):
            raise PermissionError(f"{self.sha256[:12]}…: live tuning needs a print started through the 'full' stage")
        verdict = validate_tuning(commands, self.state, self.profile, self.policy)
        self.log.log_tuning(self.sha256, commands, verdict)
        return verdict.allowed, verdict


# -- CLI ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safety.gate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the gate for FILE at a stage")
    check.add_argument("file", type=Path)
    check.add_argument("--printer", required=True, help="bundled printer name, profile YAML or Klipper printer.cfg")
    check.add_argument("--stage", choices=STAGES, default="dry-run")
    check.add_argument("--db", type=Path, help="approvals database (needed from first-layer on)")
    check.add_argument("--printer-state", type=Path, help="JSON of Moonraker's objects query (the response or "
                       "its status)")
    check.add_argument("--material", default="PLA", help="material of the simulation (bundled name)")
    check.add_argument("--out", type=Path, help="write the payload to send here when allowed")
    check.add_argument("--backend", choices=GATE_BACKENDS, default=EMBEDDED,
                       help="simulation check on the embedded simulator or on Klippy in batch mode")
    confirm = sub.add_parser("confirm-first-layer", help="a person confirms the first layer printed well")
    confirm.add_argument("sha256")
    confirm.add_argument("--db", type=Path, required=True)
    confirm.add_argument("--user", required=True)
    confirm.add_argument("--comment", default="")
    args = parser.parse_args(argv)
    try:
        if args.command == "confirm-first-layer":
            GateLog(args.db).confirm_first_layer(args.sha256, args.user, args.comment)
            print(f"first layer of {args.sha256[:12]}… confirmed by {args.user}")
            return 0
        if not args.file.is_file():
            raise ValueError(f"{args.file}: no such file")
        profile = load_printer(args.printer)
        approvals = log = None
        if args.db is not None:
            approvals, log = ApprovalStore(args.db), GateLog(args.db)
        state = None
        if args.printer_state is not None:
            state = parse_printer_state(json.loads(args.printer_state.read_text()))
        result = gate(args.file.read_bytes(), profile, args.stage, approvals=approvals, log=log,
                      printer_state=state, material=args.material, name=str(args.file), backend=args.backend)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in result.checks:
        print(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    print(f"{result.stage}: {'allowed' if result.allowed else 'blocked'} ({result.sha256})")
    if result.allowed and result.payload is not None and args.out is not None:
        args.out.write_bytes(result.payload)
    return 0 if result.allowed else 1


if __name__ == "__main__":
    sys.exit(main())
