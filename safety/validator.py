"""Static validation of a G-code program against a printer profile, stricter than the firmware.

:func:`validate` reads a program line by line, keeps the machine state a firmware keeps (absolute and
relative modes, G92 and ``SET_GCODE_OFFSET`` offsets, saved G-code states, homing, heater targets and
whether the hotend was waited for, speed and flow factors) and checks every command. Unlike the firmware
(and the simulator's interpreter) it does not stop at the first error: it lists every finding, each with
its line, the command as written, the rule, the limit and the value. A program with no finding is allowed.

Limits come from the :class:`~sim_bridge.profiles.PrinterProfile` (Klipper's ``position_min/max``,
``min_extrude_temp``, ``max_extrude_cross_section``, ``max_extrude_only_distance``, heater
``min_temp/max_temp``, ``max_velocity``/``max_accel``) and from a :class:`SafetyPolicy` (allow-list, tighter
caps, bed surface, factor windows). The rules, and why each exists, are in ``docs/safety.md``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safety.disguise import line_findings
from safety.findings import FindingList, Verdict, Violation
from safety.heater_checks import HeaterChecks, num
from safety.policy import SafetyPolicy, load_policy
from safety.prunt_checks import PruntChecks
from safety.rules import code_finding
from safety.tuning import TuningState, validate_tuning
from sim_bridge import failures as fail
from sim_bridge.arcs import arc_center_from_radius, arc_sweep
from sim_bridge.commands import (
    COMMANDS,
    FORBIDDEN_COMMANDS,
    KLIPPER,
    MARLIN,
    macro_temperatures_c,
    motors_off_axes,
    runs_on,
)
from sim_bridge.gcode import Command, GcodeError, GcodeReader, parse_line
from sim_bridge.machine import TrackedState, gcode_offset_after
from sim_bridge.profiles import MacroProfile, PrinterProfile
from sim_bridge.prunt_dialect import AXIS_NAMES, OUT_OF_BOUNDS, ada_float, limits_of, unhomed_error

__all__ = ["FORBIDDEN_COMMANDS", "SafetyPolicy", "TuningState", "Verdict", "Violation", "load_policy",
           "validate", "validate_tuning"]

MAX_PROGRAM_BYTES = 256 * 1024 * 1024
"""Largest program accepted (a 12-hour print at 0.1 mm layers is about 50 MB)."""
POSITION_EPS_MM = 1e-6
"""Slack on range checks for slicers' rounding (Klipper has none; 1 µm is far below a step)."""
_AXES = "XYZ"
_MOVE_LETTERS = frozenset("XYZEF")
_ARC_LETTERS = frozenset("XYZEFIJKRP")


@dataclass
class _Snapshot:
    """What ``SAVE_GCODE_STATE`` keeps (as Klipper's gcode_move does)."""

    absolute_xyz: bool
    absolute_e: bool
    offset: list[float]
    gcode_offset: list[float]
    pos: list[float]
    e_program: float
    """The program's E when saved: ``RESTORE_GCODE_STATE`` brings it back (Klipper keeps E continuous)."""
    feed_mm_s: float | None
    speed_percent: float
    flow_percent: float


