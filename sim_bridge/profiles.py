"""Printer profiles and materials: the dataclasses.

A :class:`PrinterProfile` describes one machine as the simulator and the validator need it: volume,
kinematics, motion limits for Klipper's planner (square-corner velocity) and Marlin's (jerk), extruder
limits in Klipper's terms, heaters with their thermal constants and PID gains, hotend melt capacity, and the
printer's own macros with what each does. Profiles are YAML files mapped 1:1 onto these dataclasses; every
value is range-checked on load, and an error names the key, the value and the allowed range. Loading (a
bundled name, a profile YAML, a Klipper ``printer.cfg``, a PrusaSlicer config) is
:func:`sim_bridge.printers.load_printer`.

Sources of the constants are in ``docs/simulator.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sim_bridge.config import ConfigError, check_ranges, ranged
from sim_bridge.klipper_defaults import (
    KLIPPER_CHECK_GAIN_TIME_EXTRUDER_S,
    KLIPPER_HOMING_RETRACT_MM,
    KLIPPER_INSTANTANEOUS_CORNER_VELOCITY_MM_S,
    KLIPPER_MAX_EXTRUDE_ONLY_DISTANCE_MM,
    KLIPPER_MIN_CRUISE_RATIO,
    KLIPPER_MIN_EXTRUDE_TEMP_C,
    KLIPPER_SQUARE_CORNER_VELOCITY_MM_S,
    KLIPPER_VERIFY_HEATER_DEFAULTS,
)

KINEMATICS = ("cartesian", "corexy")
"""Kinematics the simulator models."""
FIRMWARES = ("klipper", "marlin", "prunt")
"""Firmwares whose planners and errors the simulator follows."""


@dataclass(frozen=True)
class HeaterProfile:
    """A heater (hotend or bed) as a first-order thermal model under PID control."""

    min_temp_c: float = ranged(0.0, -50.0, 100.0)
    """Lowest allowed target/reading (Klipper ``min_temp``); a target of 0 always means off."""
    max_temp_c: float = ranged(250.0, 40.0, 500.0)
    """Highest allowed target (Klipper ``max_temp``); a higher target is an error."""
    power_w: float = ranged(40.0, 1.0, 5000.0)
    """Heater power at full duty."""
    heat_capacity_j_per_k: float = ranged(12.0, 0.1, 1.0e5)
    """Lumped heat capacity of the heated block (or bed plate)."""
    loss_w_per_k: float = ranged(0.055, 1.0e-4, 1000.0)
    """Heat loss to ambient per kelvin above ambient (convection and radiation, linearised)."""
    fan_loss_w_per_k: float = ranged(0.0, 0.0, 1000.0)
    """Extra loss per kelvin at full part-cooling fan (scaled linearly with fan duty)."""
    max_power: float = ranged(1.0, 0.0, 1.0)
    """Largest PWM duty the controller may command (Klipper ``max_power``)."""
    pid_kp: float = ranged(21.527, 0.0, 1000.0)
    """PID proportional gain, Klipper units (duty = gain × kelvin / 255)."""
    pid_ki: float = ranged(1.063, 0.0, 1000.0)
    """PID integral gain, Klipper units."""
    pid_kd: float = ranged(108.982, 0.0, 100000.0)
    """PID derivative gain, Klipper units."""
    check_gain_time_s: float = ranged(KLIPPER_CHECK_GAIN_TIME_EXTRUDER_S, 1.0, 3600.0)
    """verify_heater: time allowed to gain ``heating_gain_c`` while heating (20 s hotend, 60 s bed)."""
    heating_gain_c: float = ranged(KLIPPER_VERIFY_HEATER_DEFAULTS["heating_gain"], 0.1, 100.0)
    """verify_heater: minimum temperature rise expected within ``check_gain_time_s``."""
    hysteresis_c: float = ranged(KLIPPER_VERIFY_HEATER_DEFAULTS["hysteresis"], 0.1, 100.0)
    """verify_heater: band around the target inside which the heater counts as at temperature."""
    max_error_c_s: float = ranged(KLIPPER_VERIFY_HEATER_DEFAULTS["max_error"], 1.0, 10000.0)
    """verify_heater: accumulated degrees·seconds below target that trip a thermal-runaway error."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class MacroProfile:
    """A printer macro (``PRINT_START``, ``print_end`` …) and what it does, as the printer's config defines it."""

    name: str = ""
    """Macro name, matched case-insensitively."""
    homes: str = ranged("", choices=("", "XY", "XYZ", "Z"))
    """Axes the macro homes (``""`` for none)."""
    hotend_temp_params: list[str] = field(default_factory=list)
    """Argument names that carry the hotend target, first found wins (e.g. ``EXTRUDER``, ``EXTRUDER_TEMP``)."""
    bed_temp_params: list[str] = field(default_factory=list)
    """Argument names that carry the bed target (e.g. ``BED``, ``BED_TEMP``)."""
    waits_for_temperature: bool = True
    """Whether the macro waits for the targets it sets (M190/M109 inside)."""
    default_hotend_temp_c: float = ranged(0.0, 0.0, 500.0)
    """Hotend target used when no argument gives one (0: leave unchanged)."""
    default_bed_temp_c: float = ranged(0.0, 0.0, 200.0)
    """Bed target used when no argument gives one (0: leave unchanged)."""
    levels: bool = False
    """Whether the macro probes/levels the bed (mesh or Z tilt)."""
    purges: bool = False
    """Whether the macro prints a purge line (deposits material at the front of the bed)."""
    duration_s: float = ranged(0.0, 0.0, 3600.0)
    """Time the macro takes beyond homing and heating (probing, purging)."""
    ends_print: bool = False
    """True for end macros: heaters off, motors off afterwards."""
    park_position_mm: list[float] = field(default_factory=list)
    """Where the toolhead is left (X, Y), empty if unchanged."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PruntMotion:
    """Prunt's own motion limits (its ``Kinematics`` settings): what the ``prunt`` planner needs beyond the
    profile's ``max_velocity_mm_s`` (Prunt's maximum tangential velocity), ``max_accel_mm_s2`` (maximum
    acceleration) and ``max_feedrate_mm_s`` (axial velocity limits)."""

    jerk_mm_s3: float = ranged(3.0e5, 1.0, 1.0e12)
    """Maximum jerk along the path."""
    snap_mm_s4: float = ranged(3.0e8, 1.0, 1.0e16)
    """Maximum snap along the path."""
    crackle_mm_s5: float = ranged(3.0e12, 1.0, 1.0e20)
    """Maximum crackle along the path."""
    chord_error_mm: float = ranged(0.0035, 0.0, 10.0)
    """Largest distance at which a blended corner may pass the commanded corner."""
    ignore_e_in_xyze: bool = True
    """Feed rates are XYZ speeds (E rides along), as Prunt's "Ignore E in XYZE"."""
    instant_homing: bool = True
    """Homing is Prunt's "Set to value": ``G28`` takes no time and no motion."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PrinterProfile:
    """One printer: geometry, motion limits, extruder, heaters, melt capacity and macros."""

    name: str = "printer"
    """Profile name (bundled profiles are loaded by this name)."""
    description: str = ""
    """One line for people."""
    firmware: str = ranged("klipper", choices=FIRMWARES)
    """Firmware whose planner and errors the printer follows: ``klipper``, ``marlin`` or ``prunt``."""
    kinematics: str = ranged("cartesian", choices=KINEMATICS)
    """``cartesian`` (bed-slinger or gantry) or ``corexy``."""
    position_min_mm: list[float] = ranged([0.0, 0.0, 0.0], -1000.0, 1000.0)
    """Lowest reachable X, Y, Z (Klipper ``position_min``)."""
    position_max_mm: list[float] = ranged([220.0, 220.0, 250.0], 1.0, 2000.0)
    """Highest reachable X, Y, Z (Klipper ``position_max``)."""
    position_endstop_mm: list[float] = ranged([0.0, 0.0, 0.0], -1000.0, 2000.0)
    """Where homing leaves each axis (Klipper ``position_endstop``)."""
    homing_speed_mm_s: list[float] = ranged([50.0, 50.0, 5.0], 0.1, 1000.0)
    """Homing speed of X, Y, Z."""
    homing_retract_mm: float = ranged(KLIPPER_HOMING_RETRACT_MM, 0.0, 50.0)
    """Back-off after the first endstop touch (Klipper ``homing_retract_dist``)."""
    max_velocity_mm_s: float = ranged(300.0, 1.0, 5000.0)
    """Toolhead speed limit (Klipper ``max_velocity``)."""
    max_accel_mm_s2: float = ranged(3000.0, 1.0, 1.0e6)
    """Toolhead acceleration limit (Klipper ``max_accel``)."""
    minimum_cruise_ratio: float = ranged(KLIPPER_MIN_CRUISE_RATIO, 0.0, 0.99)
    """Fraction of each move that must be able to cruise (Klipper ``minimum_cruise_ratio``)."""
    square_corner_velocity_mm_s: float = ranged(KLIPPER_SQUARE_CORNER_VELOCITY_MM_S, 0.0, 1000.0)
    """Speed through a 90° corner (Klipper ``square_corner_velocity``)."""
    max_z_velocity_mm_s: float = ranged(5.0, 0.1, 1000.0)
    """Z speed limit."""
    max_z_accel_mm_s2: float = ranged(100.0, 1.0, 1.0e5)
    """Z acceleration limit."""
    max_feedrate_mm_s: list[float] = ranged([500.0, 500.0, 12.0, 120.0], 0.1, 5000.0)
    """Marlin per-axis speed limits X, Y, Z, E (``M203``)."""
    max_axis_accel_mm_s2: list[float] = ranged([3000.0, 3000.0, 100.0, 5000.0], 1.0, 1.0e6)
    """Marlin per-axis acceleration limits X, Y, Z, E (``M201``)."""
    print_accel_mm_s2: float = ranged(1250.0, 1.0, 1.0e6)
    """Marlin default acceleration of printing moves (``M204 P``/``S``)."""
    retract_accel_mm_s2: float = ranged(1250.0, 1.0, 1.0e6)
    """Marlin acceleration of extrude-only moves (``M204 R``)."""
    travel_accel_mm_s2: float = ranged(1250.0, 1.0, 1.0e6)
    """Marlin acceleration of non-extruding moves (``M204 T``)."""
    jerk_mm_s: list[float] = ranged([8.0, 8.0, 0.4, 4.5], 0.0, 1000.0)
    """Marlin instantaneous speed change allowed per axis X, Y, Z, E (``M205``)."""
    nozzle_diameter_mm: float = ranged(0.4, 0.05, 3.0)
    """Nozzle bore."""
    filament_diameter_mm: float = ranged(1.75, 0.5, 5.0)
    """Nominal filament diameter the printer is configured for."""
    min_extrude_temp_c: float = ranged(KLIPPER_MIN_EXTRUDE_TEMP_C, 0.0, 400.0)
    """Hotend temperature below which extrusion is refused (Klipper ``min_extrude_temp``)."""
    max_extrude_cross_section_mm2: float | None = ranged(None, 0.001, 100.0)
    """Largest extruded cross-section of a move; default 4 × nozzle² (Klipper)."""
    max_extrude_only_distance_mm: float = ranged(KLIPPER_MAX_EXTRUDE_ONLY_DISTANCE_MM, 0.0, 10000.0)
    """Longest extrude-only move (Klipper ``max_extrude_only_distance``)."""
    max_extrude_only_velocity_mm_s: float | None = ranged(None, 0.1, 1000.0)
    """Filament speed limit of extrude-only moves; default derived as Klipper does."""
    max_extrude_only_accel_mm_s2: float | None = ranged(None, 1.0, 1.0e6)
    """Filament acceleration limit of extrude-only moves; default derived as Klipper does."""
    instantaneous_corner_velocity_mm_s: float = ranged(KLIPPER_INSTANTANEOUS_CORNER_VELOCITY_MM_S, 0.0, 100.0)
    """Klipper extruder: largest instantaneous filament-speed change at a junction."""
    pressure_advance_s: float = ranged(0.0, 0.0, 2.0)
    """Pressure advance (seconds); does not change print time in Klipper."""
    hotend: HeaterProfile = field(default_factory=HeaterProfile)
    """The hotend heater."""
    bed: HeaterProfile = field(default_factory=lambda: HeaterProfile(
        max_temp_c=130.0, power_w=200.0, heat_capacity_j_per_k=600.0, loss_w_per_k=2.0, pid_kp=54.027,
        pid_ki=0.770, pid_kd=948.182, check_gain_time_s=60.0))
    """The heated bed."""
    ambient_temp_c: float = ranged(25.0, -20.0, 60.0)
    """Room temperature; heaters start here."""
    max_volumetric_flow_mm3_s: float = ranged(15.0, 0.1, 500.0)
    """Hotend melt capacity at ``melt_reference_temp_c`` (flow above it under-extrudes)."""
    melt_reference_temp_c: float = ranged(210.0, 100.0, 500.0)
    """Temperature at which ``max_volumetric_flow_mm3_s`` holds."""
    melt_flow_per_c_mm3_s: float = ranged(0.25, 0.0, 10.0)
    """Change of melt capacity per kelvin around the reference temperature."""
    part_fan_max_rpm_fraction: float = ranged(1.0, 0.0, 1.0)
    """Fraction of the commanded part-fan airflow actually delivered (1 for a healthy fan); scales the fan's
    cooling of the hotend and of overhangs."""
    prunt: PruntMotion = field(default_factory=PruntMotion)
    """Prunt's jerk, snap, crackle and chord-error limits (used by the ``prunt`` planner)."""
    macros: list[MacroProfile] = field(default_factory=list)
    """The printer's own macros (``PRINT_START`` …) and what they do."""

    def __post_init__(self) -> None:
        check_ranges(self)
        for key in ("position_min_mm", "position_max_mm", "position_endstop_mm", "homing_speed_mm_s"):
            if len(getattr(self, key)) != 3:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: needs 3 values (X, Y, Z)")
        for key in ("max_feedrate_mm_s", "max_axis_accel_mm_s2", "jerk_mm_s"):
            if len(getattr(self, key)) != 4:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: needs 4 values (X, Y, Z, E)")
        for axis, lo, hi in zip("XYZ", self.position_min_mm, self.position_max_mm, strict=True):
            if lo >= hi:
                raise ConfigError(f"position_min_mm/position_max_mm: {axis} range [{lo}, {hi}] is empty")

    @property
    def filament_area_mm2(self) -> float:
        """Cross-section of the nominal filament."""
        return math.pi * (self.filament_diameter_mm / 2.0) ** 2

    @property
    def max_cross_section_mm2(self) -> float:
        """Effective ``max_extrude_cross_section`` (Klipper's default when unset)."""
        if self.max_extrude_cross_section_mm2 is not None:
            return self.max_extrude_cross_section_mm2
        return 4.0 * self.nozzle_diameter_mm ** 2

    @property
    def bed_size_mm(self) -> tuple[float, float]:
        """Reachable X and Y extent."""
        return (self.position_max_mm[0] - self.position_min_mm[0],
                self.position_max_mm[1] - self.position_min_mm[1])

    def macro(self, name: str) -> MacroProfile | None:
        """The declared macro called ``name`` (case-insensitive), if any."""
        upper = name.upper()
        for macro in self.macros:
            if macro.name.upper() == upper:
                return macro
        return None

    def replace(self, **changes: object) -> PrinterProfile:
        """A copy with ``changes`` applied and validated."""
        new = dataclasses.replace(self, **changes)
        check_ranges(new)
        return new


