"""Klipper's own defaults for the printer.cfg options layerloop reads (firmware facts, written once).

A printer.cfg that leaves an option out gets these values from Klipper (``toolhead.py``, ``extruder.py``,
``heaters.py``, ``verify_heater.py``, ``stepper.py``), so the printer.cfg reader
(:mod:`sim_bridge.klipper_cfg`) falls back to them and :class:`~sim_bridge.profiles.PrinterProfile` uses
them as its field defaults.
"""

from __future__ import annotations

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
"""Klipper's ``[verify_heater]`` defaults (``check_gain_time``: see the two constants below)."""
KLIPPER_CHECK_GAIN_TIME_EXTRUDER_S = 20.0
"""Klipper's default ``check_gain_time`` of an extruder heater."""
KLIPPER_CHECK_GAIN_TIME_BED_S = 60.0
"""Klipper's default ``check_gain_time`` of the heated bed."""