@dataclass
class _Machine:
    """The firmware state the validator tracks; positions are machine coordinates."""

    pos: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Machine minus program coordinate per axis (G92 and G-code offsets together)."""
    gcode_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    """``SET_GCODE_OFFSET`` in force, X Y Z E."""
    e_program: float = 0.0
    homed: list[bool] = field(default_factory=lambda: [False, False, False])
    absolute_xyz: bool = True
    absolute_e: bool = True
    feed_mm_s: float | None = None
    speed_percent: float = 100.0
    flow_percent: float = 100.0
    hotend_target_c: float = 0.0
    bed_target_c: float = 0.0
    hotend_ready: bool = False
    """Waited for at a target at or above ``min_extrude_temp``: extrusion is allowed."""
    hotend_hot: bool = False
    """Ready, or turned down from ready (still hot): retraction is allowed, extrusion is not."""
    saved: dict[str, _Snapshot] = field(default_factory=dict)


class _Checker(HeaterChecks, PruntChecks):
    """Walks one program: tracks the machine and reports every finding."""

    def __init__(self, profile: PrinterProfile, policy: SafetyPolicy, findings: FindingList) -> None:
        self.profile = profile
        self.policy = policy
        self.findings = findings
        self.warnings = FindingList(policy.max_findings_per_rule)
        self.m = _Machine()
        self.klipper = profile.firmware == "klipper"
        self.prunt = limits_of(profile) if profile.firmware == "prunt" else None
        self.lo = list(profile.position_min_mm)
        self.hi = list(profile.position_max_mm)
        self.max_e_ratio = profile.max_cross_section_mm2 / profile.filament_area_mm2
        self.feed_cap_mm_s = policy.max_feed_mm_s or profile.max_velocity_mm_s
        self.allow = frozenset(policy.allow_commands)
        self.firmware = KLIPPER if self.klipper else MARLIN
        self._handlers: dict[str, Callable[[Command], None]] = {
            code: getattr(self, spec.check) for code, spec in COMMANDS.items() if spec.check}
        self.raw = ""
        self.line = 0

    # -- reporting -------------------------------------------------------------------------------------
    def add(self, rule: str, limit: str, value: str, message: str) -> None:
        self.findings.add(self.line, self.raw, rule, limit, value, message)

    # -- one command -----------------------------------------------------------------------------------
    def check(self, cmd: Command) -> None:
        code = cmd.code
        macro = self.profile.macro(code) if cmd.is_extended else None
        found = code_finding(code, self.allow, macro is not None)
        if found is not None:
            self.add(*found)
            return
        handler = self._handlers.get(code)
        if handler is not None:
            handler(cmd)
        elif macro is not None:
            self._macro(cmd, macro)

    # -- motion ----------------------------------------------------------------------------------------
    def _feed(self, cmd: Command) -> None:
        f = cmd.get("F")
        if f is None:
            return
        if f <= 0.0:
            self.add(fail.FEED_RATE, "F > 0", f"F={num(f)}", f"Invalid speed F{num(f)}: must be above 0")
            return
        speed = f / 60.0
        self.m.feed_mm_s = speed
        if speed > self.feed_cap_mm_s + 1e-9:
            self.add(fail.FEED_RATE, f"F <= {num(self.feed_cap_mm_s * 60.0)} mm/min "
                     f"({num(self.feed_cap_mm_s)} mm/s)", f"{num(speed)} mm/s",
                     f"feed rate {num(speed)} mm/s above the printer's {num(self.feed_cap_mm_s)} mm/s")

    def _unknown_letters(self, cmd: Command, allowed: frozenset[str]) -> bool:
        extra = sorted(set(cmd.params) - allowed)
        if extra or cmd.args:
            what = ", ".join(extra) or ", ".join(cmd.args)
            self.add(fail.INVALID_COMMAND, f"{cmd.code} takes {' '.join(sorted(allowed))}", what,
                     f"{cmd.code} with unexpected word(s) {what}: an extra axis or a typo moves something "
                     "the validator does not check")
            return True
        return False

    def _targets(self, cmd: Command) -> tuple[list[float], list[bool]]:
        """New machine position and which axes were written."""
        m = self.m
        new = list(m.pos)
        given = [False, False, False]
        for i, letter in enumerate(_AXES):
            v = cmd.get(letter)
            if v is None:
                continue
            given[i] = True
            new[i] = v + m.offset[i] if m.absolute_xyz else m.pos[i] + v
        return new, given

    def _extrusion(self, cmd: Command) -> float:
        """Filament delta of the command (after the flow factor), updating the program's E."""
        m = self.m
        e = cmd.get("E")
        if e is None:
            return 0.0
        if m.absolute_e and m.absolute_xyz:
            de = e - m.e_program
            m.e_program = e
        else:
            de = e
            m.e_program += e
        return de * m.flow_percent / 100.0

    def _move(self, cmd: Command) -> None:
        if self._unknown_letters(cmd, _MOVE_LETTERS):
            self._follow(cmd)
            return
        self._feed(cmd)
        new, _ = self._targets(cmd)
        de = self._extrusion(cmd)
        delta = [n - p for n, p in zip(new, self.m.pos, strict=True)]
        self._check_position(new, delta, de)
        if de:
            xy = math.hypot(delta[0], delta[1])
            self._check_extrusion(de, xy, math.sqrt(xy * xy + delta[2] * delta[2]))
        self.m.pos = new

    def _follow(self, cmd: Command) -> None:
        """Track a move already blocked, unchecked, so later lines are judged from where the toolhead is."""
        self.m.pos = self._targets(cmd)[0]
        self._extrusion(cmd)

    def _arc(self, cmd: Command) -> None:
        if self._unknown_letters(cmd, _ARC_LETTERS):
            self._follow(cmd)
            return
        self._feed(cmd)
        m = self.m
        new, _ = self._targets(cmd)
        i_off, j_off, radius_arg = cmd.get("I"), cmd.get("J"), cmd.get("R")
        x0, y0, x1, y1 = m.pos[0], m.pos[1], new[0], new[1]
        clockwise = cmd.code == "G2"
        if i_off is None and j_off is None:
            if radius_arg is None:
                self.add(fail.INVALID_COMMAND, f"{cmd.code} needs I/J or R", "none",
                         f"{cmd.code} without I, J or R has no centre")
                return
            cx, cy = arc_center_from_radius(x0, y0, x1, y1, radius_arg, clockwise)
        else:
            cx, cy = x0 + (i_off or 0.0), y0 + (j_off or 0.0)
        radius, a0, sweep = arc_sweep(x0, y0, x1, y1, cx, cy, clockwise)
        de = self._extrusion(cmd)
        delta = [new[0] - x0, new[1] - y0, new[2] - m.pos[2]]
        self._check_position(new, delta, de)
        self._check_arc_extent(cx, cy, radius, a0, sweep)
        if de:
            planar = abs(sweep) * radius
            self._check_extrusion(de, planar, math.hypot(planar, delta[2]))
        m.pos = new

    def _check_arc_extent(self, cx: float, cy: float, radius: float, a0: float, sweep: float) -> None:
        """Out-of-range for the axis-aligned extremes the arc passes between its ends."""
        for k in range(-8, 9):
            angle = k * math.pi / 2.0
            if not (0.0 < angle - a0 < sweep or sweep < angle - a0 < 0.0):
                continue
            point = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
            for i in (0, 1):
                v = point[i]
                if self.m.homed[i] and (v < self.lo[i] - POSITION_EPS_MM or v > self.hi[i] + POSITION_EPS_MM):
                    self.add(fail.MOVE_OUT_OF_RANGE, f"{_AXES[i]} in [{num(self.lo[i])}, {num(self.hi[i])}] mm",
                             f"{_AXES[i]}={num(v)} mm", f"Move out of range: the arc bulges to {_AXES[i]} "
                             f"{num(v)} mm, outside [{num(self.lo[i])}, {num(self.hi[i])}]")
                    return

    def _check_position(self, new: list[float], delta: list[float], de: float) -> None:
        m = self.m
        unhomed = [_AXES[i] for i in range(3) if delta[i] != 0.0 and not m.homed[i]]
        prunt_unhomed = unhomed_error(m.homed) if self.prunt is not None and any(delta) else None
        if prunt_unhomed is not None:
            # Prunt refuses any move until every axis is homed, not just the moving ones.
            self.add(fail.MUST_HOME_FIRST, "home X, Y and Z before any move", "not homed",
                     f"{prunt_unhomed.message} (Prunt skips the rest of the file)")
        elif unhomed and self.prunt is None:
            self.add(fail.MUST_HOME_FIRST, f"home {''.join(unhomed)} before moving it", "not homed",
                     f"Must home axis first: {''.join(unhomed)} moves before it was homed")
        z_low = False
        if m.homed[2] and delta[2] != 0.0 and new[2] < self.policy.min_z_mm - POSITION_EPS_MM:
            z_low = True
            self.add(fail.Z_INTO_BED, f"Z >= {num(self.policy.min_z_mm)} mm (bed surface)", f"Z={num(new[2])} mm",
                     f"the nozzle would go {num(self.policy.min_z_mm - new[2])} mm into the bed")
        elif (m.homed[2] and de > 0.0 and (delta[0] or delta[1])
              and new[2] <= self.policy.min_z_mm + POSITION_EPS_MM):
            z_low = True
            self.add(fail.Z_INTO_BED, f"Z > {num(self.policy.min_z_mm)} mm while extruding",
                     f"Z={num(new[2])} mm", "extrudes with the nozzle on the bed surface")
        for i in range(3):
            if delta[i] == 0.0 or not m.homed[i] or (i == 2 and z_low):
                continue
            if new[i] < self.lo[i] - POSITION_EPS_MM or new[i] > self.hi[i] + POSITION_EPS_MM:
                said = ("Move out of range" if self.prunt is None else
                        OUT_OF_BOUNDS.format(axis=AXIS_NAMES[i], value=ada_float(new[i])).rstrip("."))
                self.add(fail.MOVE_OUT_OF_RANGE, f"{_AXES[i]} in [{num(self.lo[i])}, {num(self.hi[i])}] mm",
                         f"{_AXES[i]}={num(new[i])} mm",
                         f"{said}: {_AXES[i]} {num(new[i])} mm is outside "
                         f"[{num(self.lo[i])}, {num(self.hi[i])}] (machine coordinates, after offsets)")

    def _check_extrusion(self, de: float, xy_mm: float, move_mm: float) -> None:
        m, prof = self.m, self.profile
        if de > 0.0 and not m.hotend_ready:
            self.add(fail.COLD_EXTRUSION, f"hotend waited for at >= {num(prof.min_extrude_temp_c)} C",
                     f"target {num(m.hotend_target_c)} C" + ("" if m.hotend_target_c < prof.min_extrude_temp_c
                                                              else ", not waited for"),
                     "Extrude below minimum temp: extrusion before the hotend was heated to "
                     f"min_extrude_temp ({num(prof.min_extrude_temp_c)} C) and waited for (M109)")
        elif de < 0.0 and not m.hotend_hot:
            self.add(fail.COLD_EXTRUSION, f"hotend hot (>= {num(prof.min_extrude_temp_c)} C)",
                     f"target {num(m.hotend_target_c)} C",
                     "Extrude below minimum temp: retraction while the hotend was never heated")
        if xy_mm == 0.0 or de < 0.0:
            limit = prof.max_extrude_only_distance_mm
            if abs(de) > limit + POSITION_EPS_MM:
                self.add(fail.EXTRUDE_ONLY_TOO_LONG, f"|E| <= {num(limit)} mm (max_extrude_only_distance)",
                         f"E={num(de)} mm", f"Extrude only move too long ({de:.3f}mm vs {limit:.3f}mm)")
            return
        ratio = de / move_mm
        if ratio > self.max_e_ratio and de > prof.nozzle_diameter_mm * self.max_e_ratio:
            area = ratio * prof.filament_area_mm2
            limit_area = prof.max_cross_section_mm2
            self.add(fail.EXTRUSION_TOO_LARGE, f"cross-section <= {limit_area:.3f} mm^2 (max_extrude_cross_section)",
                     f"{area:.3f} mm^2", f"Move exceeds maximum extrusion ({area:.3f}mm^2 vs {limit_area:.3f}mm^2)")

    # -- modes, offsets, homing ------------------------------------------------------------------------
    def _g28(self, cmd: Command) -> None:
        m = self.m
        axes = [i for i, letter in enumerate(_AXES) if letter in cmd.params] or [0, 1, 2]
        self._home(axes)
        for i in axes:
            # Homing drops G92 offsets; the G-code offset stays (Klipper's homing_position).
            m.offset[i] = m.gcode_offset[i]

    def _home(self, axes: list[int]) -> None:
        for i in axes:
            self.m.pos[i] = self.profile.position_endstop_mm[i]
            self.m.homed[i] = True

    def _g92(self, cmd: Command) -> None:
        m = self.m
        given = False
        for i, letter in enumerate(_AXES):
            v = cmd.get(letter)
            if v is not None:
                m.offset[i] = m.pos[i] - v
                given = True
        e = cmd.get("E")
        if e is not None:
            m.e_program = e
            given = True
        if not given:
            m.offset = list(m.pos)
            m.e_program = 0.0

    def _motors_off(self, cmd: Command) -> None:
        m = self.m
        for i in motors_off_axes(cmd.params.keys(), self.klipper):
            m.homed[i] = False

    def _set_mode(self, cmd: Command) -> None:
        m = self.m
        if cmd.code in ("G90", "G91"):
            m.absolute_xyz = cmd.code == "G90"
        else:
            m.absolute_e = cmd.code == "M82"

    def _gcode_offset(self, cmd: Command) -> None:
        m = self.m
        cap = self.policy.max_gcode_offset_mm
        offset = gcode_offset_after(m.gcode_offset, lambda key: self._arg(cmd, key))
        shift = [0.0, 0.0, 0.0, 0.0]
        for i, letter in enumerate("XYZE"):
            if self._arg(cmd, letter) is None and self._arg(cmd, f"{letter}_ADJUST") is None:
                continue
            value = offset[i]
            if abs(value) > cap + POSITION_EPS_MM:
                self.add(fail.GCODE_OFFSET, f"|{letter} offset| <= {num(cap)} mm", f"{letter}={num(value)} mm",
                         f"G-code offset {letter}={num(value)} mm is larger than babystepping needs; "
                         "it shifts the whole print")
            shift[i] = value - m.gcode_offset[i]
            m.gcode_offset[i] = value
            if i < 3:
                m.offset[i] += shift[i]
            else:
                m.e_program -= shift[i]
        if self._arg(cmd, "MOVE") and any(shift):
            # MOVE=1 applies the offset at once: the toolhead (and filament) moves, the program's position stays.
            new = [p + d for p, d in zip(m.pos, shift[:3], strict=True)]
            self._check_position(new, shift[:3], 0.0)
            m.pos = new
            m.e_program += shift[3]
            if shift[3]:
                self._check_extrusion(shift[3], 0.0, 0.0)

    def _save_state(self, cmd: Command) -> None:
        m = self.m
        name = cmd.args.get("NAME", "default").upper()
        m.saved[name] = _Snapshot(m.absolute_xyz, m.absolute_e, list(m.offset), list(m.gcode_offset), list(m.pos),
                                  m.e_program, m.feed_mm_s, m.speed_percent, m.flow_percent)

    def _restore_state(self, cmd: Command) -> None:
        m = self.m
        name = cmd.args.get("NAME", "default").upper()
        snap = m.saved.get(name)
        if snap is None:
            self.add(fail.INVALID_COMMAND, "a state saved by SAVE_GCODE_STATE", f"NAME={name}",
                     f"Unknown g-code state: {name}")
            return
        m.absolute_xyz, m.absolute_e = snap.absolute_xyz, snap.absolute_e
        m.offset, m.gcode_offset = list(snap.offset), list(snap.gcode_offset)
        m.feed_mm_s, m.speed_percent, m.flow_percent = snap.feed_mm_s, snap.speed_percent, snap.flow_percent
        m.e_program = snap.e_program
        if self._arg(cmd, "MOVE"):
            delta = [s - p for s, p in zip(snap.pos, m.pos, strict=True)]
            self._check_position(list(snap.pos), delta, 0.0)
            m.pos = list(snap.pos)

    def _leveling(self, cmd: Command) -> None:
        if not all(self.m.homed):
            self.add(fail.MUST_HOME_FIRST, "home X, Y and Z before levelling", "not homed",
                     f"{cmd.code}: Must home axis first")

    def _macro(self, cmd: Command, macro: MacroProfile) -> None:
        hotend, bed = macro_temperatures_c(cmd.args, macro)
        if bed:
            self._set_target("heater_bed", bed, macro.waits_for_temperature)
        if hotend:
            self._set_target("extruder", hotend, macro.waits_for_temperature)
        if macro.homes:
            axes = ["XYZ".index(a) for a in macro.homes]
            self._home(axes)
            for i in axes:
                self.m.offset[i] = self.m.gcode_offset[i]
        if macro.park_position_mm and all(self.m.homed[:2]):
            self.m.pos[0], self.m.pos[1] = macro.park_position_mm[0], macro.park_position_mm[1]
        if macro.ends_print:
            self._turn_off_heaters(cmd)
            self.m.homed = [False, False, False]

    # -- limits and factors ----------------------------------------------------------------------------
    def _factor(self, cmd: Command) -> None:
        value = cmd.get("S")
        if value is None:
            return
        if cmd.code == "M221":
            lo, hi, what = self.policy.flow_percent_min, self.policy.flow_percent_max, "flow"
        else:
            lo, hi, what = self.policy.speed_percent_min, self.policy.speed_percent_max, "speed"
        if not lo <= value <= hi:
            self.add(fail.FACTOR_RANGE, f"{what} factor in [{num(lo)}, {num(hi)}] %", f"{num(value)} %",
                     f"{cmd.code} S{num(value)}: {what} factor outside [{num(lo)}, {num(hi)}] %")
            return
        if cmd.code == "M221":
            self.m.flow_percent = value
        else:
            self.m.speed_percent = value

    def _limit(self, what: str, value: float | None, cap: float, unit: str, rule: str) -> None:
        if value is not None and value > cap + 1e-9:
            self.add(rule, f"{what} <= {num(cap)} {unit} (printer profile)", f"{num(value)} {unit}",
                     f"{what} {num(value)} {unit} above the printer's {num(cap)} {unit}")

    def _velocity_limit(self, cmd: Command) -> None:
        prof = self.profile
        self._limit("VELOCITY", self._arg(cmd, "VELOCITY"), self.feed_cap_mm_s, "mm/s", fail.FEED_RATE)
        self._limit("ACCEL", self._arg(cmd, "ACCEL"), prof.max_accel_mm_s2, "mm/s^2", fail.ACCELERATION)

    def _m204(self, cmd: Command) -> None:
        prof = self.profile
        cap = max(prof.max_accel_mm_s2, prof.print_accel_mm_s2, prof.travel_accel_mm_s2, prof.retract_accel_mm_s2)
        if self.prunt is not None:
            return  # Prunt ignores M204 (a warning says so): the configured acceleration stays
        # Klipper reads S, or P and T (it takes the smaller); Marlin also R (retraction).
        for letter in "SPT" if self.klipper else "SPTR":
            self._limit(f"M204 {letter}", cmd.get(letter), cap, "mm/s^2", fail.ACCELERATION)

    def _per_axis(self, cmd: Command) -> None:
        if self.prunt is not None:
            self._prunt_m205(cmd)  # M201/M203 never get here: Prunt refuses them as unknown
            return
        if not runs_on(cmd.code, self.firmware):
            return  # Klipper has no M201/M203/M205: it answers "Unknown command" and changes nothing
        prof = self.profile
        table = {"M201": (prof.max_axis_accel_mm_s2, "mm/s^2", fail.ACCELERATION),
                 "M203": (prof.max_feedrate_mm_s, "mm/s", fail.FEED_RATE),
                 "M205": (prof.jerk_mm_s, "mm/s", fail.ACCELERATION)}
        caps, unit, rule = table[cmd.code]
        for letter, cap in zip("XYZE", caps, strict=True):
            self._limit(f"{cmd.code} {letter}", cmd.get(letter), cap, unit, rule)

    def _retract(self, cmd: Command) -> None:
        # Firmware retraction moves filament by a configured length: it needs a hot (G10) or ready (G11) hotend.
        self._check_extrusion(-1e-9 if cmd.code == "G10" else 1e-9, 0.0, 0.0)

    def _arg(self, cmd: Command, key: str) -> float | None:
        text = cmd.args.get(key)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.add(fail.INVALID_COMMAND, f"{key}= a number", f"{key}={text[:40]}",
                     f"{cmd.code} {key}={text[:40]!r}: not a number")
            return None
        return value


