"""A Klipper ``printer.cfg`` written from a layerloop :class:`~sim_bridge.profiles.PrinterProfile`, for the
Linux-process MCU of the derived data dictionary (:mod:`sim_bridge.klippy.dictionary`).

What the profile says goes in verbatim: kinematics and motion limits (``[printer]``), each axis's range,
endstop position, homing speed and retract (``[stepper_x/y/z]``), the extruder's limits and both heaters
with their PID gains and ``verify_heater`` settings. Reading the file back with
:func:`sim_bridge.klipper_cfg.printer_from_klipper_cfg` gives back those values (the thermal constants and
melt capacity a printer.cfg cannot hold excepted).

What the profile does not say is chosen to be valid and neutral: pins are the Linux-process MCU's
(``gpiochip0/gpioN``, thermistors on ``analogN``: that MCU has ADC channels, so an NTC thermistor
``sensor_type`` is valid on it), steps per millimetre are common values (they change step rates, not the
print time), ``[fan]`` makes M106/M107 known, ``[gcode_arcs]`` makes G2/G3 known (arcs appear in the wild
files), ``[firmware_retraction]`` makes G10/G11 known (Klipper's defaults: no retraction), and the sections
Moonraker needs to run prints: ``[virtual_sdcard]`` (its ``path`` is Moonraker's G-code folder),
``[pause_resume]``, ``[display_status]``, plus ``[exclude_object]``.

The profile's declared macros become ``[gcode_macro NAME]`` sections that do what the profile says, in the
fewest commands that the macro reader (:mod:`sim_bridge.klipper_macros`) recognises again:

- ``homes``: ``G28`` (XYZ), ``G28 X Y`` or ``G28 Z``;
- heater targets: ``M140``/``M104`` with ``S`` from the first argument given
  (``params.BED|default(params.BED_TEMP|default(60))``), then ``M190``/``M109`` when the macro waits;
  nothing when neither an argument nor a default gives a target;
- ``purges`` (after homing all axes): a 100 mm purge line along Y, 5 mm in from the bed's front-left corner,
  between ``SAVE_GCODE_STATE``/``RESTORE_GCODE_STATE`` so the print's modes are kept;
- ``duration_s``: a dwell (``G4``) of that long (what probing and purging cost on the real printer);
- ``ends_print``: ``TURN_OFF_HEATERS``, ``M107``, a park move to ``park_position_mm`` (absolute), ``M84``.

Levelling is not written (the Linux-process MCU has no probe): a macro that ``levels`` says so in a
comment only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sim_bridge.config import ConfigError, check_ranges, ranged
from sim_bridge.printers import load_printer
from sim_bridge.profiles import HeaterProfile, MacroProfile, PrinterProfile

THERMISTOR = "EPCOS 100K B57560G104F"
"""Sensor type of both heaters: a common 100 k NTC thermistor, read through an ADC channel."""
MCU_SERIAL = "/tmp/klipper_host_mcu"
"""The Linux-process MCU's usual socket: never opened when Klippy runs with ``-o`` (file output); the virtual
MCU (:mod:`sim_bridge.klippy.virtual_mcu`) gets its own terminal (:attr:`PrinterCfgOptions.mcu_serial`)."""
MCU_BAUD = 250000
"""``[mcu] baud`` for the virtual MCU's terminal (a pseudo-terminal ignores it; Klippy opens it as a UART)."""
PURGE_LENGTH_MM = 100.0
"""Length of the purge line a purging macro draws."""
PURGE_FILAMENT_MM = 10.0
"""Filament it pushes (0.25 mm² cross-section over 100 mm with 1.75 mm filament: well under any limit)."""
PURGE_INSET_MM = 5.0
"""Distance of the purge line from the bed's front-left corner."""


