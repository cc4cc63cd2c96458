"""Printer profiles from foreign configs: a Klipper ``printer.cfg`` and a PrusaSlicer-family slicer config.

:func:`printer_from_klipper_cfg` reads a Klipper config with a small reader that follows Klipper's own
(``klippy/configfile.py``): ``key: value`` and ``key = value``, ``#`` comments anywhere and ``;`` comments
after whitespace, indented continuation lines, ``[include other.cfg]`` (globs too) relative to the including
file, duplicate sections merged with later keys winning, and the ``#*#`` SAVE_CONFIG block at the end of the
main file (PID gains saved by ``PID_CALIBRATE``) applied last. Values are bounds-checked as they are read;
an error names the file, line, section, key and value. ``[gcode_macro NAME]`` sections become
:class:`~sim_bridge.profiles.MacroProfile` entries whose behaviour (homes, heats, levels, purges, ends the
print) is inferred from the macro's G-code/Jinja text.

:func:`printer_from_prusaslicer` reads a PrusaSlicer ``.ini`` or the config dump a PrusaSlicer, SuperSlicer,
Slic3r, OrcaSlicer, Bambu Studio or Creality Print G-code file carries (at its end, or at its head in
Bambu's ``CONFIG_BLOCK``), reading only the end and the head of the file, never the whole program.

A printer config cannot tell thermal constants (heater power, heat capacity, losses) nor melt capacity:
those stay at the :class:`~sim_bridge.profiles.PrinterProfile` defaults.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, from_dict, to_dict
from sim_bridge.profiles import HeaterProfile, MacroProfile, PrinterProfile

# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------

_REQUIRED: Any = object()
"""Sentinel default: the key must be present."""


def _bounds(cls: type, name: str) -> tuple[float | None, float | None]:
    """The allowed range of a profile field (``ranged`` metadata)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("min"), f.metadata.get("max")
    raise KeyError(name)


