"""Arc geometry of G2/G3 (RS274NGC), shared by the interpreter and the validator."""

from __future__ import annotations

import math

SWEEP_EPS_RAD = 1e-12
"""An arc whose ends coincide (within this) is a full circle."""
MAX_ARC_CHORDS = 200_000
"""Most chords one arc is cut into: a full circle 640 mm across at the finest ``arc_segment_mm`` (0.01 mm).
Without it one line (``G2 X10 I1e19``) asks for 10^20 chords and the simulator runs out of memory."""


def arc_center_from_radius(x0: float, y0: float, x1: float, y1: float, r: float, clockwise: bool
                           ) -> tuple[float, float]:
    """Arc centre from the R form; a negative R asks for the arc over 180° (RS274NGC)."""
    mx, my = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    dx, dy = x1 - x0, y1 - y0
    chord = math.hypot(dx, dy)
    if chord == 0.0:
        return x0, y0
    half = chord / 2.0
    h = math.sqrt(max(0.0, r * r - half * half))
    sign = -1.0 if clockwise else 1.0
    if r < 0.0:
        sign = -sign
    return mx - sign * h * dy / chord, my + sign * h * dx / chord


def arc_sweep(x0: float, y0: float, x1: float, y1: float, cx: float, cy: float, clockwise: bool
              ) -> tuple[float, float, float]:
    """(radius, start angle, signed sweep) of the arc from (x0, y0) to (x1, y1) about (cx, cy), in radians;
    clockwise sweeps are negative, and coinciding ends make a full circle."""
    a0 = math.atan2(y0 - cy, x0 - cx)
    sweep = math.atan2(y1 - cy, x1 - cx) - a0
    if clockwise:
        if sweep >= -SWEEP_EPS_RAD:
            sweep -= 2.0 * math.pi
    elif sweep <= SWEEP_EPS_RAD:
        sweep += 2.0 * math.pi
    return math.hypot(x0 - cx, y0 - cy), a0, sweep


def arc_chords(start: tuple[float, float, float], end: tuple[float, float, float], cx: float, cy: float,
               clockwise: bool, segment_mm: float) -> list[tuple[float, float, float]]:
    """End points of the equal chords a (helical) arc is cut into, ``max(1, floor(length / segment_mm))`` of
    them (at most :data:`MAX_ARC_CHORDS`); the last is exactly ``end``. An arc of infinite or undefined length
    (a centre at 1e400, which reads as infinity) is one chord: the straight move to ``end``.

    >>> len(arc_chords((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), 5.0, 1e19, False, 1.0)), arc_chords(
    ...     (0.0, 0.0, 0.0), (10.0, 0.0, 0.0), 5.0, math.inf, False, 1.0)
    (200000, [(10.0, 0.0, 0.0)])
    """
    x0, y0, z0 = start
    radius, a0, sweep = arc_sweep(x0, y0, end[0], end[1], cx, cy, clockwise)
    length = math.hypot(abs(sweep) * radius, end[2] - z0)
    segments = max(1, min(MAX_ARC_CHORDS, int(length / segment_mm))) if math.isfinite(length) else 1
    points = []
    for k in range(1, segments):
        frac = k / segments
        angle = a0 + sweep * frac
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle), z0 + (end[2] - z0) * frac))
    points.append(end)
    return points
