"""The hidden physics of a supervisor episode, and the simulated printer that has them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from envs.randomization import SupervisorPhysicsRanges, replace_profile, scale_melt_capacity, uniform
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_printer
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.simulator import Simulator

PROFILES_KEPT = 16
"""Printer profiles :func:`printer` keeps (profiles are immutable)."""


@lru_cache(maxsize=PROFILES_KEPT)
def printer(name: str) -> PrinterProfile:
    """A printer profile by name or path, loaded once."""
    return load_printer(name)


@dataclass(frozen=True)
class HiddenPhysics:
    """The hidden parameters of one episode (see :class:`envs.randomization.SupervisorPhysicsRanges`)."""

    filament_diameter_factor: float = 1.0
    melt_capacity_factor: float = 1.0
    thermistor_offset_c: float = 0.0
    bed_adhesion_gap_factor: float = 1.0
    fan_efficacy: float = 1.0
    clog_layer: int = -1
    """Layer before which a partial clog starts (-1: none)."""
    clog_flow_fraction: float = 1.0

    @staticmethod
    def draw(rng: np.random.Generator, ranges: SupervisorPhysicsRanges, layer_count: int) -> HiddenPhysics:
        """Draw every parameter (always the same number of draws, so streams stay aligned)."""
        values = {name: uniform(rng, getattr(ranges, name)) for name in (
            "filament_diameter_factor", "melt_capacity_factor", "thermistor_offset_c",
            "bed_adhesion_gap_factor", "fan_efficacy", "clog_flow_fraction")}
        clogged = rng.random() < ranges.clog_probability
        layer = int(rng.integers(1, max(layer_count, 2)))
        return HiddenPhysics(**values, clog_layer=layer if clogged and layer_count > 1 else -1)


def hidden_simulator(profile: PrinterProfile, material: Material | str, hidden: HiddenPhysics,
                     resolution_mm: float) -> Simulator:
    """A fresh simulated printer with ``hidden``'s physics (a clog starts later, :func:`envs.randomization.clog`)."""
    options = SimOptions(resolution_mm=resolution_mm,
                         first_layer_max_gap_mm=max(0.01, hidden.bed_adhesion_gap_factor * profile.nozzle_diameter_mm))
    sim = Simulator(profile, material, options)
    sim.extrusion_scale = hidden.filament_diameter_factor ** 2
    sim.hotend_offset_c = hidden.thermistor_offset_c
    scale_melt_capacity(sim, hidden.melt_capacity_factor)
    replace_profile(sim, part_fan_max_rpm_fraction=hidden.fan_efficacy)
    return sim
