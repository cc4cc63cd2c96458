"""A printer profile from a Klipper ``printer.cfg``; what a config leaves out gets Klipper's own defaults
(:mod:`sim_bridge.klipper_defaults`).

:func:`printer_from_klipper_cfg` reads a Klipper config with a small reader that follows Klipper's own
(``klippy/configfile.py``): ``key: value`` and ``key = value``, ``#`` comments anywhere and ``;`` comments
after whitespace, indented continuation lines, ``[include other.cfg]`` (globs too) relative to the including
file, duplicate sections merged with later keys winning, and the ``#*#`` SAVE_CONFIG block at the end of the
main file (PID gains saved by ``PID_CALIBRATE``) applied last. Values are bounds-checked as they are read;
an error names the file, line, section, key and value. ``[gcode_macro NAME]`` sections become
:class:`~sim_bridge.profiles.MacroProfile` entries whose behaviour :mod:`sim_bridge.klipper_macros` infers
from their text.

A printer config cannot tell thermal constants (heater power, heat capacity, losses) nor melt capacity:
those stay at the :class:`~sim_bridge.profiles.PrinterProfile` defaults.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, to_dict
from sim_bridge.foreign_config import build_profile, check_field_range, field_bounds, located, parse_float
from sim_bridge.klipper_defaults import (
    KLIPPER_CHECK_GAIN_TIME_BED_S,
    KLIPPER_CHECK_GAIN_TIME_EXTRUDER_S,
    KLIPPER_HOMING_RETRACT_MM,
    KLIPPER_HOMING_SPEED_MM_S,
    KLIPPER_INSTANTANEOUS_CORNER_VELOCITY_MM_S,
    KLIPPER_MAX_EXTRUDE_ONLY_DISTANCE_MM,
    KLIPPER_MIN_CRUISE_RATIO,
    KLIPPER_MIN_EXTRUDE_TEMP_C,
    KLIPPER_SQUARE_CORNER_VELOCITY_MM_S,
    KLIPPER_VERIFY_HEATER_DEFAULTS,
)
from sim_bridge.klipper_macros import infer_macros
from sim_bridge.profiles import KINEMATICS, HeaterProfile, PrinterProfile

_REQUIRED: Any = object()
"""Sentinel default: the key must be present."""

_AUTOSAVE_MARK = "#*# <"
"""Start of Klipper's SAVE_CONFIG block (``#*# <---------------------- SAVE_CONFIG ---…``)."""
_SECTION_RE = re.compile(r"\[(?P<header>.+)\]")
_OPTION_RE = re.compile(r"(?P<key>.*?)\s*[=:]\s*(?P<value>.*)$")
_INLINE_SEMI_RE = re.compile(r"\s;.*$")


@dataclass
class _Option:
    value: str
    file: Path
    line: int


@dataclass
class CfgSection:
    name: str
    file: Path
    line: int
    options: dict[str, _Option] = field(default_factory=dict)