def _in_range(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _parse_float(text: str) -> float | None:
    """A finite number, or ``None`` if ``text`` is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _build_profile(data: dict[str, Any], source: str, origins: dict[str, str],
                   resolve: Callable[[str], str] | None = None) -> PrinterProfile:
    """Validate ``data`` as a profile; an error is prefixed with where its key came from in the input.

    ``origins`` maps profile keys to where their values came from (passed through ``resolve``, which may be
    costly, only when an error needs it).
    """
    try:
        return from_dict(PrinterProfile, data)
    except ConfigError as exc:
        message = str(exc)
        best = ""
        for key in origins:
            if message.startswith(key) and len(key) > len(best):
                best = key
        where = origins[best] if best else source
        if best and resolve is not None:
            where = resolve(where)
        raise ConfigError(f"{where}: {message}") from None


# ---------------------------------------------------------------------------------------------------------
# Klipper printer.cfg
# ---------------------------------------------------------------------------------------------------------

KLIPPER_KINEMATICS = ("cartesian", "corexy")
"""Klipper kinematics the simulator models."""
KLIPPER_HOMING_SPEED_MM_S = 5.0
"""Klipper's default ``homing_speed``."""
KLIPPER_HOMING_RETRACT_MM = 5.0
"""Klipper's default ``homing_retract_dist``."""
KLIPPER_MIN_CRUISE_RATIO = 0.5
"""Klipper's default ``minimum_cruise_ratio``."""
KLIPPER_SQUARE_CORNER_VELOCITY_MM_S = 5.0
"""Klipper's default ``square_corner_velocity``."""
KLIPPER_MIN_EXTRUDE_TEMP_C = 170.0
"""Klipper's default ``min_extrude_temp``."""
KLIPPER_MAX_EXTRUDE_ONLY_DISTANCE_MM = 50.0
"""Klipper's default ``max_extrude_only_distance``."""
KLIPPER_INSTANTANEOUS_CORNER_VELOCITY_MM_S = 1.0
"""Klipper's default extruder ``instantaneous_corner_velocity``."""
KLIPPER_VERIFY_HEATER_DEFAULTS = {"max_error": 120.0, "hysteresis": 5.0, "heating_gain": 2.0}
"""Klipper's ``[verify_heater]`` defaults (``check_gain_time``: 20 s extruder, 60 s bed)."""
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
class _Section:
    name: str
    file: Path
    line: int
    options: dict[str, _Option] = field(default_factory=dict)


class _KlipperConfig:
    """A Klipper config read the way klippy reads it (sections → options with their file and line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections: dict[str, _Section] = {}
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
        section: _Section | None = None
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
                section = self.sections.setdefault(key, _Section(key, path, line_no))
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

    def section(self, name: str) -> _Section | None:
        return self.sections.get(name)

    def require_section(self, name: str) -> _Section:
        section = self.sections.get(name)
        if section is None:
            raise ConfigError(f"{self.path}: no [{name}] section (Klipper requires it)")
        return section

    def origin(self, section: _Section, key: str) -> str:
        option = section.options.get(key)
        if option is None:
            return f"{section.file}:{section.line}: [{section.name}]"
        return f"{option.file}:{option.line}: [{section.name}] {key} = {option.value}"

    def text(self, section: _Section, key: str, default: Any = _REQUIRED) -> Any:
        option = section.options.get(key)
        if option is None:
            if default is _REQUIRED:
                raise ConfigError(f"{section.file}:{section.line}: [{section.name}] {key}: required key "
                                  "is missing")
            return default
        return option.value

    def number(self, section: _Section, key: str, default: Any = _REQUIRED,
               target: tuple[type, str] | None = None, *, above: float | None = None) -> Any:
        """A float option; ``target`` names the profile field whose range it must fit."""
        option = section.options.get(key)
        if option is None:
            return self.text(section, key, default)
        value = _parse_float(option.value)
        where = self.origin(section, key)
        if value is None:
            raise ConfigError(f"{where}: expected a number")
        if above is not None and value <= above:
            raise ConfigError(f"{where}: must be above {above}")
        if target is not None:
            lo, hi = _bounds(*target)
            if not _in_range(value, lo, hi):
                raise ConfigError(f"{where}: out of range, allowed [{lo}, {hi}] (for {target[1]})")
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
    cfg = _KlipperConfig(path)
    origins: dict[str, str] = {}
    data: dict[str, Any] = {"name": path.stem, "description": f"imported from Klipper config {path.name}",
                            "firmware": "klipper"}
    P = PrinterProfile

    printer = cfg.require_section("printer")
    kinematics = cfg.text(printer, "kinematics")
    if kinematics not in KLIPPER_KINEMATICS:
        raise ConfigError(f"{cfg.origin(printer, 'kinematics')}: unsupported kinematics, allowed: "
                          f"{', '.join(KLIPPER_KINEMATICS)}")
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
                                             min(max_velocity, _bounds(P, "max_z_velocity_mm_s")[1]),
                                             target=(P, "max_z_velocity_mm_s"))
    data["max_z_accel_mm_s2"] = cfg.number(printer, "max_z_accel",
                                           min(max_accel, _bounds(P, "max_z_accel_mm_s2")[1]),
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

    macros = _klipper_macros(cfg)
    for index, (section, _) in enumerate(macros):
        origins[f"macros[{index}]"] = f"{section.file}:{section.line}: [{section.name}]"
    data["macros"] = [to_dict(macro) for _, macro in macros]
    return _build_profile(data, str(path), origins)


def _probe_z_offset(cfg: _KlipperConfig) -> float:
    """Where homing with the probe as Z endstop leaves Z: the probe's ``z_offset``."""
    for name in ("probe", "bltouch"):
        section = cfg.section(name)
        if section is not None:
            return cfg.number(section, "z_offset", 0.0, target=(PrinterProfile, "position_endstop_mm"))
    return 0.0


def _read_heater(cfg: _KlipperConfig, section: _Section, heater: dict[str, Any], name: str) -> None:
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
    gain_time = 60.0 if name == "heater_bed" else 20.0
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


# --- macros --------------------------------------------------------------------------------------------

_LEVEL_COMMANDS = frozenset({"BED_MESH_CALIBRATE", "Z_TILT_ADJUST", "QUAD_GANTRY_LEVEL", "G29"})
_END_COMMANDS = frozenset({"M84", "M18", "TURN_OFF_HEATERS"})
_JINJA_STATEMENT_RE = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.S)
_JINJA_SET_RE = re.compile(r"\{%-?\s*set\s+(\w+)\s*=(.*?)-?%\}", re.S)
_PARAM_RE = re.compile(r"params\s*(?:\.get\(\s*['\"](\w+)['\"]|\.\s*(\w+)|\[\s*['\"](\w+)['\"]\s*\])")
"""A macro argument: ``params.BED``, ``params['BED']``, ``params.get('BED', 60)``."""
_DEFAULT_RE = re.compile(r"(?:default\(|\.get\(\s*['\"]\w+['\"]\s*,)\s*([-+]?\d+(?:\.\d+)?)\s*[,)]")
"""A default number: ``|default(60)`` or ``params.get('BED', 60)``."""
_WORD_RE = re.compile(r"\b(\w+)\b")
_ARG_RE = re.compile(r"(\w+)\s*=\s*(\{[^}]*\}|\S+)")
_S_WORD_RE = re.compile(r"(?:^|[\s\d.}])S\s*(\{[^}]*\}|[-+]?[0-9.]+)", re.I)
_AXIS_WORD_RE = re.compile(r"(?:^|[\s\d.}])([XYZE])\s*(\{[^}]*\}|[-+]?[0-9.]*)", re.I)
_COMMAND_RE = re.compile(r"([GMgm]\d+(?:\.\d+)?)(?=[\sA-Za-z{]|$)|(\S+)")
_JINJA_EXPR_RE = re.compile(r"\{[^}]*\}")


