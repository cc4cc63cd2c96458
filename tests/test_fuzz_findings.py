"""The fuzz campaign's findings (``tests/fuzz_findings``, see its README): each minimised input now gives a
clear result within a second or two instead of a hang, a ``MemoryError``, an ``OverflowError``, a
``ZeroDivisionError`` or a ``ValueError`` from ``int()``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from safety.validator import validate
from sim_bridge import GcodeReader, load_printer, parse_line, simulate
from sim_bridge.arcs import MAX_ARC_CHORDS
from sim_bridge.time_cap import MAX_PRINT_TIME_S

FINDINGS = Path(__file__).parent / "fuzz_findings"
CASES = {
    # file: (printer, fatal failure mode or None, its line)
    "endless_move_unhomed_marlin.gcode": ("mk3s-marlin", "invalid_command", 1),
    "endless_dwell.gcode": ("ender3-klipper", "invalid_command", 3),
    "arc_huge_radius.gcode": ("corexy300-klipper", "must_home_first", 1),
    "arc_infinite_radius.gcode": ("ender3-klipper", None, None),
    "bead_far_above_last_layer.gcode": ("corexy300-klipper", None, None),
    "marlin_m204_s0.gcode": ("mk3s-marlin", None, None),
    "checksum_superscript_digit.gcode": ("mk3s-marlin", None, None),
    "tool_superscript_digit.gcode": ("ender3-klipper", None, None),
    "prunt_fan_index_infinite.gcode": ("prunt-sim", None, None),
    "marlin_nan_print_time.gcode": ("mk3s-marlin", None, None),
}
TIME_BOUND_S = 10.0
"""Far above what each case takes now (under 2 s), far below the endless run each was before."""


def test_every_finding_file_has_a_case() -> None:
    assert sorted(p.name for p in FINDINGS.glob("*.gcode")) == sorted(CASES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CASES))
def test_finding_is_fixed(name: str) -> None:
    printer, mode, line = CASES[name]
    path = FINDINGS / name
    start = time.perf_counter()
    report = simulate(path.read_bytes(), load_printer(printer))
    assert time.perf_counter() - start < TIME_BOUND_S
    fatal = [f for f in report.failures if f.fatal]
    if mode is None:
        assert not fatal, fatal
    else:
        assert (fatal[0].mode, fatal[0].line, report.stopped_at_line) == (mode, line, line)
    assert 0.0 <= report.print_time_s <= MAX_PRINT_TIME_S
    assert report.moves <= MAX_ARC_CHORDS + 10
    # The other targets read the same bytes without trouble.
    assert validate(path, load_printer(printer)).verdict in ("allow", "block")
    assert all(cmd.line >= 1 for cmd in GcodeReader(path))


@pytest.mark.timeout(60)
def test_time_cap_message_names_the_limit() -> None:
    report = simulate((FINDINGS / "endless_dwell.gcode").read_bytes(), load_printer("ender3-klipper"))
    assert "longer than 7 days" in report.failures[-1].message
    # What ran before the endless dwell still counts: homing and the heater command.
    assert report.print_time_s > 0.0


@pytest.mark.timeout(60)
def test_arc_under_the_cap_is_cut_as_before() -> None:
    # A circle 20 mm across at the default 1 mm segments: floor(20π) = 62 chords after the one travel move.
    report = simulate(b"G28\nG1 X50 Y50 Z5 F3000\nG2 X50 Y50 I10 J0 F3000\n", load_printer("ender3-klipper"))
    assert report.success and report.moves == 1 + 62


def test_marlin_m204_s0_keeps_the_acceleration() -> None:
    # M204 S0 leaves the old acceleration, as M201 X0 does: the same time as without the line.
    program = (FINDINGS / "marlin_m204_s0.gcode").read_bytes()
    without = program.replace(b"M204 S0\n", b"")
    profile = load_printer("mk3s-marlin")
    assert simulate(program, profile).print_time_s == pytest.approx(simulate(without, profile).print_time_s)


def test_superscript_digits_are_not_numbers() -> None:
    warnings: list = []
    cmd = parse_line("N1 G28*10\u00b3", 1, "<t>", warnings)
    assert cmd is not None and cmd.code == "G28" and not warnings  # not a checksum, so no mismatch either
    report = simulate((FINDINGS / "tool_superscript_digit.gcode").read_bytes(), load_printer("ender3-klipper"))
    assert [(n.kind, n.line) for n in report.notices] == [("unknown_command", 2)]


@pytest.mark.timeout(60)
def test_marlin_drops_moves_that_step_no_motor() -> None:
    """Marlin never buffers a block without steps, so the zero-length moves (one at F = 10^145, which gave NaN
    before) cost no time, and the moves either side join as if they were not there."""
    marlin = load_printer("mk3s-marlin")
    report = simulate((FINDINGS / "marlin_nan_print_time.gcode").read_bytes(), marlin)
    assert report.print_time_s == pytest.approx(simulate(b"G1 X200 F6000\n", marlin).print_time_s)
    split = simulate(b"G1 X100 F6000\nG1 X100\nG1 Y0 F9000\nG1 X200 F6000\n", marlin).print_time_s
    joined = simulate(b"G1 X100 F6000\nG1 X200\n", marlin).print_time_s
    assert split == pytest.approx(joined)