@dataclass(frozen=True)
class PrinterCfgOptions:
    """What the generated printer.cfg needs beyond the profile."""

    sdcard_path: str = "~/printer_data/gcodes"
    """``[virtual_sdcard] path``: the folder Moonraker uploads G-code into (not opened in batch mode)."""
    mcu_serial: str = MCU_SERIAL
    """``[mcu] serial``: the MCU's serial port (the virtual MCU's pseudo-terminal link)."""
    mcu_baud: int | None = ranged(None, 2400, 4_000_000)
    """``[mcu] baud``; None writes none (Klippy's default for a serial port, or a pipe for its own MCU)."""
    arc_resolution_mm: float = ranged(1.0, 0.01, 10.0)
    """``[gcode_arcs] resolution``: length of the chords G2/G3 are split into (Klipper's default 1 mm)."""
    microsteps: int = ranged(16, 1, 256)
    """Microsteps of every stepper (changes step rates only)."""
    rotation_distance_xy_mm: float = ranged(40.0, 0.1, 1000.0)
    """Travel per motor turn of X and Y (a 20-tooth GT2 pulley)."""
    rotation_distance_z_mm: float = ranged(8.0, 0.1, 1000.0)
    """Travel per motor turn of Z (a T8 lead screw)."""
    rotation_distance_e_mm: float = ranged(33.5, 0.1, 1000.0)
    """Filament per motor turn of the extruder (a Creality-style gear)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.sdcard_path.strip():
            raise ConfigError("sdcard_path = '': needs a folder")
        if not self.mcu_serial.strip() or any(c.isspace() for c in self.mcu_serial):
            raise ConfigError(f"mcu_serial = {self.mcu_serial!r}: needs a path without spaces")


def _num(value: float) -> str:
    """A number as Klipper reads it back exactly (``repr`` of the float, ``300.0`` → ``300.0``)."""
    return repr(float(value))


class _Pins:
    """Hands out the Linux-process MCU's GPIO lines and ADC channels in order."""

    def __init__(self) -> None:
        self._gpio = 0
        self._analog = 0

    def gpio(self) -> str:
        self._gpio += 1
        return f"gpiochip0/gpio{self._gpio}"

    def analog(self) -> str:
        name = f"analog{self._analog}"
        self._analog += 1
        return name


