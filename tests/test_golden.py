"""Golden G-code: small files that must fail with a given error at a given line, and files that must pass.

Each must-fail file starts with ``; expect: MODE line N "text"`` (and optionally ``; printer: PROFILE``);
the simulator must report that failure mode at that line with a message containing the text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import GOLDEN
from conftest import ROOT as REPO

from sim_bridge import simulate
from sim_bridge.failures import DEFECT_MODES, FATAL_MODES, NOTICE_KINDS

EXPECT_RE = re.compile(r'^; expect: (\w+) line (\d+) "(.*)"$')


def _header(path: Path) -> tuple[str, int, str, str]:
    lines = path.read_text().splitlines()
    match = EXPECT_RE.match(lines[0])
    assert match, f"{path}: first line must be '; expect: MODE line N \"text\"'"
    printer = "ender3-klipper"
    for line in lines[1:3]:
        if line.startswith("; printer: "):
            printer = str(REPO / line.split(": ", 1)[1])
    text = match.group(3).replace('\\"', '"')
    return match.group(1), int(match.group(2)), text, printer


@pytest.mark.parametrize("path", sorted((GOLDEN / "must_fail").glob("*.gcode")), ids=lambda p: p.stem)
def test_must_fail(path: Path) -> None:
    mode, line, text, printer = _header(path)
    report = simulate(path, printer)
    assert not report.success
    hits = [f for f in report.failures if f.mode == mode]
    assert hits, f"expected {mode}, got {report.failure_modes()}"
    assert hits[0].line == line
    assert text in hits[0].message
    if hits[0].fatal:
        # A fatal error stops the run: nothing after it is reported.
        assert report.stopped_at_line == line
        assert report.failures[-1] is hits[0]


@pytest.mark.parametrize("path", sorted((GOLDEN / "notices").glob("*.gcode")), ids=lambda p: p.stem)
def test_notices(path: Path) -> None:
    kind, line, text, printer = _header(path)
    report = simulate(path, printer)
    assert report.success, "a notice is not a failure (Klipper goes on after 'Unknown command')"
    hits = [n for n in report.notices if n.kind == kind]
    assert hits and hits[0].line == line and text in hits[0].message
    assert {n.kind for n in report.notices} <= NOTICE_KINDS, "every notice kind is in the one vocabulary"


@pytest.mark.parametrize("path", sorted((GOLDEN / "must_pass").glob("*.gcode")), ids=lambda p: p.stem)
def test_must_pass(path: Path) -> None:
    report = simulate(path, "ender3-klipper")
    assert report.success, report.summary()
    assert report.layer_count >= 1
    assert report.filament_mm > 0
    assert not [n for n in report.notices if n.kind == "unknown_command"]


def test_every_fatal_mode_has_a_golden_file() -> None:
    covered = {_header(p)[0] for p in (GOLDEN / "must_fail").glob("*.gcode")}
    missing = (FATAL_MODES | DEFECT_MODES) - covered - {"invalid_command"}
    assert not missing, f"modes without a must-fail file: {sorted(missing)}"
