"""Realistic defects injected into correct programs, to label outcomes (success / failure modes).

Each function takes a program's text and returns a changed copy; which moves it changes is drawn from the
generator passed in, so the same seed gives the same defect. What the defect does to the print is then
measured by the simulator, not assumed: the label of a record is the injected defect *and* the simulated
outcome.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

_E_RE = re.compile(r"(?<=[ ])E(-?[0-9.]+)")
_F_RE = re.compile(r"(?<=[ ])F([0-9.]+)")
_X_RE = re.compile(r"(?<=[ ])X(-?[0-9.]+)")
_Z_RE = re.compile(r"^G1 Z(-?[0-9.]+)")


def _layers(lines: list[str]) -> list[int]:
    """Indices of ';LAYER_CHANGE' lines."""
    return [i for i, line in enumerate(lines) if line.startswith(";LAYER_CHANGE")]


def _scale_e(text: str, factor: float) -> str:
    out = []
    for line in text.split("\n"):
        if line.startswith("G1 ") and (" X" in line or " Y" in line) and " E" in line:
            line = _E_RE.sub(lambda m: f"E{float(m.group(1)) * factor:.5f}", line)
        out.append(line)
    return "\n".join(out)


def cold_start(text: str, rng: np.random.Generator) -> str:
    """The heaters are never switched on (a start sequence without M104/M109/M140/M190)."""
    return "\n".join(line for line in text.split("\n") if not line.startswith(("M104", "M109", "M140", "M190")))


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
    for i in range(starts[k], end):
        if lines[i].startswith(("G0 ", "G1 ")):
            lines[i] = _X_RE.sub(lambda m: f"X{float(m.group(1)) + 400.0:.3f}", lines[i])
    return "\n".join(lines)


def missing_retracts(text: str, rng: np.random.Generator) -> str:
    """No retraction before travels (stringing, oozing)."""
    return "\n".join(line for line in text.split("\n")
                     if not (line.startswith("G1 E") and " X" not in line and " Y" not in line))


def wrong_z(text: str, rng: np.random.Generator) -> str:
    """One layer after the first is printed 0.6 mm too low (into the layers below)."""
    lines = text.split("\n")
    zs = [i for i, line in enumerate(lines) if _Z_RE.match(line) and i - 1 >= 0 and lines[i - 1].startswith(";LAYER")]
    if len(zs) < 2:
        return text
    i = zs[int(rng.integers(1, len(zs)))]
    z = float(_Z_RE.match(lines[i]).group(1))
    lines[i] = _Z_RE.sub(f"G1 Z{max(0.02, z - 0.6):.3f}", lines[i])
    return "\n".join(lines)


def too_fast(text: str, rng: np.random.Generator) -> str:
    """Printing moves run 4–8 times faster than planned (the hotend cannot melt that much)."""
    factor = float(rng.uniform(4.0, 8.0))
    out = []
    for line in text.split("\n"):
        if line.startswith("G1 ") and " E" in line and (" X" in line or " Y" in line) and " F" in line:
            line = _F_RE.sub(lambda m: f"F{float(m.group(1)) * factor:.0f}", line)
        out.append(line)
    return "\n".join(out)


def missing_cooling(text: str, rng: np.random.Generator) -> str:
    """The part-cooling fan never turns on (bridges and overhangs sag)."""
    return "\n".join(line for line in text.split("\n") if not line.startswith("M106"))


DEFECTS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "cold_start": cold_start, "over_extrusion": over_extrusion, "under_extrusion": under_extrusion,
    "out_of_range": out_of_range, "missing_retracts": missing_retracts, "wrong_z": wrong_z,
    "too_fast": too_fast, "missing_cooling": missing_cooling,
}
"""Defect name → injector (the names are the ``defect`` labels of the ``programs`` table)."""
