"""Motion planners: how long each move takes.

Two corner models, both lookahead planners with trapezoidal acceleration:

* ``klipper`` — Klipper's toolhead: junction speed from ``square_corner_velocity`` through a virtual
  junction deviation and the "approximated centripetal velocity" rule, lookahead over the whole queue with
  ``minimum_cruise_ratio`` smoothing (the speed a move may reach is bounded by a smoothed acceleration, so
  short zig-zags do not accelerate hard), the extruder's instantaneous-corner limit on changes of the
  extrusion ratio, Z and extrude-only limits.
* ``marlin`` — Marlin's classic jerk junctions as slicers' time estimators model them: per-axis speed and
  acceleration limits (M203/M201), print/retract/travel accelerations (M204), a "safe" speed each move may
  start or end at from a standstill, the junction speed limited by each axis' jerk (M205), then the reverse
  and forward passes.

Both are compiled with numba: they run over every move of a program in one call. The algorithms follow the
descriptions in Klipper's documentation (docs/Kinematics.md) and Marlin's planner; the code is our own.
"""

from __future__ import annotations

import math

import numpy as np

from sim_bridge.kernels import kernel

SQRT2_MINUS_1 = math.sqrt(2.0) - 1.0
EXTRUDE_ONLY_ACCEL = 99999999.9
"""Klipper's placeholder toolhead acceleration for extrude-only moves (the extruder limits them)."""

# Columns of the planner-settings table (see limits.PlannerSettings.row).
C_MAX_V, C_MAX_A, C_MCR, C_SCV, C_PRINT_A, C_RETRACT_A, C_TRAVEL_A = 0, 1, 2, 3, 4, 5, 6
C_FEED, C_AXIS_A, C_JERK, C_PRUNT = 7, 11, 15, 19

F_STOP_BEFORE = 2


@kernel(bounded=True)
def _set_junction(i: int, start_v2: float, cruise_v2: float, end_v2: float, move_d: np.ndarray,
                  accel: np.ndarray, out: np.ndarray) -> None:
    half_inv_accel = 0.5 / accel[i]
    accel_d = (cruise_v2 - start_v2) * half_inv_accel
    decel_d = (cruise_v2 - end_v2) * half_inv_accel
    cruise_d = move_d[i] - accel_d - decel_d
    start_v = math.sqrt(max(start_v2, 0.0))
    cruise_v = math.sqrt(max(cruise_v2, 0.0))
    end_v = math.sqrt(max(end_v2, 0.0))
    accel_t = accel_d / ((start_v + cruise_v) * 0.5) if accel_d > 0.0 else 0.0
    cruise_t = cruise_d / cruise_v if cruise_v > 0.0 and cruise_d > 0.0 else 0.0
    decel_t = decel_d / ((end_v + cruise_v) * 0.5) if decel_d > 0.0 else 0.0
    out[i, 0] = start_v
    out[i, 1] = cruise_v
    out[i, 2] = end_v
    out[i, 3] = accel_t
    out[i, 4] = cruise_t
    out[i, 5] = decel_t


