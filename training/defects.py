"""Realistic defects injected into correct programs, to label outcomes (success / failure modes).

Each function takes a program's text and returns a changed copy; which moves it changes is drawn from the
generator passed in, so the same seed gives the same defect. What the defect does to the print is then
measured by the simulator, not assumed: the label of a record is the injected defect *and* the simulated
outcome. Programs are read and rewritten with :mod:`sim_bridge.gcode`'s parser and formatter
(:func:`edit_moves`); lines a defect does not touch stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim_bridge.commands import MOTION_COMMANDS as MOVE_CODES
from sim_bridge.gcode import Command, format_command, parse_line
from sim_bridge.layers import is_layer_marker

HEATER_CODES = frozenset({"M104", "M109", "M140", "M190"})
"""Commands that switch the heaters on (what a cold start lacks)."""
XYZ_DECIMALS = 3
E_DECIMALS = 5
"""Decimals of rewritten coordinates and extrusion (the reference slicer's)."""
OUT_OF_RANGE_SHIFT_MM = 400.0
"""How far :func:`out_of_range` moves one layer in X."""
WRONG_Z_DROP_MM = 0.6
"""How much lower :func:`wrong_z` prints one layer."""
MIN_Z_MM = 0.02
"""Lowest Z :func:`wrong_z` writes."""

Edit = Callable[[Command], dict[str, float] | None]
"""A move's new parameters, or ``None`` to keep its line as it is."""


def edit_moves(text: str, edit: Edit, lines: range | None = None) -> str:
    """``text`` with every move (G0–G3) in ``lines`` (default: all) rewritten by ``edit``: parsed with
    :func:`sim_bridge.gcode.parse_line`, formatted back with :func:`sim_bridge.gcode.format_command` (its
    comment kept); other lines are left untouched."""
    out = text.split("\n")
    for i in lines if lines is not None else range(len(out)):
        cmd = parse_line(out[i])
        if cmd is None or cmd.code not in MOVE_CODES:
            continue
        params = edit(cmd)
        if params is not None:
            out[i] = format_command(cmd.code, params, comment=cmd.comment, decimals=None)
    return "\n".join(out)


def _marker(line: str) -> str:
    """The comment of a comment-only line ('' for any other line)."""
    cmd = parse_line(line, keep_comments=True)
    return cmd.comment if cmd is not None and not cmd.code else ""


def _layers(lines: list[str]) -> list[int]:
    """Indices of the lines that open a layer (any slicer's layer marker, :mod:`sim_bridge.layers`)."""
    return [i for i, line in enumerate(lines) if is_layer_marker(_marker(line))]


def _drop(text: str, unwanted: Callable[[Command], bool]) -> str:
    """``text`` without the commands ``unwanted`` picks (comment-only and blank lines stay)."""
    kept = []
    for line in text.split("\n"):
        cmd = parse_line(line)
        if cmd is None or not unwanted(cmd):
            kept.append(line)
    return "\n".join(kept)


def _prints(cmd: Command) -> bool:
    """A G1 that moves in X or Y while extruding."""
    return cmd.code == "G1" and "E" in cmd.params and ("X" in cmd.params or "Y" in cmd.params)


def _scale_e(text: str, factor: float) -> str:
    return edit_moves(text, lambda cmd: {**cmd.params, "E": round(cmd.params["E"] * factor, E_DECIMALS)}
                      if _prints(cmd) else None)


def cold_start(text: str, rng: np.random.Generator) -> str:
    """The heaters are never switched on (a start sequence without M104/M109/M140/M190)."""
    return _drop(text, lambda cmd: cmd.code in HEATER_CODES)


def over_extrusion(text: str, rng: np.random.Generator) -> str:
    """Every printing move extrudes 40–80 % too much (wrong filament diameter or E-steps)."""
    return _scale_e(text, float(rng.uniform(1.4, 1.8)))


def under_extrusion(text: str, rng: np.random.Generator) -> str:
    """Every printing move extrudes 30–60 % too little."""
    return _scale_e(text, float(rng.uniform(0.4, 0.7)))


def out_of_range(text: str, rng: np.random.Generator) -> str:
    """One layer's moves are shifted 400 mm in X (a wrong origin or bed size)."""
    lines = text.split("\n")
    starts = _layers(lines)
    if not starts:
        return text
    k = int(rng.integers(0, len(starts)))
    end = starts[k + 1] if k + 1 < len(starts) else len(lines)

    def shift(cmd: Command) -> dict[str, float] | None:
        x = cmd.get("X")
        if cmd.code not in ("G0", "G1") or x is None:
            return None
        return {**cmd.params, "X": round(x + OUT_OF_RANGE_SHIFT_MM, XYZ_DECIMALS)}

    return edit_moves(text, shift, range(starts[k], end))


def missing_retracts(text: str, rng: np.random.Generator) -> str:
    """No retraction before travels (stringing, oozing)."""
    return _drop(text, lambda cmd: cmd.code == "G1" and "E" in cmd.params
                 and "X" not in cmd.params and "Y" not in cmd.params)


def wrong_z(text: str, rng: np.random.Generator) -> str:
    """One layer after the first is printed 0.6 mm too low (into the layers below)."""
    lines = text.split("\n")
    zs = []
    for i in range(1, len(lines)):
        cmd = parse_line(lines[i])
        if cmd is not None and cmd.code == "G1" and cmd.get("Z") is not None and is_layer_marker(_marker(lines[i - 1])):
            zs.append(i)
    if len(zs) < 2:
        return text
    i = zs[int(rng.integers(1, len(zs)))]

    def lower(cmd: Command) -> dict[str, float]:
        return {**cmd.params, "Z": round(max(MIN_Z_MM, cmd.params["Z"] - WRONG_Z_DROP_MM), XYZ_DECIMALS)}

    return edit_moves(text, lower, range(i, i + 1))


def too_fast(text: str, rng: np.random.Generator) -> str:
    """Printing moves run 4–8 times faster than planned (the hotend cannot melt that much)."""
    factor = float(rng.uniform(4.0, 8.0))
    return edit_moves(text, lambda cmd: {**cmd.params, "F": float(round(cmd.params["F"] * factor))}
                      if _prints(cmd) and cmd.get("F") is not None else None)


def missing_cooling(text: str, rng: np.random.Generator) -> str:
    """The part-cooling fan never turns on (bridges and overhangs sag)."""
    return _drop(text, lambda cmd: cmd.code == "M106")


DEFECTS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "cold_start": cold_start, "over_extrusion": over_extrusion, "under_extrusion": under_extrusion,
    "out_of_range": out_of_range, "missing_retracts": missing_retracts, "wrong_z": wrong_z,
    "too_fast": too_fast, "missing_cooling": missing_cooling,
}
"""Defect name → injector (the names are the ``defect`` labels of the ``programs`` table)."""
