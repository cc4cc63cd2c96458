"""What is behind the virtual MCU's pins: read from the printer.cfg Klippy runs, plus the printer profile.

The MCU sees only pin numbers (``config_stepper oid=3 step_pin=1 dir_pin=2 …``); the printer.cfg says what
each pin drives. :func:`read_wiring` reads, for every pin it can give physics to:

- **steppers** (``[stepper_x]`` … ``[extruder]``): step and dir pin, distance per step
  (``rotation_distance / (full_steps_per_rotation × microsteps)``, or ``step_distance``), dir inverted
  (``!`` on ``dir_pin``);
- **endstops** (``endstop_pin`` of the rails): the axis, inverted or not (``!``), ``position_endstop`` and
  the homing direction (``homing_positive_dir``, else Klipper's rule: towards max when the endstop is in the
  upper quarter of the range);
- **heaters** (``[extruder]``, ``[heater_bed]``): heater pin, sensor pin, the thermistor (its sensor type or
  a ``[thermistor NAME]`` section), ``pullup_resistor`` and ``inline_resistor``, and the physics of the
  profile's heater (:class:`~sim_bridge.profiles.HeaterProfile`);
- **fans** (``[fan]``): the part-cooling fan, whose duty adds the hotend's ``fan_loss_w_per_k``.

Any other pin is still a working output or input (a stepper enable line, a heater fan): it has no physics.

Thermistors are the NTC sensors of Klippy's own table (their defining points are datasheet values) and
custom sections. Klippy converts an ADC reading to a temperature with the Steinhart–Hart equation
``1/T = c1 + c2·ln R + c3·(ln R)³`` fitted through three (temperature, resistance) points, or with
``c3 = 0`` from a β value; the MCU runs that the other way (temperature → resistance → ADC fraction
``R / (R + pull-up)``), so what Klippy reads back is the simulated temperature.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sim_bridge.config import ConfigError
from sim_bridge.klipper_cfg import CfgSection, KlipperConfig
from sim_bridge.klippy.dictionary import ANALOG_PIN_START, GPIO_LINES_PER_CHIP
from sim_bridge.profiles import HeaterProfile, PrinterProfile

KELVIN_OFFSET_C = 273.15
DEFAULT_PULLUP_OHM = 4700.0
"""Klipper's ``pullup_resistor`` default."""

THERMISTOR_POINTS: dict[str, tuple[tuple[float, float], ...]] = {
    "EPCOS 100K B57560G104F": ((25.0, 100000.0), (150.0, 1641.9), (250.0, 226.15)),
    "ATC Semitec 104GT-2": ((20.0, 126800.0), (150.0, 1360.0), (300.0, 80.65)),
    "ATC Semitec 104NT-4-R025H42G": ((25.0, 100000.0), (160.0, 1074.0), (300.0, 82.78)),
    "SliceEngineering 450": ((25.0, 500000.0), (200.0, 3734.0), (400.0, 240.0)),
    "TDK NTCG104LH104JT1": ((25.0, 100000.0), (50.0, 31230.0), (125.0, 2066.0)),
}
"""Sensor types given by three (°C, Ω) points."""
THERMISTOR_BETA: dict[str, tuple[float, float, float]] = {
    "Generic 3950": (25.0, 100000.0, 3950.0),
    "NTC 100K MGB18-104F39050L32": (25.0, 100000.0, 4100.0),
}
"""Sensor types given by (°C, Ω, β)."""
AXES = "xyz"
RAIL_SECTIONS = ("stepper_x", "stepper_y", "stepper_z")
HEATER_SECTIONS = ("extruder", "heater_bed")
FRAME_MARGIN_MM = 5.0
"""How far past the end of its range opposite the endstop a carriage goes before it hits the frame (and its
motor skips)."""
SWITCH_OVERTRAVEL_MM = 1.0
"""How far past its endstop's trigger point a carriage goes before it hits the frame (the switch's travel)."""
START_FROM_ENDSTOP_MM = (50.0, 50.0, 5.0)
"""Where the carriages are at power-on: this far from each endstop, inside the range (or mid-range when the
range is shorter): a printer parked near home after its last print. Homing then takes the time it takes a
real printer to travel that far."""


