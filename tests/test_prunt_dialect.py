"""Prunt's G-code dialect (issue 16, part 3): the checker against every recorded line and file of the real
Prunt parser (``shared/data/prunt/dialect.json`` and ``dialect_files.json``), its log lines both ways, the
validator on a Prunt printer, and the simulator stopping where Prunt stops.

Each ``tests/safety_golden/must_block_prunt/*.gcode`` starts with ``; expect: RULE at lines N, M; RULE …`` and
must give exactly those findings on ``prunt-sim``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import PRUNT_DIR, SAFETY_GOLDEN

from safety.validator import validate
from sim_bridge import failures
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile
from sim_bridge.prunt_dialect import (
    PruntLimits,
    bounds_error,
    check_line,
    first_refusal,
    parse_log_error,
    parse_log_errors,
    unhomed_error,
)
from sim_bridge.prunt_reader import PruntReader
from sim_bridge.simulator import Simulator

needs_prunt = pytest.mark.skipif(not (PRUNT_DIR / "dialect.json").is_file(),
                                 reason=f"Prunt recordings not found at {PRUNT_DIR}")
DIALECT: list[dict[str, Any]] = (json.loads((PRUNT_DIR / "dialect.json").read_text())
                                 if (PRUNT_DIR / "dialect.json").is_file() else [])
FILES: list[dict[str, Any]] = (json.loads((PRUNT_DIR / "dialect_files.json").read_text())
                               if (PRUNT_DIR / "dialect_files.json").is_file() else [])
_TRACEBACK = re.compile(r"\n\[prunt_simulator\]")
_FILE_LINE = re.compile(r" on line +(\d+) ")


@pytest.fixture(scope="module")
def prunt() -> PrinterProfile:
    return load_printer("prunt-sim")


# -- every recorded line --------------------------------------------------------------------------------
def _id(entry: dict[str, Any]) -> str:
    return f"{entry['via']}:{entry['line'][:30]!r}"


@needs_prunt
def test_all_184_recorded_lines_are_there() -> None:
    assert len(DIALECT) == 184 and {e["via"] for e in DIALECT} == {"run-command", "file line 2"}


@needs_prunt
@pytest.mark.parametrize("entry", DIALECT, ids=_id)
def test_line_is_accepted_or_refused_as_prunt_did(entry: dict[str, Any]) -> None:
    error = check_line(entry["line"], PruntLimits())
    assert (error is None) == entry["accepted"]
    if error is None:
        return
    assert error.summary == entry["message_summary"]
    # A refused G1 whose move still ran (N10 G1 …, G1 … Q1) is the only refused line with motion.
    assert error.move_ran == bool(entry["motion"])
    assert error.fatal == entry["effect"].startswith("FATAL")


@needs_prunt
@pytest.mark.parametrize("entry", [e for e in DIALECT if e["message"]], ids=_id)
def test_log_line_reads_back_and_is_written_as_prunt_writes_it(entry: dict[str, Any]) -> None:
    logged = parse_log_error(entry["message"])
    assert logged is not None and logged.summary == entry["message_summary"]
    in_file = entry["via"] != "run-command"
    error = check_line(entry["line"], PruntLimits())
    assert error is not None and logged.fatal == error.fatal
    if error.fatal:
        assert logged.line_number is None and logged.line is None
        return
    assert logged.line_number == (2 if in_file else None)
    assert logged.file == ("probe.gcode" if in_file else None)
    if entry["line"].isascii():  # Prunt's log shows UTF-8 bytes as Latin-1 characters
        assert logged.line == entry["line"]
        first = _TRACEBACK.split(entry["message"])[0]
        assert error.log_line(entry["line"], 2 if in_file else None, "probe.gcode") == first


@needs_prunt
def test_fatal_log_echo_and_unhomed_move_are_read() -> None:
    m141 = next(e for e in DIALECT if e["line"] == "M141 S40")
    assert len(parse_log_errors(m141["message"])) == 1, "the 'Error in other task' echo is not a second error"
    m84 = next(e for e in DIALECT if e["line"] == "M84" and e["via"] == "run-command")
    logged = parse_log_error(m84["next_move_check"]["message"])
    expected = unhomed_error([False, False, False])
    assert logged is not None and expected is not None
    assert (logged.kind, logged.message, logged.line) == (expected.kind, expected.message, "G1 Z1 F600")


def test_bounds_error_uses_adas_float_image() -> None:
    limits = PruntLimits()
    assert bounds_error([10.0, 10.0, 10.0], limits) is None
    error = bounds_error([10.0, -0.5, 300.0], limits)
    assert error is not None and error.message == "Position is out of bounds (Y_AXIS = -5.00000000000000E-01)."


# -- the recorded files --------------------------------------------------------------------------------
@needs_prunt
@pytest.mark.parametrize("case", FILES, ids=lambda c: c["name"])
def test_file_stops_where_prunt_stopped(case: dict[str, Any]) -> None:
    refusal = first_refusal(case["file"].split("\n"), PruntLimits())
    if not case["messages_summary"]:
        assert refusal is None
        return
    line, error = refusal
    assert int(_FILE_LINE.search(case["messages"]).group(1)) == line
    assert [error.summary] == case["messages_summary"]
    assert case["file_finished"], "a refused line ends the file, and Prunt still calls it finished"
    assert error.move_ran == (case["data_lines"] > 0)


@needs_prunt
def test_m205_s0_that_stalled_prunt_is_warned_about() -> None:
    case = next(c for c in FILES if c["name"] == "m205_s0_then_move")
    assert not case["file_finished"]
    notes: list[str] = []
    assert check_line("M205 S0", warnings=notes) is None
    assert "stalls the planner" in notes[0]


def test_reinterpretations_are_warnings() -> None:
    for line, words in (("G1 X1e1 Y5", "X1 E1"), ("M204 S1000", "ignores M204"), ("M205 S100000000", "snap"),
                        ("M205 J100000", "jerk"), ("G0 X5", "G1")):
        notes: list[str] = []
        assert check_line(line, warnings=notes) is None
        assert len(notes) == 1 and words in notes[0], (line, notes)
    notes = []
    assert check_line("G1 X10 Y5 E0.5 F1800", warnings=notes) is None and notes == []


def test_crlf_file_fails_on_line_one() -> None:
    reader = PruntReader(b"G28\r\nG1 X5 Y5\r\n", name="t.gcode")
    assert list(reader.numbered_lines()) == []
    assert reader.refusal is not None and reader.refusal.line == 1 and reader.refusal.text == "G28\r"


# -- the validator on a Prunt printer ----------------------------------------------------------------------
GOOD = "G28\nM140 S60\nM104 S215\nM190 S60\nM109 S215\nG90\nM83\nG1 Z0.2 F600\nG1 X100 Y100 F6000\n" \
       "G1 X120 Y100 E0.75 F1800\nM205 A2000\nG1 X120 Y120 E0.75\nM107\n"


def test_validator_refuses_what_prunt_refuses_with_its_reason(prunt: PrinterProfile) -> None:
    verdict = validate("G28\nM201 X1000 Y1000\nG1 X10\n", prunt)
    assert verdict.verdict == "block"
    (finding,) = verdict.violations
    assert (finding.line, finding.rule) == (2, failures.UNKNOWN_COMMAND)
    assert "Unknown M code:  201" in finding.message and "skips the rest of the file" in finding.message
    m205 = validate(GOOD + "M205 X10.00 Y10.00 Z0.20 E2.50\n", prunt).violations
    assert [(v.rule, v.value) for v in m205] == [
        (failures.INVALID_COMMAND, "BAD_LINE: Parameter 'E' not valid for command on line.")]


def test_validator_warns_about_m205_s_and_allows_a_good_file(prunt: PrinterProfile) -> None:
    good = validate(GOOD, prunt)
    assert good.allowed and good.warnings == (), [str(v) for v in good.violations]
    snap = validate(GOOD + "M205 S100000000\n", prunt)
    assert snap.allowed and [w.rule for w in snap.warnings] == [failures.REINTERPRETED]
    assert "snap" in snap.warnings[0].message and snap.as_dict()["warnings"][0]["line"] == 14
    stall = validate(GOOD + "M205 S0\n", prunt)
    assert [(v.rule, v.line) for v in stall.violations] == [(failures.ACCELERATION, 14)]
    assert validate(GOOD + "M205 A90000\n", prunt).rules() == {failures.ACCELERATION}


def test_validator_uses_prunts_homing_and_bounds(prunt: PrinterProfile) -> None:
    unhomed = validate("G28 X\nG1 X5\n", prunt)
    assert [(v.rule, v.line) for v in unhomed.violations] == [(failures.MUST_HOME_FIRST, 2)]
    assert "Must home all axes before moving. Axis Y_AXIS is not homed." in unhomed.violations[0].message
    far = validate("G28\nG91\nG1 X150\nG1 X150\n", prunt).violations
    assert [(v.rule, v.line) for v in far] == [(failures.MOVE_OUT_OF_RANGE, 4)]
    assert "X_AXIS =  3.00000000000000E+02" in far[0].message


def test_klipper_verdicts_keep_their_form() -> None:
    verdict = validate("G28\nM201 X1000 Y1000\nG1 X10\n", load_printer("ender3-klipper"))
    assert verdict.allowed and verdict.warnings == () and "warnings" not in verdict.as_dict()


def _expected(path: Path) -> set[tuple[str, int]]:
    first = path.read_text().split("\n")[0].removeprefix("; expect: ")
    found = set()
    for part in first.split("; "):
        rule, lines = part.split(" at lines ")
        found |= {(rule, int(n)) for n in lines.split(",")}
    return found


@pytest.mark.parametrize("path", sorted((SAFETY_GOLDEN / "must_block_prunt").glob("*.gcode")),
                         ids=lambda p: p.stem)
def test_prunt_must_block(path: Path, prunt: PrinterProfile) -> None:
    verdict = validate(path, prunt)
    assert {(v.rule, v.line) for v in verdict.violations} == _expected(path)


# -- the simulator stops where Prunt stops -----------------------------------------------------------------
BAD_FILE = "G28\nG1 X10 Y10 F6000\nM201 X1000\nG1 X50 Y50\n"


def test_simulator_stops_at_the_line_prunt_refuses(prunt: PrinterProfile) -> None:
    report = Simulator(prunt).run(BAD_FILE)
    (failure,) = report.failures
    assert (failure.mode, failure.line, failure.fatal) == (failures.INVALID_COMMAND, 3, True)
    assert "Unknown M code:  201" in failure.message and "skips the rest" in failure.message
    assert report.final_state["position_mm"][:2] == [10.0, 10.0], "line 4 does not run"
    assert report.stopped_at_line == 3


def test_refused_move_still_runs_and_unhomed_move_fails(prunt: PrinterProfile) -> None:
    report = Simulator(prunt).run("G28\nG1 X5 Y5 Q1\nG1 X10 Y10\n")
    assert [(f.line, f.fatal) for f in report.failures] == [(2, True)]
    assert report.final_state["position_mm"][:2] == [5.0, 5.0]
    unhomed = Simulator(prunt).run("G1 X5 Y5\n")
    assert [(f.mode, f.message) for f in unhomed.failures] == [
        (failures.MUST_HOME_FIRST, "Must home all axes before moving. Axis X_AXIS is not homed.")]


def test_klipper_runs_the_same_file_as_before() -> None:
    report = Simulator(load_printer("ender3-klipper")).run(BAD_FILE)
    assert report.failures == [] and report.final_state["position_mm"][:2] == [50.0, 50.0]
    assert [(n.kind, n.line) for n in report.notices] == [(failures.UNKNOWN_COMMAND, 3)]
