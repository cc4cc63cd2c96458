"""The safety policy: what the validator allows beyond the printer profile's own limits (YAML 1:1)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sim_bridge.commands import forbidden_reason
from sim_bridge.config import ConfigError, check_ranges, load_yaml, ranged

DEFAULT_TUNING_COMMANDS = ("M221", "M220", "M104", "M106", "M107", "SET_PRESSURE_ADVANCE")
"""Commands a supervisor may send during a print (the windows of ``envs.supervisor``)."""


@dataclass(frozen=True)
class SafetyPolicy:
    """Per-printer additions and tighter caps on top of the printer profile (see docs/safety.md)."""

    allow_commands: list[str] = field(default_factory=list)
    """Extra commands a program may use on this printer (its own macros, vendor codes), case-insensitive.
    A forbidden command cannot be allowed: the policy fails to load."""
    max_hotend_temp_c: float | None = ranged(None, 0.0, 500.0)
    """Hotend target cap below the profile's ``max_temp`` (``None``: the profile's)."""
    max_bed_temp_c: float | None = ranged(None, 0.0, 200.0)
    """Bed target cap below the profile's ``max_temp`` (``None``: the profile's)."""
    max_feed_mm_s: float | None = ranged(None, 0.1, 5000.0)
    """Largest F of a move (``None``: the profile's ``max_velocity_mm_s``)."""
    min_z_mm: float = ranged(0.0, -10.0, 10.0)
    """Machine Z of the bed surface: no move may go below it, no extrusion may happen at or below it."""
    max_gcode_offset_mm: float = ranged(1.0, 0.0, 50.0)
    """Largest ``SET_GCODE_OFFSET`` on any axis (babystepping, not moving the print)."""
    flow_percent_min: float = ranged(80.0, 1.0, 1000.0)
    """Lowest extrusion factor (``M221 S``) in programs and live tuning."""
    flow_percent_max: float = ranged(120.0, 1.0, 1000.0)
    """Highest extrusion factor (``M221 S``)."""
    speed_percent_min: float = ranged(50.0, 1.0, 1000.0)
    """Lowest speed factor (``M220 S``)."""
    speed_percent_max: float = ranged(150.0, 1.0, 1000.0)
    """Highest speed factor (``M220 S``)."""
    tuning_hotend_step_c: float = ranged(15.0, 0.0, 100.0)
    """Live tuning: a hotend target must stay within this of the job's temperature."""
    tuning_bed_step_c: float = ranged(10.0, 0.0, 100.0)
    """Live tuning: a bed target must stay within this of the job's temperature (if M140 is allowed)."""
    tuning_fan_pwm_max: float = ranged(255.0, 0.0, 255.0)
    """Live tuning: highest ``M106 S``."""
    tuning_pressure_advance_max_s: float = ranged(0.2, 0.0, 2.0)
    """Live tuning: highest ``SET_PRESSURE_ADVANCE ADVANCE=``."""
    tuning_max_commands: int = ranged(8, 1, 1000)
    """Live tuning: commands accepted in one batch; later ones are refused."""
    tuning_commands: list[str] = field(default_factory=lambda: list(DEFAULT_TUNING_COMMANDS))
    """Live tuning: the commands a supervisor may send (``M140`` may be added)."""
    watchdog_heater_deviation_c: float = ranged(15.0, 1.0, 200.0)
    """Deployment watchdog: a heater this far from its target (once it had reached it) …"""
    watchdog_heater_deviation_s: float = ranged(10.0, 0.5, 600.0)
    """… for this long is a fault (thermal runaway that Klipper's own verify_heater has not caught yet)."""
    watchdog_telemetry_timeout_s: float = ranged(5.0, 0.5, 300.0)
    """Deployment watchdog: no message from the printer for this long (a dropped websocket) is a fault."""
    max_findings_per_rule: int = ranged(50, 1, 100000)
    """Findings listed per rule; the rest are counted in one last finding of that rule."""

    def __post_init__(self) -> None:
        check_ranges(self)
        upper = [c.strip().upper() for c in self.allow_commands]
        bad = sorted(c for c in upper if forbidden_reason(c))
        if bad:
            raise ConfigError(f"allow_commands: {', '.join(bad)} cannot be allowed: forbidden on every printer "
                              f"({forbidden_reason(bad[0])})")
        if self.flow_percent_min > self.flow_percent_max or self.speed_percent_min > self.speed_percent_max:
            raise ConfigError("flow_percent_min/max and speed_percent_min/max: the minimum must not exceed the "
                              "maximum")
        known = {"M221", "M220", "M104", "M140", "M106", "M107", "SET_PRESSURE_ADVANCE"}
        unknown = sorted({c.upper() for c in self.tuning_commands} - known)
        if unknown:
            raise ConfigError(f"tuning_commands: {', '.join(unknown)} unknown, choose from {', '.join(sorted(known))}")
        # Normalised once so lookups need not care how the YAML spelled them.
        object.__setattr__(self, "allow_commands", upper)
        object.__setattr__(self, "tuning_commands", [c.upper() for c in self.tuning_commands])


def load_policy(path: str | os.PathLike[str]) -> SafetyPolicy:
    """Load and validate a policy YAML (keys are the field names of :class:`SafetyPolicy`)."""
    return load_yaml(SafetyPolicy, path)