class KlipperConfig:
    """A Klipper config read the way klippy reads it (sections → options with their file and line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections: dict[str, CfgSection] = {}
        text = self._read_text(path, None)
        regular, autosave = _split_autosave(text)
        self._parse(path, regular, 0, [])
        if autosave:
            self._parse(path, autosave[1], autosave[0], [])

    @staticmethod
    def _read_text(path: Path, where: str | None) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{where + ': ' if where else ''}{path}: no such config file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); is this a Klipper config?") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None

    def _parse(self, path: Path, text: str, first_line: int, stack: list[Path]) -> None:
        stack.append(path.resolve())
        section: CfgSection | None = None
        option: _Option | None = None
        for index, raw in enumerate(text.split("\n")):
            line_no = first_line + index + 1
            line = raw.split("#", 1)[0].rstrip("\r")  # Klipper drops everything after '#'
            header = _SECTION_RE.match(line)
            if header and header.group("header").startswith("include "):
                self._include(path, line_no, header.group("header")[8:].strip(), stack)
                section, option = None, None  # klippy parses the text after an include on its own
                continue
            line = _INLINE_SEMI_RE.sub("", line)
            stripped = line.strip()
            if not stripped or stripped.startswith(";"):
                continue
            indent = len(line) - len(line.lstrip())
            if option is not None and indent > 0:
                option.value = f"{option.value}\n{stripped}" if option.value else stripped
                continue
            if header:
                name = " ".join(header.group("header").split())
                kind, _, rest = name.partition(" ")
                key = f"{kind.lower()} {rest}".strip()
                section = self.sections.setdefault(key, CfgSection(key, path, line_no))
                option = None
                continue
            match = _OPTION_RE.match(stripped)
            if not match or not match.group("key"):
                raise ConfigError(f"{path}:{line_no}: cannot read {stripped!r}: expected 'key: value', "
                                  "'key = value' or '[section]'")
            if section is None:
                raise ConfigError(f"{path}:{line_no}: {stripped!r} is outside any [section]")
            option = _Option(match.group("value").strip(), path, line_no)
            section.options[match.group("key").lower()] = option
        stack.pop()

    def _include(self, path: Path, line_no: int, spec: str, stack: list[Path]) -> None:
        pattern = os.path.join(path.parent, spec)
        names = sorted(glob.glob(pattern))
        if not names and not glob.has_magic(pattern):
            raise ConfigError(f"{path}:{line_no}: [include {spec}]: file {pattern} does not exist")
        for name in names:
            included = Path(name)
            if included.resolve() in stack:
                chain = " -> ".join(p.name for p in [*stack, included])
                raise ConfigError(f"{path}:{line_no}: [include {spec}]: recursive include ({chain})")
            self._parse(included, self._read_text(included, f"{path}:{line_no}"), 0, stack)

    # --- typed getters, bounds-checked against the profile field they feed --------------------------

    def section(self, name: str) -> CfgSection | None:
        return self.sections.get(name)

    def require_section(self, name: str) -> CfgSection:
        section = self.sections.get(name)
        if section is None:
            raise ConfigError(f"{self.path}: no [{name}] section (Klipper requires it)")
        return section

    def origin(self, section: CfgSection, key: str) -> str:
        option = section.options.get(key)
        if option is None:
            return f"{section.file}:{section.line}: [{section.name}]"
        return f"{option.file}:{option.line}: [{section.name}] {key} = {option.value}"

    def text(self, section: CfgSection, key: str, default: Any = _REQUIRED) -> Any:
        option = section.options.get(key)
        if option is None:
            if default is _REQUIRED:
                raise ConfigError(f"{section.file}:{section.line}: [{section.name}] {key}: required key "
                                  "is missing")
            return default
        return option.value

    def number(self, section: CfgSection, key: str, default: Any = _REQUIRED,
               target: tuple[type, str] | None = None, *, above: float | None = None) -> Any:
        """A float option; ``target`` names the profile field whose range it must fit."""
        option = section.options.get(key)
        if option is None:
            return self.text(section, key, default)
        value = parse_float(option.value)
        where = self.origin(section, key)
        if value is None:
            raise ConfigError(f"{where}: expected a number")
        if above is not None and value <= above:
            raise ConfigError(f"{where}: must be above {above}")
        if target is not None:
            check_field_range(value, target, where)
        return value


def _split_autosave(text: str) -> tuple[str, tuple[int, str] | None]:
    """Split off the SAVE_CONFIG block: (regular text, (line offset, block text without ``#*#``))."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.startswith(_AUTOSAVE_MARK) and "SAVE_CONFIG" in line:
            block = [raw[4:] if raw.startswith("#*# ") else "" for raw in lines[index + 1:]]
            # The header's "DO NOT EDIT THIS BLOCK …" lines come before the first saved section.
            first = next((i for i, text in enumerate(block) if text.startswith("[")), len(block))
            block[:first] = [""] * first
            return "\n".join(lines[:index]), (index + 1, "\n".join(block))
    return text, None


def printer_from_klipper_cfg(path: str | os.PathLike[str]) -> PrinterProfile:
    """A profile from a Klipper ``printer.cfg`` (with its includes and SAVE_CONFIG block).

    Only ``cartesian`` and ``corexy`` kinematics are accepted. Thermal constants stay at the profile
    defaults; limits, PID gains, verify_heater settings and macros come from the config.
    """
    path = Path(path)
    cfg = KlipperConfig(path)
    origins: dict[str, str] = {}
    data: dict[str, Any] = {"name": path.stem, "description": f"imported from Klipper config {path.name}",
                            "firmware": "klipper"}
    P = PrinterProfile

    printer = cfg.require_section("printer")
    kinematics = cfg.text(printer, "kinematics")
    if kinematics not in KINEMATICS:
        raise ConfigError(f"{cfg.origin(printer, 'kinematics')}: unsupported kinematics, allowed: "
                          f"{', '.join(KINEMATICS)}")
    data["kinematics"] = kinematics
    max_velocity = cfg.number(printer, "max_velocity", target=(P, "max_velocity_mm_s"))
    max_accel = cfg.number(printer, "max_accel", target=(P, "max_accel_mm_s2"))
    data["max_velocity_mm_s"] = max_velocity
    data["max_accel_mm_s2"] = max_accel
    ratio = cfg.number(printer, "minimum_cruise_ratio", KLIPPER_MIN_CRUISE_RATIO,
                       target=(P, "minimum_cruise_ratio"))
    origins["minimum_cruise_ratio"] = cfg.origin(printer, "minimum_cruise_ratio")
    accel_to_decel = cfg.number(printer, "max_accel_to_decel", None, above=0.0)
    if accel_to_decel is not None:  # deprecated key; klippy converts it exactly so
        ratio = 1.0 - min(1.0, accel_to_decel / max_accel)
        origins["minimum_cruise_ratio"] = cfg.origin(printer, "max_accel_to_decel")
    data["minimum_cruise_ratio"] = ratio
    data["square_corner_velocity_mm_s"] = cfg.number(
        printer, "square_corner_velocity", KLIPPER_SQUARE_CORNER_VELOCITY_MM_S,
        target=(P, "square_corner_velocity_mm_s"))
    # klippy's defaults for the Z limits are the toolhead limits; capped at what the profile allows for Z
    # (a Z axis never moves at the >1000 mm/s some toolheads are allowed).
    data["max_z_velocity_mm_s"] = cfg.number(printer, "max_z_velocity",
                                             min(max_velocity, field_bounds(P, "max_z_velocity_mm_s")[1]),
                                             target=(P, "max_z_velocity_mm_s"))
    data["max_z_accel_mm_s2"] = cfg.number(printer, "max_z_accel",
                                           min(max_accel, field_bounds(P, "max_z_accel_mm_s2")[1]),
                                           target=(P, "max_z_accel_mm_s2"))
    origins["max_z_velocity_mm_s"] = cfg.origin(printer, "max_z_velocity")
    origins["max_z_accel_mm_s2"] = cfg.origin(printer, "max_z_accel")

    lows, highs, endstops, speeds = [], [], [], []
    retract = KLIPPER_HOMING_RETRACT_MM
    for axis in "xyz":
        stepper = cfg.require_section(f"stepper_{axis}")
        lo = cfg.number(stepper, "position_min", 0.0, target=(P, "position_min_mm"))
        hi = cfg.number(stepper, "position_max", target=(P, "position_max_mm"))
        if "probe:z_virtual_endstop" in cfg.text(stepper, "endstop_pin", "").replace(" ", ""):
            endstop = _probe_z_offset(cfg)
        else:
            endstop = cfg.number(stepper, "position_endstop", target=(P, "position_endstop_mm"))
            if not lo <= endstop <= hi:
                raise ConfigError(f"{cfg.origin(stepper, 'position_endstop')}: must be between "
                                  f"position_min {lo} and position_max {hi}")
        if lo >= hi:
            raise ConfigError(f"{cfg.origin(stepper, 'position_max')}: must be above position_min {lo}")
        lows.append(lo)
        highs.append(hi)
        endstops.append(endstop)
        speeds.append(cfg.number(stepper, "homing_speed", KLIPPER_HOMING_SPEED_MM_S,
                                 target=(P, "homing_speed_mm_s")))
        if axis == "x":
            retract = cfg.number(stepper, "homing_retract_dist", KLIPPER_HOMING_RETRACT_MM,
                                 target=(P, "homing_retract_mm"))
    data.update(position_min_mm=lows, position_max_mm=highs, position_endstop_mm=endstops,
                homing_speed_mm_s=speeds, homing_retract_mm=retract)

    hotend = to_dict(HeaterProfile())
    extruder = cfg.section("extruder")
    if extruder is not None:
        data["nozzle_diameter_mm"] = cfg.number(extruder, "nozzle_diameter", target=(P, "nozzle_diameter_mm"))
        data["filament_diameter_mm"] = cfg.number(extruder, "filament_diameter",
                                                  target=(P, "filament_diameter_mm"))
        for key, name, default in (
                ("min_extrude_temp", "min_extrude_temp_c", KLIPPER_MIN_EXTRUDE_TEMP_C),
                ("max_extrude_cross_section", "max_extrude_cross_section_mm2", None),
                ("max_extrude_only_distance", "max_extrude_only_distance_mm",
                 KLIPPER_MAX_EXTRUDE_ONLY_DISTANCE_MM),
                ("max_extrude_only_velocity", "max_extrude_only_velocity_mm_s", None),
                ("max_extrude_only_accel", "max_extrude_only_accel_mm_s2", None),
                ("instantaneous_corner_velocity", "instantaneous_corner_velocity_mm_s",
                 KLIPPER_INSTANTANEOUS_CORNER_VELOCITY_MM_S),
                ("pressure_advance", "pressure_advance_s", 0.0)):
            data[name] = cfg.number(extruder, key, default, target=(P, name))
        _read_heater(cfg, extruder, hotend, "extruder")
    data["hotend"] = hotend
    bed = to_dict(PrinterProfile().bed)
    heater_bed = cfg.section("heater_bed")
    if heater_bed is not None:
        _read_heater(cfg, heater_bed, bed, "heater_bed")
    data["bed"] = bed

    sections = {section.name.partition(" ")[2].upper(): section
                for section in cfg.sections.values() if section.name.startswith("gcode_macro ")}
    for index, section in enumerate(sections.values()):
        origins[f"macros[{index}]"] = f"{section.file}:{section.line}: [{section.name}]"
    try:
        macros = infer_macros({name: cfg.text(section, "gcode", "") for name, section in sections.items()})
    except ConfigError as exc:
        raise located(exc, str(path), origins) from None
    data["macros"] = [to_dict(macro) for macro in macros]
    return build_profile(data, str(path), origins)


def _probe_z_offset(cfg: KlipperConfig) -> float:
    """Where homing with the probe as Z endstop leaves Z: the probe's ``z_offset``."""
    for name in ("probe", "bltouch"):
        section = cfg.section(name)
        if section is not None:
            return cfg.number(section, "z_offset", 0.0, target=(PrinterProfile, "position_endstop_mm"))
    return 0.0


def _read_heater(cfg: KlipperConfig, section: CfgSection, heater: dict[str, Any], name: str) -> None:
    """Fill ``heater`` (a HeaterProfile mapping) from a heater section and its [verify_heater NAME]."""
    H = HeaterProfile
    heater["min_temp_c"] = cfg.number(section, "min_temp", target=(H, "min_temp_c"))
    heater["max_temp_c"] = cfg.number(section, "max_temp", target=(H, "max_temp_c"))
    if heater["min_temp_c"] >= heater["max_temp_c"]:
        raise ConfigError(f"{cfg.origin(section, 'max_temp')}: must be above min_temp {heater['min_temp_c']}")
    heater["max_power"] = cfg.number(section, "max_power", 1.0, target=(H, "max_power"), above=0.0)
    control = cfg.text(section, "control", "pid")
    if control not in ("pid", "watermark"):
        raise ConfigError(f"{cfg.origin(section, 'control')}: unknown control, allowed: pid, watermark")
    if control == "pid":
        for key, target in (("pid_kp", "pid_kp"), ("pid_ki", "pid_ki"), ("pid_kd", "pid_kd")):
            heater[target] = cfg.number(section, key, heater[target], target=(H, target))
    verify = cfg.section(f"verify_heater {name}")
    gain_time = KLIPPER_CHECK_GAIN_TIME_BED_S if name == "heater_bed" else KLIPPER_CHECK_GAIN_TIME_EXTRUDER_S
    if verify is None:
        heater["check_gain_time_s"] = gain_time
        return
    heater["max_error_c_s"] = cfg.number(verify, "max_error", KLIPPER_VERIFY_HEATER_DEFAULTS["max_error"],
                                         target=(H, "max_error_c_s"))
    heater["check_gain_time_s"] = cfg.number(verify, "check_gain_time", gain_time,
                                             target=(H, "check_gain_time_s"))
    heater["hysteresis_c"] = cfg.number(verify, "hysteresis", KLIPPER_VERIFY_HEATER_DEFAULTS["hysteresis"],
                                        target=(H, "hysteresis_c"))
    heater["heating_gain_c"] = cfg.number(verify, "heating_gain",
                                          KLIPPER_VERIFY_HEATER_DEFAULTS["heating_gain"],
                                          target=(H, "heating_gain_c"))