@dataclass
class _MacroFacts:
    """What a macro's text shows it does."""

    axes: set[str] = field(default_factory=set)
    hotend_params: list[str] = field(default_factory=list)
    bed_params: list[str] = field(default_factory=list)
    default_hotend_c: float = 0.0
    default_bed_c: float = 0.0
    waits: bool = False
    levels: bool = False
    purges: bool = False
    ends: bool = False
    park: list[float] = field(default_factory=list)


@dataclass
class _Target:
    """A heater target expression: the params it reads, its default, or a literal number."""

    params: list[str]
    default_c: float | None
    literal_c: float | None


def _klipper_macros(cfg: _KlipperConfig) -> list[tuple[_Section, MacroProfile]]:
    bodies = {section.name.partition(" ")[2].upper(): section
              for section in cfg.sections.values() if section.name.startswith("gcode_macro ")}
    out = []
    for name, section in bodies.items():
        facts = _macro_facts(name, bodies, cfg, set())
        homes = ("XYZ" if facts.axes >= {"X", "Y", "Z"} else "XY" if facts.axes >= {"X", "Y"}
                 else "Z" if "Z" in facts.axes else "")
        out.append((section, MacroProfile(
            name=name, homes=homes, hotend_temp_params=facts.hotend_params, bed_temp_params=facts.bed_params,
            waits_for_temperature=facts.waits, default_hotend_temp_c=facts.default_hotend_c,
            default_bed_temp_c=facts.default_bed_c, levels=facts.levels, purges=facts.purges,
            ends_print=facts.ends, park_position_mm=facts.park if facts.ends else [])))
    return out