@dataclass(frozen=True)
class Thermistor:
    """An NTC thermistor as Klippy models it: ``1/T = c1 + c2·ln R + c3·(ln R)³``."""

    c1: float
    c2: float
    c3: float

    @classmethod
    def from_points(cls, points: tuple[tuple[float, float], ...]) -> Thermistor:
        (t1, r1), (t2, r2), (t3, r3) = points
        inv1, inv2, inv3 = (1.0 / (t + KELVIN_OFFSET_C) for t in (t1, t2, t3))
        ln1, ln2, ln3 = math.log(r1), math.log(r2), math.log(r3)
        d12, d13 = ln1 - ln2, ln1 - ln3
        cube12, cube13 = ln1 ** 3 - ln2 ** 3, ln1 ** 3 - ln3 ** 3
        c3 = ((inv1 - inv2) - (inv1 - inv3) * d12 / d13) / (cube12 - cube13 * d12 / d13)
        if c3 <= 0.0:
            # Klippy falls back to a β fit through the outer points when the cubic term comes out negative.
            return cls.from_beta(t1, r1, d13 / (inv1 - inv3))
        c2 = ((inv1 - inv2) - c3 * cube12) / d12
        return cls(inv1 - c2 * ln1 - c3 * ln1 ** 3, c2, c3)

    @classmethod
    def from_beta(cls, t1_c: float, r1_ohm: float, beta: float) -> Thermistor:
        c2 = 1.0 / beta
        return cls(1.0 / (t1_c + KELVIN_OFFSET_C) - c2 * math.log(r1_ohm), c2, 0.0)

    def temperature_c(self, resistance_ohm: float) -> float:
        ln_r = math.log(resistance_ohm)
        return 1.0 / (self.c1 + self.c2 * ln_r + self.c3 * ln_r ** 3) - KELVIN_OFFSET_C

    def resistance_ohm(self, temp_c: float) -> float:
        """The inverse of :meth:`temperature_c` (Newton's method on ln R; the cubic is monotonic)."""
        target = 1.0 / (temp_c + KELVIN_OFFSET_C)
        x = math.log(100000.0)
        for _ in range(50):
            f = self.c1 + self.c2 * x + self.c3 * x ** 3 - target
            step = f / (self.c2 + 3.0 * self.c3 * x * x)
            x -= step
            if abs(step) < 1e-12:
                break
        return math.exp(min(x, 700.0))


@dataclass(frozen=True)
class StepperWiring:
    name: str
    """Config section (``stepper_x``, ``extruder``)."""
    step_pin: int
    dir_pin: int
    step_dist_mm: float
    invert_dir: bool


@dataclass(frozen=True)
class EndstopWiring:
    axis: int
    """0, 1, 2 for X, Y, Z."""
    pin: int
    invert: bool
    position_endstop_mm: float
    homing_positive: bool


@dataclass(frozen=True)
class HeaterWiring:
    name: str
    """``extruder`` or ``heater_bed``: the name Klippy reports it under."""
    heater_pin: int
    sensor_pin: int
    thermistor: Thermistor
    pullup_ohm: float
    inline_ohm: float
    profile: HeaterProfile

    def adc_fraction(self, temp_c: float) -> float:
        """What the ADC reads (0 … 1 of full scale) with the thermistor at ``temp_c``."""
        r = self.thermistor.resistance_ohm(temp_c) + self.inline_ohm
        return r / (r + self.pullup_ohm)


