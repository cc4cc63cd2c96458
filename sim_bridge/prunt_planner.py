"""A Prunt-style motion planner: corners blended within a chord error, feed profiles limited in velocity,
acceleration, jerk, snap and crackle.

Prunt (Prunt3D) plans differently from Klipper and Marlin. It has no junction speed: it replaces every
corner between two moves by a smooth symmetric curve (a Pythagorean-hodograph spline) that passes the
corner within the **chord error**, and the speed through that curve is the highest at which its curvature
keeps the centripetal acceleration, jerk, snap and crackle under their limits. Along the path the speed
follows a *nested* ramp: the crackle is ±C in pulses, which makes the snap, jerk and acceleration
trapezoids nested inside each other, each no larger than its limit (15 phases per speed change). The
program's moves run in **blocks**: every run of moves between two commands that bring the machine to rest
(``G4``, ``M104``/``M106``/``M107``/``M140``, a heater wait, homing) is one block that starts and ends at
rest, and Prunt blends every corner inside it, including Z moves and travels.

This is our own implementation written from Prunt's documented behaviour and the recorded outputs of the
real ``prunt_simulator`` in ``../shared/data/prunt`` (see docs/simulator.md, "Prunt"); it is an
approximation, not Prunt's code. Where it approximates:

* the blend's proportions — how far along each segment it starts (``d``), how close it passes the corner
  and its smallest radius — are those of Prunt's curve family, but its *length* is taken as the two chords
  through its apex (a few micrometres short per corner at the default chord error);
* E takes part in the corner geometry as Prunt's XYZE corners do (with an axial scale of 1), but corner
  shifting (Prunt's "Shift blended corners") is not modelled;
* the step generator's 0.1 ms interpolation is only used as the limit it puts on the speed of short
  segments.

Compiled with numba like :mod:`sim_bridge.planner`; :func:`plan_prunt` returns the same table as
:func:`sim_bridge.planner.plan_klipper`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from sim_bridge.events import F_STOP_BEFORE
from sim_bridge.gcode import GcodeReader
from sim_bridge.interpreter import Interpreter
from sim_bridge.kernels import kernel
from sim_bridge.machine import Program, new_state
from sim_bridge.options import SimOptions
from sim_bridge.planner import C_MAX_A, C_MAX_V, C_PRUNT
from sim_bridge.printers import load_material
from sim_bridge.profiles import PrinterProfile

INTERPOLATION_TIME_S = 1e-4
"""Prunt's step-generator period: a segment is not run faster than its length per period."""
MAX_BLEND_ANGLE_DEG = 179.0
"""Turns sharper than this (near reversals) are not blended: the machine stops at the corner."""
LEG_SHARE = 0.49
"""A blend uses at most this share of either segment next to its corner."""
REACH_MARGIN = 0.97
"""Share of the reachable speed change a corner limit takes (Prunt keeps every ramp from ending in a tiny
phase that would overshoot the limits for one interpolation period)."""
MAX_CORNERS_PER_BLOCK = 50_000
"""Prunt plans at most this many corners in one block; a longer run of moves rests in between."""

# Indices into the limits array.
L_ACCEL, L_JERK, L_SNAP, L_CRACKLE, L_CHORD, L_TANGENTIAL_V = 0, 1, 2, 3, 4, 5


# -- the nested ramp --------------------------------------------------------------------------------------
@kernel(bounded=True)
def _ramp_gain(t1: float, t2: float, t3: float, t4: float, crackle: float) -> float:
    """Speed gained by a ramp whose crackle pulses last ``t1`` and whose constant snap, jerk and
    acceleration phases last ``t2``, ``t3``, ``t4``."""
    return crackle * t1 * (t1 + t2) * (2.0 * t1 + t2 + t3) * (4.0 * t1 + 2.0 * t2 + t3 + t4)


@kernel(bounded=True)
def _ramp_duration(t1: float, t2: float, t3: float, t4: float) -> float:
    return 8.0 * t1 + 4.0 * t2 + 2.0 * t3 + t4