@kernel
def plan_klipper(starts: np.ndarray, xyz: np.ndarray, de: np.ndarray, feed: np.ndarray, flags: np.ndarray,
                 sid: np.ndarray, table: np.ndarray, max_z_v: float, max_z_a: float, max_e_v: float,
                 max_e_a: float, instant_corner_v: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plan moves as Klipper's toolhead does.

    Returns ``(profile, move_d, accel)``; ``profile[i]`` holds start, cruise and end speed (mm/s) and the
    acceleration, cruise and deceleration times (s) of move ``i``.
    """
    n = xyz.shape[0]
    move_d = np.zeros(n)
    accel = np.zeros(n)
    max_cruise_v2 = np.zeros(n)
    delta_v2 = np.zeros(n)
    smooth_delta_v2 = np.zeros(n)
    max_start_v2 = np.zeros(n)
    max_smoothed_v2 = np.zeros(n)
    out = np.zeros((n, 6))
    prev_r = np.zeros(4)
    prev_kin = False
    prev_jd = 0.0
    # A move of no length and no extrusion (``G1 Z1.5`` where Z already is 1.5) never reaches Klipper's
    # lookahead queue: its toolhead drops a move whose length is 0. It is skipped here, so the moves either
    # side of it join as if it were not there (a forced stop it carried passes to the next move).
    dropped = np.zeros(n, dtype=np.bool_)
    prev_i = -1
    stop_carried = False
    for i in range(n):
        dx = xyz[i, 0] - starts[i, 0]
        dy = xyz[i, 1] - starts[i, 1]
        dz = xyz[i, 2] - starts[i, 2]
        row = sid[i]
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        kin = d >= 1e-9
        speed = feed[i]
        if kin:
            velocity = min(speed, table[row, C_MAX_V])
            a = table[row, C_MAX_A]
            inv = 1.0 / d
            rx, ry, rz, re = dx * inv, dy * inv, dz * inv, de[i] * inv
        else:
            d = abs(de[i])
            velocity = speed
            a = EXTRUDE_ONLY_ACCEL
            rx, ry, rz = 0.0, 0.0, 0.0
            re = 1.0 if de[i] >= 0.0 else -1.0
            if de[i] == 0.0:
                dropped[i] = True
                move_d[i] = 0.0
                accel[i] = a
                if (flags[i] & F_STOP_BEFORE) != 0:
                    stop_carried = True
                continue
        a2d = table[row, C_MAX_A] * (1.0 - table[row, C_MCR])
        jd = table[row, C_SCV] ** 2 * SQRT2_MINUS_1 / table[row, C_MAX_A]
        mc_v2 = velocity * velocity
        sd_v2 = 2.0 * d * a2d
        # Z limits (cartesian and corexy kinematics' check_move).
        if kin and dz != 0.0:
            z_ratio = d / abs(dz)
            lim_v = max_z_v * z_ratio
            if lim_v * lim_v < mc_v2:
                mc_v2 = lim_v * lim_v
            a = min(a, max_z_a * z_ratio)
            sd_v2 = min(sd_v2, 2.0 * d * a)
        # Extruder limits for extrude-only moves and retractions.
        if de[i] != 0.0 and ((dx == 0.0 and dy == 0.0) or re < 0.0):
            inv_r = 1.0 / abs(re)
            lim_v = max_e_v * inv_r
            if lim_v * lim_v < mc_v2:
                mc_v2 = lim_v * lim_v
            a = min(a, max_e_a * inv_r)
            sd_v2 = min(sd_v2, 2.0 * d * a)
        move_d[i] = d
        accel[i] = a
        max_cruise_v2[i] = mc_v2
        delta_v2[i] = 2.0 * d * a
        smooth_delta_v2[i] = min(sd_v2, 2.0 * d * a)
        # Junction with the previous move.
        p = prev_i
        if p >= 0 and kin and prev_kin and (flags[i] & F_STOP_BEFORE) == 0 and not stop_carried:
            diff_r = re - prev_r[3]
            ext_v2 = (instant_corner_v / abs(diff_r)) ** 2 if diff_r != 0.0 else mc_v2
            ms_v2 = min(ext_v2, mc_v2, max_cruise_v2[p], max_start_v2[p] + delta_v2[p])
            cos_theta = -(rx * prev_r[0] + ry * prev_r[1] + rz * prev_r[2])
            sin_d2 = math.sqrt(max(0.5 * (1.0 - cos_theta), 0.0))
            cos_d2 = math.sqrt(max(0.5 * (1.0 + cos_theta), 0.0))
            one_minus_sin = 1.0 - sin_d2
            if one_minus_sin > 0.0 and cos_d2 > 0.0:
                r_jd = sin_d2 / one_minus_sin
                move_jd_v2 = r_jd * jd * a
                prev_jd_v2 = r_jd * prev_jd * accel[p]
                quarter_tan = 0.25 * sin_d2 / cos_d2
                ms_v2 = min(ms_v2, move_jd_v2, prev_jd_v2, delta_v2[i] * quarter_tan,
                            delta_v2[p] * quarter_tan)
            max_start_v2[i] = ms_v2
            max_smoothed_v2[i] = min(ms_v2, max_smoothed_v2[p] + smooth_delta_v2[p])
        prev_r[0], prev_r[1], prev_r[2], prev_r[3] = rx, ry, rz, re
        prev_kin = kin
        prev_jd = jd
        prev_i = i
        stop_carried = False
    # Backward pass: every move must be able to stop by the end of the queue (or the next forced stop).
    delayed = np.zeros(n, dtype=np.int64)
    delayed_start = np.zeros(n)
    delayed_end = np.zeros(n)
    nd = 0
    next_end_v2 = 0.0
    next_smoothed_v2 = 0.0
    peak_cruise_v2 = 0.0
    for i in range(n - 1, -1, -1):
        if dropped[i]:
            if (flags[i] & F_STOP_BEFORE) != 0:
                next_end_v2 = 0.0
                next_smoothed_v2 = 0.0
            continue
        reachable_start_v2 = next_end_v2 + delta_v2[i]
        start_v2 = min(max_start_v2[i], reachable_start_v2)
        reachable_smoothed_v2 = next_smoothed_v2 + smooth_delta_v2[i]
        smoothed_v2 = min(max_smoothed_v2[i], reachable_smoothed_v2)
        if smoothed_v2 < reachable_smoothed_v2:
            if smoothed_v2 + smooth_delta_v2[i] > next_smoothed_v2 or nd > 0:
                peak_cruise_v2 = min(max_cruise_v2[i], (smoothed_v2 + reachable_smoothed_v2) * 0.5)
                if nd > 0:
                    mc_v2 = peak_cruise_v2
                    for k in range(nd - 1, -1, -1):
                        m = delayed[k]
                        ms_v2 = delayed_start[k]
                        me_v2 = delayed_end[k]
                        mc_v2 = min(mc_v2, ms_v2)
                        _set_junction(m, min(ms_v2, mc_v2), mc_v2, min(me_v2, mc_v2), move_d, accel, out)
                    nd = 0
            cruise_v2 = min((start_v2 + reachable_start_v2) * 0.5, max_cruise_v2[i], peak_cruise_v2)
            _set_junction(i, min(start_v2, cruise_v2), cruise_v2, min(next_end_v2, cruise_v2), move_d, accel, out)
        else:
            delayed[nd] = i
            delayed_start[nd] = start_v2
            delayed_end[nd] = next_end_v2
            nd += 1
        next_end_v2 = start_v2
        next_smoothed_v2 = smoothed_v2
        if (flags[i] & F_STOP_BEFORE) != 0:
            next_end_v2 = 0.0
            next_smoothed_v2 = 0.0
    return out, move_d, accel


@kernel(bounded=True)
def _max_allowable_speed(accel: float, target_v: float, distance: float) -> float:
    return math.sqrt(max(target_v * target_v - 2.0 * accel * distance, 0.0))


@kernel
def plan_marlin(starts: np.ndarray, xyz: np.ndarray, de: np.ndarray, feed: np.ndarray, flags: np.ndarray,
                sid: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plan moves with Marlin's classic jerk junctions; same outputs as :func:`plan_klipper`.

    A move that steps no motor (``G1 X200`` at X 200) never becomes a Marlin block: the planner returns
    before buffering it. It is left out here, so the moves either side join as if it were not there (a
    forced stop it carried passes to the next move), and its row is all zeros."""
    n = xyz.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    kept_flags = flags.copy()
    stop_carried = False
    for i in range(n):
        moves = (xyz[i, 0] != starts[i, 0] or xyz[i, 1] != starts[i, 1] or xyz[i, 2] != starts[i, 2]
                 or de[i] != 0.0)
        if not moves:
            stop_carried = stop_carried or (flags[i] & F_STOP_BEFORE) != 0
            continue
        keep[i] = True
        if stop_carried:
            kept_flags[i] |= F_STOP_BEFORE
            stop_carried = False
    idx = np.nonzero(keep)[0]
    out = np.zeros((n, 6))
    move_d = np.zeros(n)
    accel = np.zeros(n)
    if idx.shape[0] == n:
        return _plan_marlin_blocks(starts, xyz, de, feed, kept_flags, sid, table)
    sub_out, sub_d, sub_a = _plan_marlin_blocks(starts[idx], xyz[idx], de[idx], feed[idx], kept_flags[idx],
                                                sid[idx], table)
    for j in range(idx.shape[0]):
        out[idx[j]] = sub_out[j]
        move_d[idx[j]] = sub_d[j]
        accel[idx[j]] = sub_a[j]
    return out, move_d, accel


@kernel
def _plan_marlin_blocks(starts: np.ndarray, xyz: np.ndarray, de: np.ndarray, feed: np.ndarray, flags: np.ndarray,
                        sid: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`plan_marlin` on moves that each step a motor."""
    n = xyz.shape[0]
    move_d = np.zeros(n)
    accel = np.zeros(n)
    cruise = np.zeros(n)
    safe = np.zeros(n)
    max_entry = np.zeros(n)
    entry = np.zeros(n)
    nominal_length = np.zeros(n, dtype=np.bool_)
    out = np.zeros((n, 6))
    prev_axis_v = np.zeros(4)
    axis_v = np.zeros(4)
    delta = np.zeros(4)
    for i in range(n):
        delta[0] = xyz[i, 0] - starts[i, 0]
        delta[1] = xyz[i, 1] - starts[i, 1]
        delta[2] = xyz[i, 2] - starts[i, 2]
        delta[3] = de[i]
        row = sid[i]
        d = math.sqrt(delta[0] ** 2 + delta[1] ** 2 + delta[2] ** 2)
        extrude_only = d < 1e-9
        if extrude_only:
            d = abs(delta[3])
        if d <= 0.0:
            d = 1e-12
        inv = 1.0 / d
        v = feed[i]
        factor = 1.0
        for a in range(4):
            av = abs(delta[a] * v * inv)
            limit = table[row, C_FEED + a]
            if av > limit > 0.0:
                factor = min(factor, limit / av)
        v *= factor
        for a in range(4):
            axis_v[a] = delta[a] * v * inv
        if extrude_only:
            acc = table[row, C_RETRACT_A]
        elif delta[3] > 0.0:
            acc = table[row, C_PRINT_A]
        else:
            acc = table[row, C_TRAVEL_A]
        for a in range(4):
            component = abs(delta[a]) * inv
            if component > 0.0 and acc * component > table[row, C_AXIS_A + a]:
                acc = table[row, C_AXIS_A + a] / component
        s = v
        for a in range(4):
            if abs(axis_v[a]) > table[row, C_JERK + a]:
                s = min(s, table[row, C_JERK + a])
        vmax_junction = s
        if i > 0 and (flags[i] & F_STOP_BEFORE) == 0 and cruise[i - 1] > 0.0001:
            prev_larger = cruise[i - 1] > v
            smaller_factor = v / cruise[i - 1] if prev_larger else cruise[i - 1] / v
            vmax_junction = v if prev_larger else cruise[i - 1]
            v_factor = 1.0
            limited = False
            for a in range(4):
                v_exit = prev_axis_v[a]
                v_entry = axis_v[a]
                if prev_larger:
                    v_exit *= smaller_factor
                if limited:
                    v_exit *= v_factor
                    v_entry *= v_factor
                if v_exit > v_entry:
                    jerk = (v_exit - v_entry) if (v_entry > 0.0 or v_exit < 0.0) else max(v_exit, -v_entry)
                else:
                    jerk = (v_entry - v_exit) if (v_entry < 0.0 or v_exit > 0.0) else max(-v_exit, v_entry)
                if jerk > table[row, C_JERK + a]:
                    v_factor *= table[row, C_JERK + a] / jerk
                    limited = True
            if limited:
                vmax_junction *= v_factor
            threshold = vmax_junction * 0.99
            if safe[i - 1] > threshold and s > threshold:
                vmax_junction = s
        v_allowable = _max_allowable_speed(-acc, s, d)
        entry[i] = min(vmax_junction, v_allowable)
        max_entry[i] = vmax_junction
        nominal_length[i] = v <= v_allowable
        move_d[i] = d
        accel[i] = acc
        cruise[i] = v
        safe[i] = s
        for a in range(4):
            prev_axis_v[a] = axis_v[a]
    # Reverse pass: entries reachable given the next move's entry (the end of a run may stop at its safe speed).
    for i in range(n - 2, -1, -1):
        if (flags[i + 1] & F_STOP_BEFORE) != 0:
            continue
        if entry[i] != max_entry[i]:
            if not nominal_length[i] and max_entry[i] > entry[i + 1]:
                entry[i] = min(max_entry[i], _max_allowable_speed(-accel[i], entry[i + 1], move_d[i]))
            else:
                entry[i] = max_entry[i]
    # Forward pass: entries reachable from the previous move's entry.
    for i in range(1, n):
        if (flags[i] & F_STOP_BEFORE) != 0:
            continue
        if not nominal_length[i - 1] and entry[i - 1] < entry[i]:
            entry[i] = min(entry[i], _max_allowable_speed(-accel[i - 1], entry[i - 1], move_d[i - 1]))
    for i in range(n):
        exit_v = entry[i + 1] if i + 1 < n and (flags[i + 1] & F_STOP_BEFORE) == 0 else safe[i]
        _trapezoid(i, entry[i], cruise[i], exit_v, accel[i], move_d[i], out)
    return out, move_d, accel


@kernel(bounded=True)
def _trapezoid(i: int, entry_v: float, cruise_v: float, exit_v: float, acc: float, distance: float,
               out: np.ndarray) -> None:
    entry_v = min(entry_v, cruise_v)
    exit_v = min(exit_v, cruise_v)
    accel_d = (cruise_v * cruise_v - entry_v * entry_v) / (2.0 * acc)
    decel_d = (cruise_v * cruise_v - exit_v * exit_v) / (2.0 * acc)
    plateau = distance - accel_d - decel_d
    if plateau < 0.0:
        accel_d = (2.0 * acc * distance - entry_v * entry_v + exit_v * exit_v) / (4.0 * acc)
        accel_d = min(max(accel_d, 0.0), distance)
        decel_d = distance - accel_d
        plateau = 0.0
        cruise_v = math.sqrt(max(entry_v * entry_v + 2.0 * acc * accel_d, 0.0))
    out[i, 0] = entry_v
    out[i, 1] = cruise_v
    out[i, 2] = exit_v
    out[i, 3] = 2.0 * accel_d / (entry_v + cruise_v) if accel_d > 0.0 and entry_v + cruise_v > 0.0 else 0.0
    out[i, 4] = plateau / cruise_v if plateau > 0.0 and cruise_v > 0.0 else 0.0
    out[i, 5] = 2.0 * decel_d / (exit_v + cruise_v) if decel_d > 0.0 and exit_v + cruise_v > 0.0 else 0.0