@dataclass(frozen=True)
class Material:
    """A filament: temperature windows, density, and how well it prints over air."""

    name: str = "PLA"
    """Material name (bundled: PLA, PETG, ABS)."""
    hotend_temp_min_c: float = ranged(190.0, 100.0, 450.0)
    """Lowest recommended printing temperature."""
    hotend_temp_max_c: float = ranged(230.0, 100.0, 450.0)
    """Highest recommended printing temperature."""
    bed_temp_min_c: float = ranged(50.0, 0.0, 150.0)
    """Lowest recommended bed temperature (adhesion fails below)."""
    bed_temp_max_c: float = ranged(70.0, 0.0, 150.0)
    """Highest recommended bed temperature."""
    density_g_cm3: float = ranged(1.24, 0.5, 3.0)
    """Density, for filament mass."""
    melt_flow_factor: float = ranged(1.0, 0.1, 3.0)
    """Scales the hotend's melt capacity (PLA 1.0; PETG and ABS melt more slowly)."""
    max_overhang_deg: float = ranged(50.0, 0.0, 89.0)
    """Steepest overhang (from vertical) that prints without support."""
    max_bridge_mm: float = ranged(15.0, 0.0, 200.0)
    """Longest unsupported span that still bridges."""
    wants_cooling: bool = True
    """Whether overhangs and bridges need the part-cooling fan."""
    max_uncooled_span_mm: float = ranged(4.0, 0.0, 200.0)
    """Longest run a bead may hang adrift (a bridge or a cantilever) with the part fan off before it sags,
    for a material that ``wants_cooling``."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.hotend_temp_min_c > self.hotend_temp_max_c:
            raise ConfigError(f"{self.name}: hotend_temp_min_c {self.hotend_temp_min_c} > "
                              f"hotend_temp_max_c {self.hotend_temp_max_c}")