@kernel(bounded=True)
def ramp_phases(delta_v: float, accel: float, jerk: float, snap: float,
                crackle: float) -> tuple[float, float, float, float]:
    """The fastest nested ramp that changes speed by ``delta_v`` (mm/s) under the four limits.

    Greedy from the inside out: the crackle pulse grows until the snap, the jerk, the acceleration or the
    speed change itself is reached; then the next phase grows, and so on. Returns ``(t1, t2, t3, t4)``.
    """
    dv = abs(delta_v)
    if dv <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    lim_snap = snap / crackle
    lim_jerk = math.sqrt(jerk / crackle)
    lim_accel = (0.5 * accel / crackle) ** (1.0 / 3.0)
    lim_dv = (dv / (8.0 * crackle)) ** 0.25
    t1 = min(lim_snap, lim_jerk, lim_accel, lim_dv)
    t2 = t3 = t4 = 0.0
    if t1 == lim_dv:
        return t1, 0.0, 0.0, 0.0
    stage = 4 if t1 == lim_accel else (3 if t1 == lim_jerk else 2)
    if stage == 2:
        # Constant snap: grow t2 until the jerk, the acceleration or the speed change binds.
        t2_jerk = jerk / (crackle * t1) - t1
        # Acceleration with t3 = 0: c*t1*(t1+t2)*(2*t1+t2) = accel (a quadratic in t2).
        q = accel / (crackle * t1)
        t2_accel = 0.5 * (-3.0 * t1 + math.sqrt(t1 * t1 + 4.0 * q))
        lo, hi = 0.0, max(t2_jerk, t2_accel, 0.0)
        if _ramp_gain(t1, hi, 0.0, 0.0, crackle) <= dv:
            t2_dv = hi + 1.0
        else:
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if _ramp_gain(t1, mid, 0.0, 0.0, crackle) <= dv:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-15 * max(hi, 1e-12):
                    break
            t2_dv = lo
        t2 = max(min(t2_jerk, t2_accel, t2_dv), 0.0)
        if t2 == t2_dv:
            return t1, t2, 0.0, 0.0
        stage = 4 if t2 == t2_accel else 3
    if stage == 3:
        jerk_peak = crackle * t1 * (t1 + t2)
        p = 2.0 * t1 + t2
        t3_accel = accel / jerk_peak - p
        t3_dv = 0.5 * (-3.0 * p + math.sqrt(p * p + 4.0 * dv / jerk_peak))
        t3 = max(min(t3_accel, t3_dv), 0.0)
        if t3 == t3_dv:
            return t1, t2, t3, 0.0
    accel_peak = crackle * t1 * (t1 + t2) * (2.0 * t1 + t2 + t3)
    t4 = max(dv / accel_peak - (4.0 * t1 + 2.0 * t2 + t3), 0.0)
    return t1, t2, t3, t4


@kernel(bounded=True)
def ramp_time_distance(v_from: float, v_to: float, limits: np.ndarray) -> tuple[float, float]:
    """Duration (s) and length (mm) of the fastest ramp from ``v_from`` to ``v_to`` (mm/s).

    The ramp is symmetric in time, so its length is the mean of the two speeds times its duration.
    """
    t1, t2, t3, t4 = ramp_phases(v_to - v_from, limits[L_ACCEL], limits[L_JERK], limits[L_SNAP],
                                 limits[L_CRACKLE])
    duration = _ramp_duration(t1, t2, t3, t4)
    return duration, 0.5 * (v_from + v_to) * duration


@kernel(bounded=True)
def reachable_speed(v_from: float, distance: float, limits: np.ndarray) -> float:
    """The highest speed reached from ``v_from`` within ``distance`` (mm), with :data:`REACH_MARGIN`."""
    if distance <= 0.0:
        return v_from
    hi = 1.0
    while ramp_time_distance(v_from, v_from + hi, limits)[1] < distance and hi < 1e9:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if ramp_time_distance(v_from, v_from + mid, limits)[1] <= distance:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-9):
            break
    return v_from + REACH_MARGIN * lo


@kernel(bounded=True)
def segment_profile(v_start: float, v_max: float, v_end: float, distance: float,
                    limits: np.ndarray) -> tuple[float, float, float, float]:
    """The feed profile of one segment: ``(peak_v, accel_t, coast_t, decel_t)``.

    Ramp up from ``v_start`` to the segment's speed, coast, ramp down to ``v_end``; when the two ramps do
    not fit, the peak speed is the highest one whose ramps fit in ``distance``.
    """
    if distance <= 0.0:
        return max(v_start, v_end), 0.0, 0.0, 0.0
    v_max = max(v_max, v_start, v_end)
    up_t, up_d = ramp_time_distance(v_start, v_max, limits)
    down_t, down_d = ramp_time_distance(v_max, v_end, limits)
    if up_d + down_d <= distance:
        return v_max, up_t, (distance - up_d - down_d) / v_max, down_t
    lo, hi = max(v_start, v_end), v_max
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        up_t, up_d = ramp_time_distance(v_start, mid, limits)
        down_t, down_d = ramp_time_distance(mid, v_end, limits)
        if up_d + down_d <= distance:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-9):
            break
    up_t, up_d = ramp_time_distance(v_start, lo, limits)
    down_t, down_d = ramp_time_distance(lo, v_end, limits)
    coast = (distance - up_d - down_d) / lo if lo > 0.0 else 0.0
    return lo, up_t, max(coast, 0.0), down_t


