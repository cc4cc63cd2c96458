"""Velocity limits in force for a run of moves, and how the limit commands change them.

Klipper's ``SET_VELOCITY_LIMIT`` and ``M204`` (``S``, or the smaller of ``P`` and ``T``); Marlin's ``M201``,
``M203``, ``M204`` (``S``/``P``/``R``/``T``) and ``M205``. Each function changes the settings in place and
returns an error message (the command fails) or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim_bridge.gcode import Command
from sim_bridge.profiles import PrinterProfile

MAX_CRUISE_RATIO = 0.99
"""Highest ``MINIMUM_CRUISE_RATIO`` kept (1 would leave no time to accelerate)."""


@dataclass
class PlannerSettings:
    """Velocity limits in force for a run of moves (changed by SET_VELOCITY_LIMIT, M201/M203/M204/M205)."""

    max_velocity: float
    max_accel: float
    minimum_cruise_ratio: float
    square_corner_velocity: float
    print_accel: float
    retract_accel: float
    travel_accel: float
    max_feedrate: tuple[float, float, float, float]
    max_axis_accel: tuple[float, float, float, float]
    jerk: tuple[float, float, float, float]
    prunt: tuple[float, float, float, float]
    """Prunt's jerk, snap, crackle and chord error (``M205 J/S/C/D``; ``M205 A`` sets ``max_accel``)."""

    def row(self) -> tuple[float, ...]:
        return (self.max_velocity, self.max_accel, self.minimum_cruise_ratio, self.square_corner_velocity,
                self.print_accel, self.retract_accel, self.travel_accel, *self.max_feedrate,
                *self.max_axis_accel, *self.jerk, *self.prunt)


def default_settings(profile: PrinterProfile) -> PlannerSettings:
    """The limits a freshly started printer has."""
    return PlannerSettings(
        profile.max_velocity_mm_s, profile.max_accel_mm_s2, profile.minimum_cruise_ratio,
        profile.square_corner_velocity_mm_s, profile.print_accel_mm_s2, profile.retract_accel_mm_s2,
        profile.travel_accel_mm_s2, tuple(profile.max_feedrate_mm_s), tuple(profile.max_axis_accel_mm_s2),
        tuple(profile.jerk_mm_s), (profile.prunt.jerk_mm_s3, profile.prunt.snap_mm_s4,
                                   profile.prunt.crackle_mm_s5, profile.prunt.chord_error_mm))


def set_velocity_limit(s: PlannerSettings, velocity: float | None, accel: float | None, scv: float | None,
                       mcr: float | None, accel_to_decel: float | None) -> str | None:
    """Klipper's ``SET_VELOCITY_LIMIT`` (``ACCEL_TO_DECEL`` is read as the cruise ratio it implies)."""
    for key, value in (("VELOCITY", velocity), ("ACCEL", accel)):
        if value is not None and value <= 0.0:
            return f"SET_VELOCITY_LIMIT {key}={value:g}: must be above 0"
    if velocity is not None:
        s.max_velocity = velocity
    if accel is not None:
        s.max_accel = accel
    if scv is not None:
        s.square_corner_velocity = max(0.0, scv)
    if mcr is not None:
        s.minimum_cruise_ratio = min(MAX_CRUISE_RATIO, max(0.0, mcr))
    elif accel_to_decel is not None:
        s.minimum_cruise_ratio = min(MAX_CRUISE_RATIO, max(0.0, 1.0 - min(accel_to_decel, s.max_accel) / s.max_accel))
    return None


def m204(s: PlannerSettings, sv: float | None, pv: float | None, tv: float | None, rv: float | None,
         klipper: bool) -> bool:
    """``M204``; ``False`` when Klipper refuses it ("Invalid M204 command": no S, nor both P and T, or ≤ 0)."""
    if klipper:
        if sv is not None:
            accel = sv
        elif pv is not None and tv is not None:
            accel = min(pv, tv)
        else:
            return False
        if accel <= 0.0:
            return False
        s.max_accel = accel
        return True
    # The planner divides by the acceleration: a value that is not positive leaves the old one, as M201's do
    # (M204 S0 on a Marlin printer was a ZeroDivisionError in the compiled planner, a fuzz finding).
    sv, pv, rv, tv = (v if v is not None and v > 0.0 else None for v in (sv, pv, rv, tv))
    if sv is not None:
        s.print_accel = s.travel_accel = sv
    if pv is not None:
        s.print_accel = pv
    if rv is not None:
        s.retract_accel = rv
    if tv is not None:
        s.travel_accel = tv
    return True


def per_axis(current: tuple[float, float, float, float], given: dict[str, float],
             zero_ok: bool = False) -> tuple[float, float, float, float]:
    """Marlin's ``M201``/``M203`` (``zero_ok``: ``M205`` jerk) X/Y/Z/E values; others stay."""
    values = list(current)
    for i, letter in enumerate("XYZE"):
        v = given.get(letter)
        if v is not None and (v > 0.0 or (zero_ok and v == 0.0)):
            values[i] = v
    return (values[0], values[1], values[2], values[3])


def m205_jerk(current: tuple[float, float, float, float], given: dict[str, float]) -> tuple[float, float, float, float]:
    """Marlin's ``M205`` jerk: ``X`` alone sets Y too."""
    jerk = per_axis(current, given, zero_ok=True)
    if given.get("X") is not None and given.get("Y") is None:
        return (jerk[0], jerk[0], jerk[2], jerk[3])
    return jerk


PRUNT_M205 = "AJSCD"
"""The ``M205`` letters that change Prunt's planner limits: acceleration, jerk, snap, crackle, chord error."""


def m205(s: PlannerSettings, cmd: Command, prunt: bool) -> str | None:
    """``M205``: Marlin's jerk, or (``prunt``) one of Prunt's limits; an error message for a Prunt limit of
    0 or less (its planner stalls: the next move never runs)."""
    if not prunt:
        s.jerk = m205_jerk(s.jerk, axis_words(cmd))
        return None
    for letter in PRUNT_M205:
        value = cmd.get(letter)
        if value is None:
            continue
        if value <= 0.0 and letter != "D":
            return f"M205 {letter}{value:g}: a limit of 0 stalls Prunt's planner (the next move never runs)"
        if letter == "A":
            s.max_accel = value
        else:
            k = PRUNT_M205.index(letter) - 1
            s.prunt = (*s.prunt[:k], max(value, 0.0), *s.prunt[k + 1:])
        break  # Prunt takes one limit per line, the first given
    return None


def axis_words(cmd: Command) -> dict[str, float]:
    """The X, Y, Z and E values a limits command (M201, M203, M205) gives."""
    return {letter: v for letter in "XYZE" if (v := cmd.get(letter)) is not None}