def _macro_facts(name: str, bodies: dict[str, _Section], cfg: _KlipperConfig, seen: set[str]) -> _MacroFacts:
    """Infer what macro ``name`` does from its text (and the macros it calls, once each).

    Homed axes that do not form XYZ, XY or Z are under-reported (``G28 X`` alone counts as no homing):
    claiming an axis homed that is not would hide a real "Must home axis first".
    """
    seen = seen | {name}
    facts = _MacroFacts()
    text = cfg.text(bodies[name], "gcode", "")
    variables: dict[str, _Target] = {}
    for var, expr in _JINJA_SET_RE.findall(text):
        variables[var.lower()] = _target(expr, variables)
    relative = False
    for raw in _JINJA_STATEMENT_RE.sub("\n", text).split("\n"):
        line = raw.strip()
        if not line or line.startswith("{"):
            continue
        match = _COMMAND_RE.match(line)
        if match is None:
            continue
        command, rest = match.group(0).upper(), line[match.end():]
        if command in ("M104", "M109", "M140", "M190"):
            match = _S_WORD_RE.search(rest)
            hotend = command in ("M104", "M109")
            _heat(facts, hotend, _target(match.group(1), variables) if match else None,
                  waits=command in ("M109", "M190"))
        elif command in ("SET_HEATER_TEMPERATURE", "TEMPERATURE_WAIT"):
            args = {k.upper(): v for k, v in _ARG_RE.findall(rest)}
            heater = args.get("HEATER" if command == "SET_HEATER_TEMPERATURE" else "SENSOR", "").lower()
            expr = args.get("TARGET" if command == "SET_HEATER_TEMPERATURE" else "MINIMUM")
            if heater.startswith("extruder") or heater == "heater_bed":
                _heat(facts, heater.startswith("extruder"), _target(expr, variables) if expr else None,
                      waits=command == "TEMPERATURE_WAIT")
        elif command == "G28":
            literal = _JINJA_EXPR_RE.sub(" ", rest)
            axes = {a.upper() for a in re.findall(r"[XYZxyz]", literal)}
            if axes or not literal.strip():  # "G28 {axes}" homes we cannot tell what: claim nothing
                facts.axes |= axes or {"X", "Y", "Z"}
        elif command in _LEVEL_COMMANDS:
            facts.levels = True
        elif command in _END_COMMANDS:
            facts.ends = True
        elif command in ("G90", "G91"):
            relative = command == "G91"
        elif command in ("G0", "G1"):
            words = {k.upper(): v for k, v in _AXIS_WORD_RE.findall(rest)}
            if "E" in words and not words["E"].startswith("-") and ("X" in words or "Y" in words):
                facts.purges = True
            x, y = _parse_float(words.get("X", "")), _parse_float(words.get("Y", ""))
            if not relative and x is not None and y is not None:
                facts.park = [x, y]
        elif command in bodies and command not in seen:
            _merge_call(facts, _macro_facts(command, bodies, cfg, seen), rest, variables)
        elif command not in bodies and ("PURGE" in command or "PRIME_LINE" in command):
            facts.purges = True  # e.g. KAMP's LINE_PURGE, defined in a file we were not given
    return facts


def _target(expr: str, variables: dict[str, _Target]) -> _Target:
    params: list[str] = []
    default = None
    for groups in _PARAM_RE.findall(expr):
        name = next(g for g in groups if g).upper()
        if name not in params:
            params.append(name)
    for word in _WORD_RE.findall(_PARAM_RE.sub(" ", expr)):
        known = variables.get(word.lower())
        if known is not None:
            params.extend(p for p in known.params if p not in params)
            default = default if default is not None else (known.default_c or known.literal_c)
    match = _DEFAULT_RE.search(expr)
    if match:
        default = float(match.group(1))
    literal = _parse_float(expr.strip().strip("{}").strip())
    return _Target(params, default, literal)


def _heat(facts: _MacroFacts, hotend: bool, target: _Target | None, *, waits: bool) -> None:
    if target is not None and not target.params and target.literal_c == 0.0:
        return  # "M104 S0" switches the heater off
    facts.waits = facts.waits or waits
    if target is None:
        return
    params = facts.hotend_params if hotend else facts.bed_params
    params.extend(p for p in target.params if p not in params)
    default = target.literal_c if target.literal_c is not None else target.default_c
    if default is not None and default > 0:
        if hotend and not facts.default_hotend_c:
            facts.default_hotend_c = default
        elif not hotend and not facts.default_bed_c:
            facts.default_bed_c = default


