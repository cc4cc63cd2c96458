"""The deployment gate: validator + simulation + approval of the exact program + printer state, in stages,
with live tuning behind the tight windows; everything logged append-only."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from safety.approvals import ApprovalStore
from safety.gate import (
    FIRST_LAYER_STOP,
    GateLog,
    LiveTuning,
    first_layer_payload,
    gate,
    printer_state_check,
)
from safety.tuning import TuningState
from safety.validator import validate
from sim_bridge.failures import TUNING_WINDOW
from sim_bridge.moonraker import PrinterState, parse_printer_state
from sim_bridge.printers import load_printer
from sim_bridge.simulator import Simulator

ROOT = Path(__file__).parent.parent
CUBE = ROOT / "tests" / "fixtures" / "prusaslicer" / "cube20_ender3.gcode"
PROFILE = load_printer("ender3-klipper")
READY = PrinterState("ready", "standby", 24.0, 0.0, 23.5, 0.0)


@pytest.fixture(scope="module")
def program() -> bytes:
    return CUBE.read_bytes()


@pytest.fixture()
def store(tmp_path: Path) -> tuple[ApprovalStore, GateLog]:
    db = tmp_path / "approvals.db"
    approvals = ApprovalStore(db)
    approvals.accounts.add_user("ada", "correct horse battery staple")
    return approvals, GateLog(db)


def _approve(approvals: ApprovalStore, program: bytes) -> None:
    pid = approvals.submit(program, printer="ender3-klipper", job="cube20", submitted_by="trainer")
    approvals.decide(pid, "ada", "approve", "looks right")


def test_dry_run_passes_real_slicer_output(program: bytes) -> None:
    result = gate(program, PROFILE, "dry-run")
    assert result.allowed, result.checks
    assert [c.name for c in result.checks] == ["validator", "simulation"]
    assert result.payload is None, "a dry run sends nothing"


def test_dry_run_blocks_what_the_validator_or_the_simulator_refuses(program: bytes) -> None:
    unsafe = program.replace(b"G28", b"M302 P1\nG28", 1)
    result = gate(unsafe, PROFILE, "dry-run")
    assert not result.allowed and not result.checks[0].passed
    # Valid for the validator, a failure for the simulator: the first layer printed 0.8 mm above the bed
    # (twice the nozzle) does not stick.
    text = program.decode()
    first = text.index("G1 Z.2")
    lifted = (text[:first] + "G1 Z.8" + text[first + len("G1 Z.2"):]).encode()
    assert validate(lifted, PROFILE).allowed
    result = gate(lifted, PROFILE, "dry-run")
    assert not result.allowed
    assert result.checks[1].name == "simulation" and not result.checks[1].passed


def test_stages_in_order_with_approval_and_state(program: bytes, store: tuple[ApprovalStore, GateLog]) -> None:
    approvals, log = store
    # Not approved yet, no dry run yet.
    early = gate(program, PROFILE, "first-layer", approvals=approvals, log=log, printer_state=READY)
    failed = {c.name for c in early.checks if not c.passed}
    assert failed == {"approval", "stage-order"} and early.payload is None
    _approve(approvals, program)
    assert gate(program, PROFILE, "dry-run", log=log).allowed
    first = gate(program, PROFILE, "first-layer", approvals=approvals, log=log, printer_state=READY)
    assert first.allowed, first.checks
    payload = first.payload
    assert payload is not None and payload.endswith(FIRST_LAYER_STOP.encode()) and len(payload) < len(program) / 10
    assert validate(payload, PROFILE).allowed
    report = Simulator(PROFILE).run(payload.decode())
    assert report.layer_count == 1 and not report.failures
    # The full print needs a person's confirmation of the first layer.
    blocked = gate(program, PROFILE, "full", approvals=approvals, log=log, printer_state=READY)
    assert {c.name for c in blocked.checks if not c.passed} == {"first-layer-confirmed"}
    log.confirm_first_layer(first.sha256, "ada", "first layer sticks, lines even")
    full = gate(program, PROFILE, "full", approvals=approvals, log=log, printer_state=READY)
    assert full.allowed and full.payload == program
    stages = [(r["stage"], r["allowed"]) for r in log.rows()]
    assert stages == [("first-layer", 0), ("dry-run", 1), ("first-layer", 1), ("full", 0),
                      ("first-layer-confirmed", 1), ("full", 1)]


def test_an_approval_does_not_cover_a_modified_program(program: bytes, store: tuple[ApprovalStore, GateLog]) -> None:
    approvals, log = store
    _approve(approvals, program)
    # A tenth of a millimetre more filament in one move: still valid, still simulates, not what was approved.
    modified = program.replace(b"E5.05815", b"E5.15815", 1)
    assert modified != program
    assert gate(modified, PROFILE, "dry-run", log=log).allowed
    result = gate(modified, PROFILE, "first-layer", approvals=approvals, log=log, printer_state=READY)
    assert not result.allowed and result.payload is None
    assert [c.name for c in result.checks if not c.passed] == ["approval"]


@pytest.mark.parametrize(("state", "reason"), [
    (PrinterState("shutdown", "standby", 24.0, 0.0, 24.0, 0.0), "klippy is 'shutdown'"),
    (PrinterState("ready", "printing", 210.0, 210.0, 60.0, 60.0), "print state is 'printing'"),
    (PrinterState("ready", "standby", -14.0, 0.0, 24.0, 0.0), "hotend reads -14 C"),
    (PrinterState("ready", "standby", 24.0, 300.0, 24.0, 0.0), "hotend target 300 C above its max_temp"),
])
def test_unsafe_printer_states_block(state: PrinterState, reason: str) -> None:
    check = printer_state_check(state, PROFILE)
    assert not check.passed and reason in check.detail
    assert printer_state_check(READY, PROFILE).passed
    assert not printer_state_check(None, PROFILE).passed


def test_printer_state_from_moonraker_status() -> None:
    status = {"webhooks": {"state": "ready", "state_message": "Printer is ready"},
              "print_stats": {"state": "standby"}, "extruder": {"temperature": 25.1, "target": 0.0},
              "heater_bed": {"temperature": 24.0, "target": 0.0}}
    expected = PrinterState("ready", "standby", 25.1, 0.0, 24.0, 0.0)
    assert parse_printer_state(status) == expected
    assert parse_printer_state({"result": {"eventtime": 3.5, "status": status}}) == expected, "the HTTP response"
    with pytest.raises(ValueError, match="heater_bed"):
        parse_printer_state({k: v for k, v in status.items() if k != "heater_bed"})
    with pytest.raises(ValueError, match="temperature"):
        parse_printer_state({**status, "extruder": {"target": 0.0}})


def test_live_tuning_only_during_a_full_print_and_logged(program: bytes, store: tuple[ApprovalStore, GateLog]) -> None:
    approvals, log = store
    tuning = LiveTuning(PROFILE, TuningState(hotend_temp_c=210.0), log, "ab" * 32)
    with pytest.raises(PermissionError):
        tuning.send("M221 S95")
    _approve(approvals, program)
    gate(program, PROFILE, "dry-run", log=log)
    first = gate(program, PROFILE, "first-layer", approvals=approvals, log=log, printer_state=READY)
    log.confirm_first_layer(first.sha256, "ada")
    assert gate(program, PROFILE, "full", approvals=approvals, log=log, printer_state=READY).allowed
    tuning = LiveTuning(PROFILE, TuningState(hotend_temp_c=210.0), log, first.sha256)
    assert tuning.send("M221 S95\nM104 S220")[0]
    allowed, verdict = tuning.send("M221 S150")
    assert not allowed and verdict.violations[0].rule == TUNING_WINDOW
    assert not tuning.send("M104 S230")[0], "+20 C is beyond the ±15 C step"
    assert not tuning.send("G28")[0]
    rows = log.rows("tuning_log")
    assert [(r["command"], r["allowed"]) for r in rows] == [("M221 S95\nM104 S220", 1), ("M221 S150", 0),
                                                            ("M104 S230", 0), ("G28", 0)]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), log.db:
        log.db.execute("UPDATE tuning_log SET allowed = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), log.db:
        log.db.execute("DELETE FROM gate_log")


def test_first_layer_cut_of_a_relative_extrusion_program() -> None:
    text = b"M109 S210\nG28\nM83\nG1 Z0.2 F600\nG1 X10 Y10 E1 F1200\nG1 X20 Y10 E1\nG1 Z0.4\nG1 X10 Y10 E1\n"
    report = Simulator(PROFILE).run(text.decode())
    assert report.layer_count == 2
    payload = first_layer_payload(text, report).decode()
    assert "G1 X20 Y10 E1" in payload and "G1 X10 Y10 E1\nM104" not in payload
    assert payload.endswith(FIRST_LAYER_STOP)
    assert Simulator(PROFILE).run(payload).layer_count == 1


def test_cli_exit_codes(tmp_path: Path, program: bytes) -> None:
    run = [sys.executable, "-m", "safety.gate", "check"]
    ok = subprocess.run([*run, str(CUBE), "--printer", "ender3-klipper"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "dry-run: allowed" in ok.stdout
    bad = tmp_path / "bad.gcode"
    bad.write_bytes(b"G28\nM302 P1\n" + program)
    blocked = subprocess.run([*run, str(bad), "--printer", "ender3-klipper"], capture_output=True, text=True, cwd=ROOT)
    assert blocked.returncode == 1 and "FAIL validator" in blocked.stdout
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"webhooks": {"state": "ready"}}))
    usage = subprocess.run([*run, str(CUBE), "--printer", "ender3-klipper", "--stage", "first-layer", "--db",
                            str(tmp_path / "a.db"), "--printer-state", str(state)], capture_output=True, text=True,
                           cwd=ROOT)
    assert usage.returncode == 2 and "print_stats" in usage.stderr
    missing = subprocess.run([*run, str(tmp_path / "nope.gcode"), "--printer", "ender3-klipper"],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_written_program_goes_through_the_dry_run_and_the_queue(tmp_path: Path) -> None:
    """The path from a policy to the approval queue (``training.write``), with the expert as the policy: the
    joined program is what the episode ran, passes the validator and the simulation, and lands in the
    queue with the expert's program for the diff."""
    from agent.expert import expert_policy
    from envs.sampler import load_suite
    from training.write import write_program

    jobs = load_suite("tiny-v0")[:1]
    program, reward = write_program(expert_policy(jobs), jobs[0])
    assert reward > 0.9 * len(jobs[0].layer_zs())
    assert gate(program.encode(), load_printer(jobs[0].printer), "dry-run").allowed
    approvals = ApprovalStore(tmp_path / "a.db")
    pid = approvals.submit(program.encode(), printer=jobs[0].printer, job=jobs[0].job_id,
                           expert_gcode=program.encode())
    assert [p.id for p in approvals.pending()] == [pid]
    assert approvals.program(pid).verdict["verdict"] == "allow"