def _section(name: str, options: list[tuple[str, str]], comment: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    lines.append(f"[{name}]")
    lines.extend(f"{key}: {value}" for key, value in options)
    return "\n".join(lines)


def _stepper(axis: int, profile: PrinterProfile, options: PrinterCfgOptions, pins: _Pins) -> list[tuple[str, str]]:
    rotation = options.rotation_distance_z_mm if axis == 2 else options.rotation_distance_xy_mm
    out = [("step_pin", pins.gpio()), ("dir_pin", pins.gpio()), ("enable_pin", "!" + pins.gpio()),
           ("microsteps", str(options.microsteps)), ("rotation_distance", _num(rotation)),
           ("endstop_pin", "^" + pins.gpio()),
           ("position_endstop", _num(profile.position_endstop_mm[axis])),
           ("position_min", _num(profile.position_min_mm[axis])),
           ("position_max", _num(profile.position_max_mm[axis])),
           ("homing_speed", _num(profile.homing_speed_mm_s[axis])),
           ("homing_retract_dist", _num(profile.homing_retract_mm))]
    # Written out, so an endstop inside the range (Klipper infers only the outer quarters) homes too:
    # towards max when the endstop is in the upper half (CoreXY machines homing X/Y to max).
    span = profile.position_max_mm[axis] - profile.position_min_mm[axis]
    upper = profile.position_endstop_mm[axis] > profile.position_min_mm[axis] + span / 2
    out.append(("homing_positive_dir", "true" if upper else "false"))
    return out


def _heater(heater: HeaterProfile, pins: _Pins) -> list[tuple[str, str]]:
    return [("heater_pin", pins.gpio()), ("sensor_type", THERMISTOR), ("sensor_pin", pins.analog()),
            ("control", "pid"), ("pid_Kp", _num(heater.pid_kp)), ("pid_Ki", _num(heater.pid_ki)),
            ("pid_Kd", _num(heater.pid_kd)), ("max_power", _num(heater.max_power)),
            ("min_temp", _num(heater.min_temp_c)), ("max_temp", _num(heater.max_temp_c))]


def _verify(heater: HeaterProfile) -> list[tuple[str, str]]:
    return [("max_error", _num(heater.max_error_c_s)), ("check_gain_time", _num(heater.check_gain_time_s)),
            ("hysteresis", _num(heater.hysteresis_c)), ("heating_gain", _num(heater.heating_gain_c))]


def _target_expr(params: list[str], default_c: float) -> str:
    """``params.A|default(params.B|default(60))|float``: the first argument given, else the default."""
    expr = _num(default_c)
    for param in reversed(params):
        expr = f"params.{param.upper()}|default({expr})"
    return expr + "|float"


def macro_gcode(macro: MacroProfile, profile: PrinterProfile) -> list[str]:
    """The G-code lines of a macro that does what ``macro`` declares (see the module docstring)."""
    lines: list[str] = []
    if macro.homes:
        lines.append("G28" if macro.homes == "XYZ" else "G28 " + " ".join(macro.homes))
    for variable, params, default, set_cmd, wait_cmd in (
            ("bed", macro.bed_temp_params, macro.default_bed_temp_c, "M140", "M190"),
            ("hotend", macro.hotend_temp_params, macro.default_hotend_temp_c, "M104", "M109")):
        if not params and not default:
            continue
        # A target of 0 means "not given": the heater is left as it is (M104 S0 would switch it off).
        lines += [f"{{% set {variable} = {_target_expr(params, default)} %}}", f"{{% if {variable} > 0 %}}",
                  f"{set_cmd} S{{{variable}}}"]
        if macro.waits_for_temperature:
            lines.append(f"{wait_cmd} S{{{variable}}}")
        lines.append("{% endif %}")
    if macro.levels:
        lines.append("# levels the bed on the real printer; no probe on this MCU")
    if macro.purges and macro.homes == "XYZ":
        x = profile.position_min_mm[0] + PURGE_INSET_MM
        y = profile.position_min_mm[1] + PURGE_INSET_MM
        length = min(PURGE_LENGTH_MM, profile.position_max_mm[1] - y - PURGE_INSET_MM)
        filament = PURGE_FILAMENT_MM * length / PURGE_LENGTH_MM
        # The saved state keeps the print's own G90/G91, M82/M83 and E position.
        lines += ["SAVE_GCODE_STATE NAME=layerloop_purge", "G90", "M83", f"G1 X{_num(x)} Y{_num(y)} Z0.3 F3000",
                  f"G1 X{_num(x)} Y{_num(y + length)} E{_num(filament)} F1500",
                  "RESTORE_GCODE_STATE NAME=layerloop_purge"]
    if macro.duration_s > 0:
        lines.append(f"G4 P{round(macro.duration_s * 1000.0)}")
    if macro.ends_print:
        lines += ["TURN_OFF_HEATERS", "M107"]
        if len(macro.park_position_mm) >= 2:
            px, py = macro.park_position_mm[:2]
            lines += ["G90", f"G1 X{_num(px)} Y{_num(py)} F6000"]
        lines.append("M84")
    return lines or ["# declared without an action"]


def printer_cfg_text(profile: PrinterProfile, options: PrinterCfgOptions | None = None) -> str:
    """The printer.cfg text for ``profile`` (see the module docstring for what it holds and why)."""
    options = options or PrinterCfgOptions()
    pins = _Pins()
    printer = [("kinematics", profile.kinematics), ("max_velocity", _num(profile.max_velocity_mm_s)),
               ("max_accel", _num(profile.max_accel_mm_s2)),
               ("minimum_cruise_ratio", _num(profile.minimum_cruise_ratio)),
               ("square_corner_velocity", _num(profile.square_corner_velocity_mm_s)),
               ("max_z_velocity", _num(profile.max_z_velocity_mm_s)),
               ("max_z_accel", _num(profile.max_z_accel_mm_s2))]
    sections = [
        _section("mcu", [("serial", options.mcu_serial)]
                 + ([("baud", str(options.mcu_baud))] if options.mcu_baud else []),
                 "Linux-process MCU (the derived data dictionary's pins)"),
        _section("printer", printer),
        *(_section(f"stepper_{'xyz'[axis]}", _stepper(axis, profile, options, pins)) for axis in range(3)),
    ]
    extruder = [("step_pin", pins.gpio()), ("dir_pin", pins.gpio()), ("enable_pin", "!" + pins.gpio()),
                ("microsteps", str(options.microsteps)),
                ("rotation_distance", _num(options.rotation_distance_e_mm)),
                ("nozzle_diameter", _num(profile.nozzle_diameter_mm)),
                ("filament_diameter", _num(profile.filament_diameter_mm)),
                ("min_extrude_temp", _num(profile.min_extrude_temp_c)),
                ("max_extrude_only_distance", _num(profile.max_extrude_only_distance_mm)),
                ("instantaneous_corner_velocity", _num(profile.instantaneous_corner_velocity_mm_s)),
                ("pressure_advance", _num(profile.pressure_advance_s))]
    # Unset limits stay unset: Klipper derives the same defaults the profile does (4 × nozzle² …).
    if profile.max_extrude_cross_section_mm2 is not None:
        extruder.append(("max_extrude_cross_section", _num(profile.max_extrude_cross_section_mm2)))
    if profile.max_extrude_only_velocity_mm_s is not None:
        extruder.append(("max_extrude_only_velocity", _num(profile.max_extrude_only_velocity_mm_s)))
    if profile.max_extrude_only_accel_mm_s2 is not None:
        extruder.append(("max_extrude_only_accel", _num(profile.max_extrude_only_accel_mm_s2)))
    extruder += _heater(profile.hotend, pins)
    sections += [
        _section("extruder", extruder),
        _section("verify_heater extruder", _verify(profile.hotend)),
        _section("heater_bed", _heater(profile.bed, pins)),
        _section("verify_heater heater_bed", _verify(profile.bed)),
        _section("fan", [("pin", pins.gpio())]),
        _section("gcode_arcs", [("resolution", _num(options.arc_resolution_mm))],
                 "G2/G3: without this section Klipper answers them 'Unknown command'"),
        _section("firmware_retraction", [], "G10/G11 known; Klipper's defaults (no retraction)"),
        _section("virtual_sdcard", [("path", options.sdcard_path)], "Moonraker prints from here"),
        _section("pause_resume", []),
        _section("display_status", [], "M73/M117 and Moonraker's progress"),
        _section("exclude_object", []),
    ]
    for macro in profile.macros:
        body = "\n".join("  " + line for line in macro_gcode(macro, profile))
        sections.append(f"[gcode_macro {macro.name.upper()}]\ngcode:\n{body}")
    header = (f"# Klipper printer.cfg for layerloop printer profile {profile.name!r}"
              f"{' (' + profile.description + ')' if profile.description else ''}.\n"
              "# Written by sim_bridge.klippy.printer_cfg; for the Linux-process MCU of the derived dictionary.\n")
    if profile.firmware != "klipper":
        header += f"# The profile's firmware is {profile.firmware}: Klipper runs its limits with Klipper's planner.\n"
    return header + "\n" + "\n\n".join(sections) + "\n"


def write_printer_cfg(profile: PrinterProfile, path: str | os.PathLike[str],
                      options: PrinterCfgOptions | None = None) -> Path:
    """Write :func:`printer_cfg_text` to ``path`` (folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(printer_cfg_text(profile, options), encoding="utf-8")
    return path


def write_printer_cfg_for(printer: str, out: str | os.PathLike[str] | None = None,
                          options: PrinterCfgOptions | None = None) -> str:
    """The printer.cfg for a printer given as the loaders take it (bundled name, profile YAML, printer.cfg,
    PrusaSlicer config); written to ``out`` when given. Returns the text."""
    text = printer_cfg_text(load_printer(printer), options)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text