def _merge_call(facts: _MacroFacts, callee: _MacroFacts, args_text: str,
                variables: dict[str, _Target]) -> None:
    """Fold a called macro's facts into the caller's; its params are renamed to the caller's arguments."""
    args = {k.upper(): _target(v, variables) for k, v in _ARG_RE.findall(args_text)}
    facts.axes |= callee.axes
    for hotend in (True, False):
        mine = facts.hotend_params if hotend else facts.bed_params
        default = callee.default_hotend_c if hotend else callee.default_bed_c
        for param in callee.hotend_params if hotend else callee.bed_params:
            passed = args.get(param)
            if passed is not None:
                mine.extend(p for p in passed.params if p not in mine)
                given = passed.literal_c if passed.literal_c is not None else passed.default_c
                default = given if given else default  # what the caller passes wins over the callee's
        if hotend:
            facts.default_hotend_c = facts.default_hotend_c or default
        else:
            facts.default_bed_c = facts.default_bed_c or default
    facts.waits = facts.waits or callee.waits
    facts.levels = facts.levels or callee.levels
    facts.purges = facts.purges or callee.purges
    facts.ends = facts.ends or callee.ends
    if callee.park:
        facts.park = callee.park


# ---------------------------------------------------------------------------------------------------------
# PrusaSlicer-family configs (.ini, or the dump in a G-code file)
# ---------------------------------------------------------------------------------------------------------