@dataclass(frozen=True)
class Wiring:
    kinematics: str
    steppers: dict[int, StepperWiring]
    """By step pin."""
    endstops: dict[int, EndstopWiring]
    """By pin."""
    heaters: dict[int, HeaterWiring]
    """By heater pin."""
    sensors: dict[int, HeaterWiring]
    """By sensor pin."""
    fan_pins: frozenset[int]
    start_mm: tuple[float, float, float]
    """Where the carriages are at power-on (:data:`START_FROM_ENDSTOP_MM`)."""
    ambient_c: float
    travel_mm: tuple[tuple[float, float], ...] = ((-1e9, 1e9),) * 3
    """Per axis, where the frame stops the carriage (:data:`SWITCH_OVERTRAVEL_MM` past the endstop,
    :data:`FRAME_MARGIN_MM` past the other end of the range)."""
    rails: dict[str, int] = field(default_factory=dict)
    """Rail stepper section → axis (``stepper_x`` → 0)."""


_PIN_RE = re.compile(r"^(?:gpiochip(?P<chip>\d+)/)?gpio(?P<line>\d+)$|^analog(?P<analog>\d+)$")


def pin_number(text: str, where: str) -> tuple[int, bool]:
    """``^!gpiochip0/gpio7`` → (7, inverted); the numbers of the derived dictionary's ``pin`` enumeration."""
    name = text.strip()
    invert = False
    while name[:1] in ("^", "~", "!"):
        invert ^= name[0] == "!"
        name = name[1:].strip()
    name = name.split(":", 1)[1].strip() if ":" in name else name
    match = _PIN_RE.match(name)
    if not match:
        raise ConfigError(f"{where}: pin {text!r} is not a pin of the virtual MCU "
                          "(gpiochipN/gpioM, gpioM or analogN)")
    if match.group("analog") is not None:
        return ANALOG_PIN_START + int(match.group("analog")), invert
    return int(match.group("chip") or 0) * GPIO_LINES_PER_CHIP + int(match.group("line")), invert


def _thermistor(cfg: KlipperConfig, section: CfgSection) -> Thermistor:
    kind = " ".join(str(cfg.text(section, "sensor_type")).split())
    if kind in THERMISTOR_POINTS:
        return Thermistor.from_points(THERMISTOR_POINTS[kind])
    if kind in THERMISTOR_BETA:
        return Thermistor.from_beta(*THERMISTOR_BETA[kind])
    custom = cfg.section(f"thermistor {kind}")
    if custom is None:
        known = sorted([*THERMISTOR_POINTS, *THERMISTOR_BETA])
        raise ConfigError(f"{cfg.origin(section, 'sensor_type')}: the virtual MCU models NTC thermistors: "
                          f"one of {known} or a [thermistor {kind}] section")
    t1, r1 = cfg.number(custom, "temperature1"), cfg.number(custom, "resistance1", above=0.0)
    if custom.options.get("beta") is not None:
        return Thermistor.from_beta(t1, r1, cfg.number(custom, "beta", above=0.0))
    return Thermistor.from_points(((t1, r1), (cfg.number(custom, "temperature2"),
                                              cfg.number(custom, "resistance2", above=0.0)),
                                   (cfg.number(custom, "temperature3"),
                                    cfg.number(custom, "resistance3", above=0.0))))


def _step_dist(cfg: KlipperConfig, section: CfgSection) -> float:
    if section.options.get("step_distance") is not None:
        return float(cfg.number(section, "step_distance", above=0.0))
    rotation = float(cfg.number(section, "rotation_distance", above=0.0))
    steps = float(cfg.number(section, "full_steps_per_rotation", 200.0, above=0.0))
    micro = float(cfg.number(section, "microsteps", above=0.0))
    gear = 1.0
    ratio = section.options.get("gear_ratio")
    if ratio is not None and ratio.value.strip():
        for pair in ratio.value.split(","):
            a, _, b = pair.partition(":")
            gear *= float(a) / float(b)
    return rotation / (steps * micro * gear)


