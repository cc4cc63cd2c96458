"""The compiled bulk path (:mod:`sim_bridge.move_scan`) interprets every program exactly as the Python path:
every real and golden file, a program of tricky lines, and random lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_bridge import move_scan
from sim_bridge.gcode import GcodeReader
from sim_bridge.interpreter import Interpreter
from sim_bridge.machine import Program, new_state
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from tests.conftest import WILD_DIR

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*WILD_DIR.glob("*.gcode"), *(ROOT / "tests" / "fixtures").rglob("*.gcode"),
                *(ROOT / "tests" / "golden").rglob("*.gcode"), *(ROOT / "tests" / "safety_golden").rglob("*.gcode")])
ARRAYS = ("line", "xyz", "starts", "de", "feed", "flags", "settings_id", "layer", "settings_table")

TRICKY = "\n".join([
    "; tricky lines", ";", "; ", ";\x01", ";\x1f", "", "M104 S210", "M109 S210", "G28", "M83", "G1 Z0.2 F600",
    "G1 X1.5Y2", "G1 X 10 Y 10", "G1 X-0 Y10", "G1 X.5", "G1 X1.", "G1 X010.0100", "G1 X+3", "G1 X9e0.01",
    "G1 X20 E1E2", "G1 X12.3456789012345678 Y5", "G1 X0000000000000000000012.5", "G1 X30 ; comment (paren)",
    "G1 X31 ; star * in comment", "G1 X32 Y20 E0.5 S100 T3", "G1 X33 A0.2", "G1 X34\tY21\tE0.1",
    "G1 X35 Y23 E-0.5", "G1 E0.5", "G1 F1200", "G1", "G1 ", "G1 ;only a comment", "G1 X36 # odd Y24",
    ";LAYER_CHANGE", ";Z:0.4", "G1 Z0.4", "G1 X40 Y40 E1", ";LAYER:2", "; <layer> 3", "G1 X41 Z0.6 E0.2",
    "G91", "G1 X1 Y1 E0.1", "G1 Z0.2", "G90", "M82", "G92 E0", "G1 X50 Y50 E1", "G1 X51 E1.2", "M221 S90",
    "M220 S150", "G1 X52 E1.2", "G20", "G1 X2 Y2 E0.004", "G21", "G1 X60 Y60 E2", "g1 x61", "G0 X62 Y62",
    "M84", "G1 X63 Y63",
]) + "\n"
"""Lines each path must read alike (the unhomed move after M84 is fatal on Klipper, allowed by Marlin)."""
FATAL = ["G1 X63 E2.1 F-1", "G1 X64 Y64 E100", "G1 X700 Y70", "G1 E200", "G1 Y22 E", "G1 X65 Z-5"]
"""Last lines that stop a program (or not, by firmware): Python's rules decide them in both paths."""


def _program(source: str | Path | bytes, printer: str, bulk: bool) -> Program:
    profile = load_printer(printer)
    options = SimOptions()
    interp = Interpreter(profile, load_material("PLA"), options, new_state(profile, options), bulk=bulk)
    return interp.run(GcodeReader(source))


def _same(a: Program, b: Program, where: str) -> None:
    for key in ARRAYS:
        assert np.array_equal(getattr(a, key), getattr(b, key), equal_nan=True), (where, key)
    assert a.events == b.events, where
    assert (a.lines, a.commands, a.layer_z, a.layer_first_line, a.ends_with_stop) == (
        b.lines, b.commands, b.layer_z, b.layer_first_line, b.ends_with_stop), where
    assert repr(a.fatal) == repr(b.fatal), where
    assert [repr(n) for n in a.notices] == [repr(n) for n in b.notices], where


@pytest.mark.parametrize("printer", ["ender3-klipper", "mk3s-marlin"])
def test_every_real_and_golden_file_interprets_the_same_both_ways(printer: str) -> None:
    assert len(FILES) > 100
    moves = 0
    for path in FILES:
        python, bulk = _program(path, printer, False), _program(path, printer, True)
        _same(python, bulk, f"{path.name} on {printer}")
        moves += len(bulk.line)
    assert moves > 200_000  # the comparison covers real programs' moves, not only their start sequences


@pytest.mark.parametrize("printer", ["ender3-klipper", "mk3s-marlin"])
def test_tricky_lines_interpret_the_same_both_ways(printer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = TRICKY.encode()
    python, bulk = _program(data, printer, False), _program(data, printer, True)
    _same(python, bulk, printer)
    assert len(bulk.line) > 30 and len(bulk.layer_z) >= 2
    stopped = 0
    for last in FATAL:
        head = TRICKY.split("M84")[0] + last + "\nG1 X80 Y80\n"
        reference = _program(head.encode(), printer, False)
        _same(reference, _program(head.encode(), printer, True), f"{printer}: {last}")
        stopped += reference.fatal is not None
    assert stopped >= 4
    # A kernel output buffer smaller than a block: the scan resumes where the buffer filled.
    monkeypatch.setattr(move_scan, "BLOCK_MOVES", 3)
    _same(python, _program(data, printer, True), f"{printer}, 3-row buffer")


def test_the_kernel_in_plain_python_interprets_the_same() -> None:
    # In a process that forces plain-Python kernels, scan_moves itself runs as Python: both modes agree.
    script = ("import json, sys\nfrom tests.test_move_scan import TRICKY, _program, ARRAYS\n"
              "p = _program(TRICKY.encode(), 'ender3-klipper', True)\n"
              "print(json.dumps({k: getattr(p, k).tolist() for k in ARRAYS}))\n")
    env = {**os.environ, "LAYERLOOP_KERNELS": "python"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    python_kernel = json.loads(done.stdout)
    reference = _program(TRICKY.encode(), "ender3-klipper", False)
    for key in ARRAYS:
        assert np.array_equal(np.asarray(python_kernel[key], dtype=float).reshape(getattr(reference, key).shape),
                              getattr(reference, key).astype(float), equal_nan=True), key


_number = st.one_of(st.integers(-500, 500).map(str),
                    st.floats(-500, 500, allow_nan=False).map(lambda v: f"{v:.{abs(hash(v)) % 7}f}"),
                    st.sampled_from(["", "-", "+", ".", "1.", ".5", "-0", "00012.500", "1e3", "12345678901234567"]))
_word = st.tuples(st.sampled_from("XYZEFABS"), st.sampled_from(["", " ", "\t"]), _number).map("".join)
_line = st.one_of(
    st.lists(_word, max_size=5).map(lambda ws: "G1 " + " ".join(ws)),
    st.lists(_word, max_size=5).map(lambda ws: "G0 " + "".join(ws)),
    st.sampled_from(["G91", "G90", "M82", "M83", "G92 E0", ";LAYER_CHANGE", "; note", "", "M221 S95",
                     "G1 X5 ; c", "G1 X5 (c)", "G1 X5*9"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, min_size=1, max_size=40))
def test_random_lines_interpret_the_same_both_ways(lines: list[str]) -> None:
    data = ("G28\nG1 Z1 F600\n" + "\n".join(lines) + "\n").encode()
    _same(_program(data, "ender3-klipper", False), _program(data, "ender3-klipper", True), repr(lines))
