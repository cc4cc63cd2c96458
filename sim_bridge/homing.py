"""How long homing one axis takes: the approach to the endstop, the back-off and the slow second touch."""

from __future__ import annotations

import math

from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile

BATCH_HOMING_FLUSH_S = 0.010
"""Klipper batch mode: flush bookkeeping per homed axis (0.002 s + 8 kinematic flush delays)."""


def trapezoid_time_s(distance_mm: float, speed_mm_s: float, accel_mm_s2: float) -> float:
    """Time of a lone move from rest to rest (trapezoidal, or triangular when too short to cruise)."""
    if distance_mm <= 0.0:
        return 0.0
    if distance_mm >= speed_mm_s * speed_mm_s / accel_mm_s2:
        return distance_mm / speed_mm_s + speed_mm_s / accel_mm_s2
    return 2.0 * math.sqrt(distance_mm / accel_mm_s2)


def homed_position_mm(profile: PrinterProfile, options: SimOptions, axis: int) -> float:
    """Where homing leaves ``axis``: on its endstop, or (kalico, :attr:`SimOptions.klipper_host`) backed off
    from it by the homing retract distance, towards the inside of the axis."""
    endstop = profile.position_endstop_mm[axis]
    if options.klipper_host != "kalico" or profile.homing_retract_mm <= 0.0:
        return endstop
    max_dir = endstop >= profile.position_max_mm[axis] - 1e-9 and endstop > profile.position_min_mm[axis]
    return endstop - profile.homing_retract_mm if max_dir else endstop + profile.homing_retract_mm


def homing_time_s(profile: PrinterProfile, options: SimOptions, axis: int, homed: bool, pos_mm: float,
                  max_accel_mm_s2: float | None = None, min_cruise_ratio: float = 0.0) -> float:
    """Time to home ``axis`` (0=X, 1=Y, 2=Z) from ``pos_mm`` (where the firmware believes it is).

    ``max_accel_mm_s2`` is the toolhead acceleration in force (Klipper: as ``M204``/``SET_VELOCITY_LIMIT``
    left it; its homing moves are ordinary toolhead moves, Z ones further limited by ``max_z_accel``);
    ``None`` means the profile's ``max_accel``. ``min_cruise_ratio`` is Klipper's ``minimum_cruise_ratio``
    in force: a lone move of length ``d`` cruises at most at ``sqrt(d * max_accel * (1 - ratio))`` (its
    smoothed acceleration, or the Z-limited one if lower), which slows the short back-offs at low accels."""
    if profile.firmware == "prunt" and profile.prunt.instant_homing:
        return 0.0
    speed = profile.homing_speed_mm_s[axis]
    toolhead_accel = profile.max_accel_mm_s2 if max_accel_mm_s2 is None else max_accel_mm_s2
    accel = min(profile.max_z_accel_mm_s2, toolhead_accel) if axis == 2 else toolhead_accel
    smoothed_accel = min(toolhead_accel * (1.0 - min_cruise_ratio), accel)

    def lone(distance_mm: float, speed_mm_s: float) -> float:
        return trapezoid_time_s(distance_mm, min(speed_mm_s, math.sqrt(distance_mm * smoothed_accel)), accel)

    endstop = profile.position_endstop_mm[axis]
    lo, hi = profile.position_min_mm[axis], profile.position_max_mm[axis]
    max_dir = endstop >= hi - 1e-9 and endstop > lo
    if options.klipper_batch_mode:
        # No endstop triggers: the first homing move runs its whole length (1.5 x the axis range
        # from the far side, as Klipper's homing starts from an assumed position beyond it).
        distance = 1.5 * ((endstop - lo) if max_dir else (hi - endstop))
    elif not homed:
        # The real carriage can be anywhere after power-on: assume the middle of the axis.
        distance = abs((lo + hi) / 2.0 - endstop)
    else:
        distance = abs(pos_mm - endstop)
    retract = profile.homing_retract_mm
    total = lone(distance, speed)
    if options.klipper_batch_mode:
        total += BATCH_HOMING_FLUSH_S
    if retract > 0.0:
        # Back off, then home again at half speed over twice the back-off distance.
        total += lone(retract, speed) + lone(2.0 * retract, speed / 2.0)
        if options.klipper_host == "kalico":
            # kalico backs off once more after the second touch (at the retract speed, the homing speed).
            total += lone(retract, speed)
    return total