# -- the corner blends ------------------------------------------------------------------------------------
@kernel(bounded=True)
def blend_geometry(u_in: np.ndarray, u_out: np.ndarray, len_in: float, len_out: float,
                   chord_error: float) -> tuple[float, float, float]:
    """One corner's blend: ``(extent_mm, half_length_mm, min_radius_mm)``.

    ``extent`` is how far from the corner the blend leaves each segment; ``half_length`` the length of
    half the blend; ``min_radius`` its smallest radius of curvature (``inf`` for a straight joint, 0 for a
    corner that is not blended). The proportions are those of Prunt's blend: with ``s``/``c`` the sine and
    cosine of half the turning angle, a blend that passes the corner at distance ``δ`` starts
    ``δ·16384(5210c + 1225) / (s(8758310c + 20070400))`` from it, and its smallest radius is
    ``(10296/7)·d·c² / (s(5210c + 1225))``.
    """
    cos_turn = 0.0
    for k in range(u_in.shape[0]):
        cos_turn += u_in[k] * u_out[k]
    cos_turn = min(max(cos_turn, -1.0), 1.0)
    s = math.sqrt(max(0.5 * (1.0 - cos_turn), 0.0))
    c = math.sqrt(max(0.5 * (1.0 + cos_turn), 0.0))
    if s > math.sin(math.radians(0.5 * MAX_BLEND_ANGLE_DEG)) or c <= 0.0:
        return 0.0, 0.0, 0.0
    leg_limit = LEG_SHARE * min(len_in, len_out)
    if s <= 1e-12:
        return leg_limit, leg_limit, math.inf
    extent = min(chord_error * 16384.0 * (5210.0 * c + 1225.0) / (s * (8758310.0 * c + 20070400.0)), leg_limit)
    deviation = extent * s * (8758310.0 * c + 20070400.0) / (16384.0 * (5210.0 * c + 1225.0))
    half_length = math.sqrt(max(extent * extent + deviation * deviation - 2.0 * extent * deviation * s, 0.0))
    radius = (10296.0 / 7.0) * extent * c * c / (s * (5210.0 * c + 1225.0))
    return extent, half_length, radius


@kernel(bounded=True)
def corner_speed_limit(radius: float, limits: np.ndarray) -> float:
    """The highest speed through a curve of smallest radius ``radius`` at which the centripetal
    acceleration, jerk, snap and crackle of a constant-speed pass stay under their limits."""
    if radius == math.inf:
        return math.inf
    if radius <= 0.0:
        return 0.0
    return min(math.sqrt(limits[L_ACCEL] * radius), (limits[L_JERK] * radius * radius) ** (1.0 / 3.0),
               (limits[L_SNAP] * radius ** 3) ** 0.25, (limits[L_CRACKLE] * radius ** 4) ** 0.2)


# -- a program ----------------------------------------------------------------------------------------------
@kernel(bounded=True)
def _plan_block(first: int, last: int, seg: np.ndarray, length: np.ndarray,
                speed: np.ndarray, limits: np.ndarray, out: np.ndarray) -> None:
    """Plan moves ``first..last`` (inclusive) as one block that starts and ends at rest."""
    m = last - first + 1
    extent = np.zeros(m + 1)
    half = np.zeros(m + 1)
    corner_v = np.zeros(m + 1)
    dim = seg.shape[1]
    u_in = np.zeros(dim)
    u_out = np.zeros(dim)
    for k in range(1, m):
        i = first + k
        a, b = length[i - 1], length[i]
        if a <= 0.0 or b <= 0.0:
            continue  # a zero-length move: the blend degenerates and the machine stops there
        for q in range(dim):
            u_in[q] = seg[i - 1, q] / a
            u_out[q] = seg[i, q] / b
        ext, hl, radius = blend_geometry(u_in, u_out, a, b, limits[L_CHORD])
        extent[k], half[k] = ext, hl
        corner_v[k] = min(speed[i - 1], speed[i], corner_speed_limit(radius, limits))
    dist = np.zeros(m)
    for k in range(m):
        dist[k] = max(length[first + k] - extent[k] - extent[k + 1], 0.0) + half[k] + half[k + 1]
    for k in range(1, m):
        corner_v[k] = min(corner_v[k], reachable_speed(corner_v[k - 1], dist[k - 1], limits))
    for k in range(m - 1, 0, -1):
        corner_v[k] = min(corner_v[k], reachable_speed(corner_v[k + 1], dist[k], limits))
    for k in range(m):
        i = first + k
        peak, up_t, coast_t, down_t = segment_profile(corner_v[k], speed[i], corner_v[k + 1], dist[k], limits)
        out[i, 0] = corner_v[k]
        out[i, 1] = peak
        out[i, 2] = corner_v[k + 1]
        out[i, 3] = up_t
        out[i, 4] = coast_t
        out[i, 5] = down_t