def _read_source(source: bytes | str | os.PathLike[str], name: str | None) -> tuple[bytes, str]:
    """The exact bytes to validate and a name for messages."""
    if isinstance(source, bytes):
        return source, name or "<bytes>"
    if isinstance(source, str):
        return source.encode("utf-8"), name or "<string>"
    path = Path(source)
    with path.open("rb") as fh:
        data = fh.read(MAX_PROGRAM_BYTES + 1)
    return data, name or str(path)


def validate(source: bytes | str | os.PathLike[str], profile: PrinterProfile, policy: SafetyPolicy | None = None,
             *, name: str | None = None, trace: list[TrackedState] | None = None) -> Verdict:
    """Validate a program: ``str`` is G-code text, ``bytes`` file contents, a path-like a file to read.

    Raises ``OSError`` when a file cannot be read; everything about the contents is a finding. With ``trace``,
    the machine state the validator tracks is appended to it after each command (for differential tests).

    >>> from sim_bridge.printers import load_printer
    >>> v = validate("G28\\nM302\\nG1 X500", load_printer("ender3-klipper"))
    >>> v.verdict, [(f.line, f.rule) for f in v.violations]
    ('block', [(2, 'forbidden_command'), (3, 'move_out_of_range')])
    """
    policy = policy or SafetyPolicy()
    data, label = _read_source(source, name)
    digest = hashlib.sha256(data).hexdigest()
    findings = FindingList(policy.max_findings_per_rule)
    if len(data) > MAX_PROGRAM_BYTES:
        findings.add(0, "", fail.UNREADABLE, f"at most {MAX_PROGRAM_BYTES} bytes", f"more than {MAX_PROGRAM_BYTES}",
                     "the program is too large to validate")
        return Verdict(findings.result(), 0, digest)
    checker = _Checker(profile, policy, findings)
    # A Prunt printer splits lines at LF only (a CRLF line keeps its CR, which Prunt refuses).
    reader = GcodeReader(data, name=label, lf_only=checker.prunt is not None)
    warnings = reader.warnings
    lines = 0
    try:
        for line_no, raw in reader.numbered_lines():
            lines = line_no
            checker.raw, checker.line = raw, line_no
            if checker.prunt is not None and not checker.prunt_line(raw):
                continue  # Prunt does not run the line: its refusal is the finding
            before = len(warnings)
            cmd = parse_line(raw, line_no, label, warnings, keep_comments=False)
            checksum_bad = any("checksum mismatch" in w.message for w in warnings[before:])
            for rule, limit, value, message in line_findings(raw, cmd, checksum_bad):
                checker.add(rule, limit, value, message)
            if cmd is not None:
                checker.check(cmd)
                if trace is not None:
                    m = checker.m
                    trace.append(TrackedState(line_no, (m.pos[0], m.pos[1], m.pos[2]),
                                              (m.homed[0], m.homed[1], m.homed[2]), m.hotend_target_c,
                                              m.bed_target_c))
    except GcodeError as exc:
        findings.add(exc.line, "", fail.UNREADABLE, "text G-code (no NUL bytes, lines under 256 KiB)",
                     "binary or over-long line", f"not readable as G-code: {exc.reason}")
        lines = max(lines, exc.line)
    return Verdict(findings.result(), lines, digest, checker.warnings.result())
