"""The simulator's interpreter and the safety validator model the same firmware state: run every golden file,
every real PrusaSlicer fixture and every wild file through both and compare, line by line, the toolhead
position (machine coordinates), which axes are homed, and the heater targets.

The two are compared up to the first line where they stop modelling the same machine, by design:

* the interpreter stops at the first fatal error (as Klipper does); the validator lists every finding and
  goes on, so nothing after the interpreter's last line is compared;
* the validator blocks a command it cannot see into (an unknown or forbidden code, ``G20``, a declared macro
  with a classic name such as ``M600``) without modelling it, while the simulator runs it: from that line on
  the two machines may differ, and the program is blocked anyway.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WILD_DIR, WILD_FILES

from safety.validator import validate
from sim_bridge.commands import IGNORED, spec
from sim_bridge.failures import FORBIDDEN_COMMAND, UNKNOWN_COMMAND
from sim_bridge.gcode import GcodeReader
from sim_bridge.interpreter import Interpreter
from sim_bridge.machine import TrackedState, new_state
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import PrinterProfile

HERE = Path(__file__).parent
ROOT = HERE.parent
POSITION_TOL_MM = 1e-6
"""Both sides reach the same position by different sums (offsets added vs deltas accumulated)."""


def _printer_of(path: Path) -> list[str]:
    head = path.read_bytes()[:400].decode("utf-8", "replace").splitlines()[:3]
    for line in head:
        if line.startswith("; printer: "):
            return [str(ROOT / line.split(": ", 1)[1].strip())]
    name = path.name
    if "corexy300" in name:
        return ["corexy300-klipper"]
    if "mk3s" in name:
        return ["mk3s-marlin"]
    return ["ender3-klipper"]


def _cases() -> Iterator[tuple[Path, str]]:
    for folder in ("golden", "safety_golden"):
        for path in sorted((HERE / folder).rglob("*.gcode")):
            for printer in _printer_of(path):
                yield path, printer
    for path in sorted((HERE / "fixtures" / "prusaslicer").glob("*.gcode")):
        yield path, _printer_of(path)[0]
    if WILD_FILES:
        for path in sorted(WILD_DIR.glob("*.gcode")):
            # Klipper stops at the first unhomed move; Marlin's model goes on, so both are worth comparing.
            yield path, "ender3-klipper"
            yield path, "mk3s-marlin"


CASES = list(_cases())


def _simulated(path: Path, profile: PrinterProfile) -> tuple[list[TrackedState], Interpreter]:
    options = SimOptions()
    interp = Interpreter(profile, load_material("PLA"), options, new_state(profile, options))
    return list(interp.trace(GcodeReader(path, keep_comments=True))), interp


def _unmodelled_line(verdict_lines: list[tuple[int, str, str]], profile: PrinterProfile) -> float:
    """First line the validator blocks unseen while the simulator runs it with an effect."""
    for line, rule, code in verdict_lines:
        if rule not in (UNKNOWN_COMMAND, FORBIDDEN_COMMAND):
            continue
        entry = spec(code)
        if (entry is not None and entry.effect not in (None, IGNORED)) or profile.macro(code) is not None:
            return line
    return math.inf


def _compare(path: Path, printer: str) -> int:
    """Assert agreement line by line; returns how many lines were compared."""
    profile = load_printer(printer)
    simulated, _ = _simulated(path, profile)
    validated: list[TrackedState] = []
    verdict = validate(path, profile, trace=validated)
    stop = _unmodelled_line([(v.line, v.rule, v.value) for v in verdict.violations], profile)
    by_line = {s.line: s for s in validated}
    compared = 0
    for sim in simulated:
        if sim.line >= stop:
            break
        val = by_line.get(sim.line)
        if val is None:
            continue  # a comment line (the validator reads no command there)
        where = f"{path.name}:{sim.line} on {printer}"
        assert all(abs(a - b) <= POSITION_TOL_MM for a, b in zip(sim.position_mm, val.position_mm, strict=True)), (
            f"{where}: simulator at {sim.position_mm}, validator at {val.position_mm}")
        assert sim.homed == val.homed, f"{where}: homed {sim.homed} vs {val.homed}"
        assert (sim.hotend_target_c, sim.bed_target_c) == (val.hotend_target_c, val.bed_target_c), (
            f"{where}: targets {(sim.hotend_target_c, sim.bed_target_c)} vs "
            f"{(val.hotend_target_c, val.bed_target_c)}")
        compared += 1
    return compared


@pytest.mark.parametrize(("path", "printer"), CASES, ids=lambda x: getattr(x, "stem", x))
def test_interpreter_and_validator_track_the_same_machine(path: Path, printer: str) -> None:
    _compare(path, printer)


@pytest.mark.parametrize(("name", "printer", "at_least"), [
    ("fixtures/prusaslicer/cube20_mk3s.gcode", "mk3s-marlin", 5000),
    ("safety_golden/must_allow/prusaslicer_ender3_macros_cylinder.gcode", "ender3-klipper", 1000),
    ("safety_golden/must_block/restore_state.gcode", "ender3-klipper", 10),
])
def test_the_comparison_covers_whole_programs(name: str, printer: str, at_least: int) -> None:
    """Real programs are compared to their end (no stop rule cuts them short)."""
    assert _compare(HERE / name, printer) >= at_least


@pytest.mark.parametrize("path", sorted((HERE / "fixtures" / "prusaslicer").glob("*.gcode"))[:2],
                         ids=lambda p: p.stem)
def test_trace_ends_where_the_fast_path_ends(path: Path) -> None:
    """The reader's fast path for plain G0/G1 lines reaches the same machine as one command at a time."""
    profile = load_printer(_printer_of(path)[0])
    simulated, traced = _simulated(path, profile)
    options = SimOptions()
    fast = Interpreter(profile, load_material("PLA"), options, new_state(profile, options))
    fast.run(GcodeReader(path, keep_comments=True))
    assert simulated and fast.state.pos == traced.state.pos and fast.state.homed == traced.state.homed


def test_a_gcode_offset_counts_for_the_simulated_first_layer() -> None:
    program = ("G28\nM140 S60\nM104 S210\nM190 S60\nM109 S210\nG92 E0\nM83\nSET_GCODE_OFFSET Z=-0.15\n"
               "G1 Z0.2 F600\nG1 X60 Y60 F3000\nG1 X100 E2 F1200\n")
    profile = load_printer("ender3-klipper")
    validated: list[TrackedState] = []
    validate(program, profile, trace=validated)
    options = SimOptions()
    simulated = list(Interpreter(profile, load_material("PLA"), options, new_state(profile, options)).trace(
        GcodeReader(program, keep_comments=True)))
    assert simulated[-1].position_mm[2] == pytest.approx(0.05) == validated[-1].position_mm[2]