def read_wiring(cfg_path: str | Path, profile: PrinterProfile) -> Wiring:
    """The wiring of the printer.cfg at ``cfg_path``; ``profile`` gives the heaters' physics."""
    cfg = KlipperConfig(Path(cfg_path))
    printer = cfg.require_section("printer")
    kinematics = str(cfg.text(printer, "kinematics")).strip()
    if kinematics not in ("cartesian", "corexy"):
        raise ConfigError(f"{cfg.origin(printer, 'kinematics')}: the virtual MCU models cartesian and corexy")
    steppers: dict[int, StepperWiring] = {}
    endstops: dict[int, EndstopWiring] = {}
    rails: dict[str, int] = {}
    start = [0.0, 0.0, 0.0]
    travel = []
    for axis, name in enumerate(RAIL_SECTIONS):
        section = cfg.require_section(name)
        rails[name] = axis
        step_pin, _ = pin_number(cfg.text(section, "step_pin"), cfg.origin(section, "step_pin"))
        dir_pin, invert_dir = pin_number(cfg.text(section, "dir_pin"), cfg.origin(section, "dir_pin"))
        steppers[step_pin] = StepperWiring(name, step_pin, dir_pin, _step_dist(cfg, section), invert_dir)
        low = float(cfg.number(section, "position_min", 0.0))
        high = float(cfg.number(section, "position_max"))
        endstop_at = float(cfg.number(section, "position_endstop"))
        positive = section.options.get("homing_positive_dir")
        if positive is not None:
            homing_positive = positive.value.strip().lower() in ("true", "1", "yes")
        else:
            homing_positive = endstop_at >= high - (high - low) / 4.0
        pin, invert = pin_number(cfg.text(section, "endstop_pin"), cfg.origin(section, "endstop_pin"))
        endstops[pin] = EndstopWiring(axis, pin, invert, endstop_at, homing_positive)
        if homing_positive:
            travel.append((low - FRAME_MARGIN_MM, endstop_at + SWITCH_OVERTRAVEL_MM))
        else:
            travel.append((endstop_at - SWITCH_OVERTRAVEL_MM, high + FRAME_MARGIN_MM))
        offset = min(START_FROM_ENDSTOP_MM[axis], (high - low) / 2.0)
        start[axis] = endstop_at - offset if homing_positive else endstop_at + offset
    heaters: dict[int, HeaterWiring] = {}
    sensors: dict[int, HeaterWiring] = {}
    for name in HEATER_SECTIONS:
        section = cfg.section(name)
        if section is None:
            continue
        if name == "extruder":
            step_pin, _ = pin_number(cfg.text(section, "step_pin"), cfg.origin(section, "step_pin"))
            dir_pin, invert_dir = pin_number(cfg.text(section, "dir_pin"), cfg.origin(section, "dir_pin"))
            steppers[step_pin] = StepperWiring(name, step_pin, dir_pin, _step_dist(cfg, section), invert_dir)
        heater_pin, _ = pin_number(cfg.text(section, "heater_pin"), cfg.origin(section, "heater_pin"))
        sensor_pin, _ = pin_number(cfg.text(section, "sensor_pin"), cfg.origin(section, "sensor_pin"))
        wiring = HeaterWiring(name, heater_pin, sensor_pin, _thermistor(cfg, section),
                              float(cfg.number(section, "pullup_resistor", DEFAULT_PULLUP_OHM, above=0.0)),
                              float(cfg.number(section, "inline_resistor", 0.0)),
                              profile.hotend if name == "extruder" else profile.bed)
        heaters[heater_pin] = wiring
        sensors[sensor_pin] = wiring
    fans: set[int] = set()
    fan = cfg.section("fan")
    if fan is not None:
        fans.add(pin_number(cfg.text(fan, "pin"), cfg.origin(fan, "pin"))[0])
    return Wiring(kinematics, steppers, endstops, heaters, sensors, frozenset(fans),
                  (start[0], start[1], start[2]), profile.ambient_temp_c, tuple(travel), rails)