@kernel
def plan_prunt(starts: np.ndarray, xyz: np.ndarray, de: np.ndarray, feed: np.ndarray, block_start: np.ndarray,
               sid: np.ndarray, limits_table: np.ndarray, axis_max_v: np.ndarray,
               ignore_e: bool) -> tuple[np.ndarray, np.ndarray]:
    """Plan moves as Prunt does; returns ``(profile, move_d)``.

    ``profile[i]`` holds the speed at the start of move ``i`` (the apex of the blend before it), its peak
    speed, the speed at its end, and the durations of its ramp up, coast and ramp down, measured between
    the apexes of the blends around it. ``block_start[i]`` is true where the machine rests before move
    ``i``. ``feed`` is the commanded speed (XYZ speed when ``ignore_e``, as Prunt's "Ignore E in XYZE");
    ``axis_max_v`` the X, Y, Z, E speed limits; row ``sid[i]`` of ``limits_table`` the acceleration, jerk,
    snap, crackle, chord error and tangential speed limit in force for move ``i`` (a block plans with
    those of its first move: Prunt changes its limits only between blocks).
    """
    n = xyz.shape[0]
    seg = np.zeros((n, 4))
    length = np.zeros(n)
    speed = np.zeros(n)
    move_d = np.zeros(n)
    out = np.zeros((n, 6))
    for i in range(n):
        for q in range(3):
            seg[i, q] = xyz[i, q] - starts[i, q]
        seg[i, 3] = de[i]
        xyz_d = math.sqrt(seg[i, 0] ** 2 + seg[i, 1] ** 2 + seg[i, 2] ** 2)
        d = math.sqrt(xyz_d * xyz_d + de[i] * de[i])
        length[i] = d
        move_d[i] = xyz_d if xyz_d > 0.0 else abs(de[i])
        v = feed[i]
        if ignore_e and xyz_d > 0.0:
            v *= d / xyz_d
        v = min(v, limits_table[sid[i], L_TANGENTIAL_V])
        if d > 0.0:
            v = min(v, d / INTERPOLATION_TIME_S)
            for q in range(4):
                if seg[i, q] != 0.0:
                    v = min(v, axis_max_v[q] * d / abs(seg[i, q]))
        speed[i] = v
    first = 0
    while first < n:
        last = first
        while last + 1 < n and not block_start[last + 1] and last + 1 - first < MAX_CORNERS_PER_BLOCK:
            last += 1
        _plan_block(first, last, seg, length, speed, limits_table[sid[first]], out)
        first = last + 1
    return out, move_d


def plan_prunt_program(profile: PrinterProfile, prog: Program) -> tuple[np.ndarray, np.ndarray]:
    """:func:`plan_prunt` on an interpreted program with ``profile``'s limits, as ``M205 A/J/S/C/D`` change
    them.

    A block ends wherever Prunt brings the machine to rest: before a move that follows any timeline event
    (temperature or fan commands, dwells, heater waits, homing, macros) and wherever the interpreter
    already stops the planner.
    """
    n = len(prog.line)
    block_start = (prog.flags[:n] & F_STOP_BEFORE) != 0
    for event in prog.events:
        if event[0] < n:
            block_start[event[0]] = True
    table = prog.settings_table
    limits = np.empty((len(table), 6))
    limits[:, L_ACCEL] = table[:, C_MAX_A]
    limits[:, L_JERK:L_CHORD + 1] = table[:, C_PRUNT:C_PRUNT + 4]
    limits[:, L_TANGENTIAL_V] = table[:, C_MAX_V]
    # Prunt caps each higher-order limit by the one below it over one interpolation period.
    limits[:, L_ACCEL] = np.minimum(limits[:, L_ACCEL], limits[:, L_TANGENTIAL_V] / INTERPOLATION_TIME_S)
    for k in (L_JERK, L_SNAP, L_CRACKLE):
        limits[:, k] = np.minimum(limits[:, k], limits[:, k - 1] / INTERPOLATION_TIME_S)
    axis_max_v = np.asarray(profile.max_feedrate_mm_s, dtype=np.float64)
    return plan_prunt(prog.starts, prog.xyz, prog.de, prog.feed, block_start, prog.settings_id, limits,
                      axis_max_v, profile.prunt.ignore_e_in_xyze)


def plan_file(profile: PrinterProfile, path: str | os.PathLike[str]) -> tuple[np.ndarray, Program]:
    """A G-code file interpreted on ``profile`` and planned by :func:`plan_prunt_program`:
    ``(profile_table, program)``."""
    options = SimOptions()
    prog = Interpreter(profile, load_material("PLA"), options, new_state(profile, options)).run(GcodeReader(path))
    return plan_prunt_program(profile, prog)[0], prog