DUMP_TAIL_MAX_BYTES = 8 * 1024 * 1024
"""Most bytes read backwards from the end of a G-code file in search of its config dump."""
DUMP_HEAD_MAX_LINES = 300
"""Lines searched at the head of a G-code file for a Bambu-style ``CONFIG_BLOCK_START``."""
_BLOCK_BYTES = 64 * 1024
_LINE_LIMIT_BYTES = 1024 * 1024
_DUMP_BEGIN_RE = re.compile(rb";\s*(?:\w+_config\s*=\s*begin|CONFIG_BLOCK_START)\s*$", re.I)
_DUMP_END_RE = re.compile(rb";\s*(?:\w+_config\s*=\s*end|CONFIG_BLOCK_END)\s*$", re.I)
_DUMP_LINE_RE = re.compile(rb";\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_INI_LINE_RE = re.compile(rb"([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_DUMP_SIGNATURE_KEYS = ("bed_shape", "printable_area", "gcode_flavor", "nozzle_diameter")
"""A dump must hold one of these to count as a printer config."""
_HOTEND_TARGET_KEYS = ("temperature", "first_layer_temperature", "nozzle_temperature",
                       "nozzle_temperature_initial_layer")
_BED_TARGET_KEYS = ("bed_temperature", "first_layer_bed_temperature", "hot_plate_temp",
                    "hot_plate_temp_initial_layer", "cool_plate_temp", "cool_plate_temp_initial_layer",
                    "eng_plate_temp", "eng_plate_temp_initial_layer", "textured_plate_temp",
                    "textured_plate_temp_initial_layer")


@dataclass
class _Dump:
    """Slicer config entries: key → (value, byte offset of its line in the file)."""

    path: Path
    entries: dict[str, tuple[str, int]]

    def line_of(self, offset: int) -> int:
        """1-based line number of a byte offset (counted only when an error needs it)."""
        count = 0
        with self.path.open("rb") as fh:
            remaining = offset
            while remaining > 0:
                chunk = fh.read(min(_BLOCK_BYTES * 16, remaining))
                if not chunk:
                    break
                count += chunk.count(b"\n")
                remaining -= len(chunk)
        return count + 1

    def origin(self, key: str) -> str:
        value, offset = self.entries[key]
        return f"{self.path}:{self.line_of(offset)}: {key} = {value}"

    def first_key(self, *keys: str) -> str | None:
        return next((k for k in keys if self.text(k) is not None), None)

    def text(self, key: str) -> str | None:
        entry = self.entries.get(key)
        if entry is None or entry[0].strip() in ("", "nil"):
            return None
        return entry[0].strip()

    def number(self, key: str | None, target: tuple[type, str] | None = None) -> float | None:
        """The first number of a (comma-separated, per extruder or normal/stealth) value."""
        text = self.text(key) if key else None
        if key is None or text is None:
            return None
        value = _parse_float(re.split(r"[,;]", text)[0].strip())
        if value is None:
            raise ConfigError(f"{self.origin(key)}: expected a number")
        if target is not None:
            lo, hi = _bounds(*target)
            if not _in_range(value, lo, hi):
                raise ConfigError(f"{self.origin(key)}: out of range, allowed [{lo}, {hi}] (for {target[1]})")
        return value

    def numbers(self, key: str) -> list[float]:
        """Every number of a list value (non-numbers skipped)."""
        text = self.text(key) or ""
        return [v for v in (_parse_float(t.strip()) for t in re.split(r"[,;]", text)) if v is not None]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()


def _lines_backwards(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) pairs from the end of the file backwards, reading at most ``max_bytes``."""
    with path.open("rb") as fh:
        pos = fh.seek(0, os.SEEK_END)
        carry = b""
        read = 0
        while pos > 0 and read < max_bytes:
            step = min(_BLOCK_BYTES, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step) + carry
            read += step
            parts = block.split(b"\n")
            carry = parts[0]
            offsets = [pos]
            for part in parts[:-1]:
                offsets.append(offsets[-1] + len(part) + 1)
            for index in range(len(parts) - 1, 0, -1):
                yield offsets[index], parts[index]
        if pos == 0 and carry:
            yield 0, carry


def _dump_from_tail(path: Path) -> dict[str, tuple[str, int]]:
    """The trailing run of ``; key = value`` comment lines (PrusaSlicer, Slic3r, SuperSlicer, Orca)."""
    entries: dict[str, tuple[str, int]] = {}
    for offset, raw in _lines_backwards(path, DUMP_TAIL_MAX_BYTES):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith(b";") or _DUMP_BEGIN_RE.match(line):
            break
        match = _DUMP_LINE_RE.match(line)
        if match:
            entries.setdefault(match.group(1).decode(), (_decode(match.group(2)), offset))
    return entries


def _dump_from_head(path: Path) -> dict[str, tuple[str, int]]:
    """A ``CONFIG_BLOCK_START`` … ``END`` block near the head of the file (Bambu Studio)."""
    entries: dict[str, tuple[str, int]] = {}
    inside = False
    read = 0
    line_no = 0
    with path.open("rb") as fh:
        while True:
            offset = fh.tell()
            raw = fh.readline(_LINE_LIMIT_BYTES)
            read += len(raw)
            line_no += 1
            if not raw or read > DUMP_TAIL_MAX_BYTES or (not inside and line_no > DUMP_HEAD_MAX_LINES):
                break
            line = raw.strip()
            if not inside:
                inside = bool(_DUMP_BEGIN_RE.match(line))
                continue
            if _DUMP_END_RE.match(line) or (line and not line.startswith(b";")):
                break
            match = _DUMP_LINE_RE.match(line)
            if match:
                entries[match.group(1).decode()] = (_decode(match.group(2)), offset)
    return entries


def _dump_from_ini(path: Path) -> dict[str, tuple[str, int]]:
    entries: dict[str, tuple[str, int]] = {}
    offset = 0
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        line = raw.strip()
        start, offset = offset, offset + len(raw) + 1
        if not line or line.startswith((b"#", b";")):
            continue
        if line.startswith(b"["):
            raise ConfigError(f"{path}:{line_no}: {_decode(line)}: a config bundle with sections is not "
                              "supported; export one printer's config (File > Export > Export Config)")
        match = _INI_LINE_RE.match(line)
        if not match:
            raise ConfigError(f"{path}:{line_no}: cannot read {_decode(line)!r}: expected 'key = value'")
        entries[match.group(1).decode()] = (_decode(match.group(2)), start)
    return entries


def _read_dump(path: Path) -> _Dump:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if path.suffix.lower() == ".ini":
        entries = _dump_from_ini(path)
        if not any(k in entries for k in _DUMP_SIGNATURE_KEYS):
            raise ConfigError(f"{path}: not a slicer printer config: none of "
                              f"{', '.join(_DUMP_SIGNATURE_KEYS)} is set")
        return _Dump(path, entries)
    entries = _dump_from_tail(path)
    if not any(k in entries for k in _DUMP_SIGNATURE_KEYS):
        entries = _dump_from_head(path)
    if not any(k in entries for k in _DUMP_SIGNATURE_KEYS):
        raise ConfigError(
            f"{path}: no slicer config found: looked for '; key = value' comment lines holding one of "
            f"{', '.join(_DUMP_SIGNATURE_KEYS)} at the end of the file ('; prusaslicer_config = begin' … "
            f"or trailing lines) and in a '; CONFIG_BLOCK_START' block in its first {DUMP_HEAD_MAX_LINES} "
            "lines")
    return _Dump(path, entries)


def printer_from_prusaslicer(path: str | os.PathLike[str]) -> PrinterProfile:
    """A profile from a PrusaSlicer-family ``.ini`` or the config dump inside a sliced G-code file.

    The bed comes from ``bed_shape`` (``printable_area`` in Orca/Bambu), Z from ``max_print_height``
    (``printable_height``); ``gcode_flavor = klipper`` gives a Klipper printer, every other flavour Marlin.
    Machine limits fill both planners' fields (Klipper: ``max_velocity`` = fastest of X/Y feed rates,
    ``max_accel`` = extruding acceleration). Lists (per extruder, or normal/stealth) give their first
    value. The heaters' ``max_temp_c`` is raised, if needed, to the highest target the config itself uses.
    """
    path = Path(path)
    dump = _read_dump(path)
    P = PrinterProfile
    defaults = PrinterProfile()
    origins: dict[str, str] = {}
    data: dict[str, Any] = {"name": path.stem}
    model = dump.text("printer_model") or dump.text("printer_settings_id")
    data["description"] = f"imported from slicer config in {path.name}" + (f" ({model})" if model else "")

    flavor = (dump.text("gcode_flavor") or "marlin").lower()
    data["firmware"] = "klipper" if flavor == "klipper" else "marlin"
    if (dump.text("printer_structure") or "").lower() == "corexy":
        data["kinematics"] = "corexy"

    shape_key = dump.first_key("bed_shape", "printable_area")
    lows, highs = list(defaults.position_min_mm), list(defaults.position_max_mm)
    if shape_key is not None:
        xs, ys = _bed_points(dump, shape_key)
        lows[:2], highs[:2] = [min(xs), min(ys)], [max(xs), max(ys)]
        origins["position_"] = shape_key
    height = dump.number(dump.first_key("max_print_height", "printable_height"))
    if height is not None and height > 0:
        highs[2] = height
    data.update(position_min_mm=lows, position_max_mm=highs, position_endstop_mm=list(lows))

    for kind, field_name in (("feedrate", "max_feedrate_mm_s"), ("acceleration", "max_axis_accel_mm_s2"),
                             ("jerk", "jerk_mm_s")):
        values = list(getattr(defaults, field_name))
        for index, axis in enumerate("xyze"):
            key = dump.first_key(f"machine_max_{kind}_{axis}",
                                 *([f"machine_max_speed_{axis}"] if kind == "feedrate" else []))
            value = dump.number(key, (P, field_name)) if key else None
            if value is not None:
                values[index] = value
        data[field_name] = values
    feed = [dump.number(dump.first_key(f"machine_max_feedrate_{a}", f"machine_max_speed_{a}"),
                        (P, "max_velocity_mm_s")) for a in "xy"]
    if any(v is not None for v in feed):
        data["max_velocity_mm_s"] = max(v for v in feed if v is not None)
    z_feed_key = dump.first_key("machine_max_feedrate_z", "machine_max_speed_z")
    if z_feed_key is not None:
        data["max_z_velocity_mm_s"] = data["max_feedrate_mm_s"][2]
        origins["max_z_velocity_mm_s"] = z_feed_key
    if dump.text("machine_max_acceleration_z") is not None:
        data["max_z_accel_mm_s2"] = data["max_axis_accel_mm_s2"][2]
        origins["max_z_accel_mm_s2"] = "machine_max_acceleration_z"
    extruding = dump.number("machine_max_acceleration_extruding", (P, "print_accel_mm_s2"))
    x_accel = dump.number("machine_max_acceleration_x", (P, "max_accel_mm_s2"))
    accel = extruding if extruding is not None else x_accel
    if accel is not None:
        data["max_accel_mm_s2"] = accel
        data["print_accel_mm_s2"] = accel
    retracting = dump.number("machine_max_acceleration_retracting", (P, "retract_accel_mm_s2"))
    if retracting is not None:
        data["retract_accel_mm_s2"] = retracting
    travel = dump.number("machine_max_acceleration_travel", (P, "travel_accel_mm_s2"))
    if travel is not None or accel is not None:
        data["travel_accel_mm_s2"] = travel if travel is not None else accel  # Marlin 1: travel = print

    nozzle = dump.number("nozzle_diameter", (P, "nozzle_diameter_mm"))
    if nozzle is not None:
        data["nozzle_diameter_mm"] = nozzle
    filament = dump.number("filament_diameter", (P, "filament_diameter_mm"))
    if filament is not None:
        data["filament_diameter_mm"] = filament
    flows = [v for v in (dump.number("max_volumetric_speed"), dump.number("filament_max_volumetric_speed"))
             if v is not None and v > 0]
    if flows:
        data["max_volumetric_flow_mm3_s"] = min(flows)  # the slicer keeps the flow under both limits
        origins["max_volumetric_flow_mm3_s"] = (
            "filament_max_volumetric_speed" if min(flows) == dump.number("filament_max_volumetric_speed")
            else "max_volumetric_speed")

    hotend, bed = to_dict(defaults.hotend), to_dict(defaults.bed)
    for heater, keys, name in ((hotend, _HOTEND_TARGET_KEYS, "hotend"), (bed, _BED_TARGET_KEYS, "bed")):
        targets = [(v, k) for k in keys for v in dump.numbers(k)]
        if targets:
            highest, key = max(targets)
            if highest > heater["max_temp_c"]:
                heater["max_temp_c"] = highest
                origins[f"{name}.max_temp_c"] = key
    data["hotend"], data["bed"] = hotend, bed
    return _build_profile(data, str(path), origins, dump.origin)


def _bed_points(dump: _Dump, key: str) -> tuple[list[float], list[float]]:
    """X and Y coordinates of a ``bed_shape``/``printable_area`` polygon (``0x0,220x0,220x220,0x220``)."""
    xs, ys = [], []
    for point in (dump.text(key) or "").split(","):
        x_text, sep, y_text = point.strip().partition("x")
        x, y = _parse_float(x_text), _parse_float(y_text)
        if not sep or x is None or y is None:
            raise ConfigError(f"{dump.origin(key)}: expected corner points like '0x0,220x0,220x220,0x220'")
        xs.append(x)
        ys.append(y)
    if len(xs) < 3 or min(xs) == max(xs) or min(ys) == max(ys):
        raise ConfigError(f"{dump.origin(key)}: the bed polygon has no area")
    return xs, ys
