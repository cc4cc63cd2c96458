"""Randomisation: the ranges (one config), and the changes they make to a running simulator.

The ranges live in ``configs/randomization.yaml``, mapped 1:1 onto :class:`RandomizationConfig` (four
sections: the hidden physics of ``PrintSupervisor`` episodes, printer and material parameters for domain
randomisation, sensor imperfections, and fault rates). The mutators change a simulator's physics between
runs (:func:`replace_profile`, :func:`scale_melt_capacity`, :func:`clog`, :func:`randomize_simulator`); the
gym wrappers that apply them at reset or per step are :mod:`envs.wrappers`'s, and the GRPO reward's
randomised printers (:func:`envs.scoring.layer_feedback`) use them directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim_bridge.config import ConfigError, check_ranges, load_yaml, ranged
from sim_bridge.simulator import Simulator
from sim_bridge.thermal import melt_capacity_mm3_s

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "randomization.yaml"


def _check_pairs(obj: Any) -> None:
    """Every list field is a ``[low, high]`` range with low ≤ high."""
    check_ranges(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, (list, tuple)) and (len(value) != 2 or value[0] > value[1]):
            raise ConfigError(f"{f.name} = {list(value)!r}: must be a range [low, high] with low <= high")


@dataclass(frozen=True)
class SupervisorPhysicsRanges:
    """Hidden physics of a ``PrintSupervisor`` episode, each drawn uniformly once per episode."""

    filament_diameter_factor: list[float] = ranged([0.95, 1.05], 0.5, 1.5)
    """True over nominal filament diameter; the delivered material scales with its square."""
    melt_capacity_factor: list[float] = ranged([0.5, 1.2], 0.05, 5.0)
    """Scales the hotend's melt capacity curve (capacity and its gain per kelvin) against the profile."""
    thermistor_offset_c: list[float] = ranged([-10.0, 10.0], -50.0, 50.0)
    """True hotend temperature minus the reading (the PID regulates the reading; the melt sees the truth)."""
    bed_adhesion_gap_factor: list[float] = ranged([0.4, 1.0], 0.05, 3.0)
    """Largest nozzle-to-bed gap that still adheres, in nozzle diameters (a first layer printed higher
    than this does not stick: ``first_layer_too_high``)."""
    fan_efficacy: list[float] = ranged([0.3, 1.0], 0.0, 1.0)
    """Fraction of the commanded part-fan airflow delivered (overhang cooling, hotend cooling)."""
    clog_probability: float = ranged(0.4, 0.0, 1.0)
    """Chance that a partial clog starts during the episode (at a random layer after the first)."""
    clog_flow_fraction: list[float] = ranged([0.4, 0.85], 0.01, 1.0)
    """A clog leaves the hotend able to melt this fraction of the job's peak printing flow (at the job's
    temperature; hotter melts more), so it starves the print until speed or temperature change."""

    def __post_init__(self) -> None:
        _check_pairs(self)


@dataclass(frozen=True)
class PrinterRanges:
    """Printer and material parameters :class:`DomainRandomization` perturbs at each reset (uniform
    factors on the profile's values, or offsets)."""

    max_velocity_factor: list[float] = ranged([0.8, 1.2], 0.1, 10.0)
    """Toolhead speed limit."""
    max_accel_factor: list[float] = ranged([0.6, 1.2], 0.1, 10.0)
    """Toolhead acceleration limit."""
    square_corner_velocity_factor: list[float] = ranged([0.8, 1.2], 0.1, 10.0)
    """Klipper's square-corner velocity."""
    hotend_power_factor: list[float] = ranged([0.85, 1.1], 0.1, 10.0)
    """Hotend heater power (cartridge tolerance, supply voltage)."""
    hotend_heat_capacity_factor: list[float] = ranged([0.85, 1.15], 0.1, 10.0)
    """Heat capacity of the hotend block."""
    hotend_loss_factor: list[float] = ranged([0.8, 1.25], 0.1, 10.0)
    """Hotend heat loss to ambient (sock, draughts)."""
    bed_power_factor: list[float] = ranged([0.85, 1.1], 0.1, 10.0)
    """Bed heater power."""
    bed_loss_factor: list[float] = ranged([0.8, 1.25], 0.1, 10.0)
    """Bed heat loss to ambient (enclosure or none)."""
    ambient_temp_c: list[float] = ranged([18.0, 32.0], -20.0, 60.0)
    """Room temperature."""
    melt_capacity_factor: list[float] = ranged([0.8, 1.2], 0.05, 5.0)
    """Hotend melt capacity curve (heater block, nozzle)."""
    filament_diameter_factor: list[float] = ranged([0.98, 1.02], 0.5, 1.5)
    """True over nominal filament diameter (spool tolerance ±0.03 mm on 1.75 mm)."""
    max_bridge_factor: list[float] = ranged([0.7, 1.2], 0.05, 10.0)
    """Longest span the material bridges."""
    fan_efficacy_factor: list[float] = ranged([0.8, 1.0], 0.0, 1.0)
    """Scales the part fan's delivered airflow (dust, wear)."""

    def __post_init__(self) -> None:
        _check_pairs(self)


@dataclass(frozen=True)
class SensorRanges:
    """Sensor imperfections :class:`SensorNoise` adds to the telemetry (standard deviations, rates)."""

    temperature_noise_c: float = ranged(0.5, 0.0, 50.0)
    """Gaussian noise on temperature readings."""
    ratio_noise: float = ranged(0.02, 0.0, 1.0)
    """Gaussian noise on measured ratios (flow, width, volume); also the relative noise on every component
    of an observation whose fields are unknown."""
    length_noise_mm: float = ranged(0.01, 0.0, 10.0)
    """Gaussian noise on measured lengths (layer height)."""
    flow_noise_mm3_s: float = ranged(0.05, 0.0, 100.0)
    """Gaussian noise on measured volumetric flow."""
    drop_probability: float = ranged(0.03, 0.0, 1.0)
    """Chance that a reading is dropped in a step (the last delivered value is held)."""
    delay_steps: list[int] = ranged([0, 1], 0, 100)
    """Observations arrive this many steps late (drawn per episode, both ends included)."""

    def __post_init__(self) -> None:
        _check_pairs(self)


@dataclass(frozen=True)
class FaultRanges:
    """Rare faults :class:`RareFaults` injects, each checked once per step (before the step runs)."""

    layer_shift_probability: float = ranged(0.02, 0.0, 1.0)
    """Chance per layer that the toolhead loses steps: every later layer is offset in X/Y."""
    layer_shift_mm: list[float] = ranged([0.5, 3.0], 0.0, 50.0)
    """Size of a layer shift (direction uniform)."""
    clog_probability: float = ranged(0.02, 0.0, 1.0)
    """Chance per layer that a partial clog starts."""
    clog_flow_fraction: list[float] = ranged([0.4, 0.85], 0.01, 1.0)
    """Fraction of the print's peak flow a clogged hotend still melts (as for the supervisor's clogs)."""
    heater_fault_probability: float = ranged(0.01, 0.0, 1.0)
    """Chance per layer that the hotend heater loses power (failing cartridge or connector)."""
    heater_power_fraction: list[float] = ranged([0.3, 0.7], 0.0, 1.0)
    """Hotend heater power left after a heater fault."""

    def __post_init__(self) -> None:
        _check_pairs(self)


@dataclass(frozen=True)
class RandomizationConfig:
    """All randomisation ranges (``configs/randomization.yaml``, keys 1:1)."""

    supervisor: SupervisorPhysicsRanges = field(default_factory=SupervisorPhysicsRanges)
    """Hidden physics of ``PrintSupervisor`` episodes."""
    printer: PrinterRanges = field(default_factory=PrinterRanges)
    """Domain randomisation of printer and material parameters."""
    sensor: SensorRanges = field(default_factory=SensorRanges)
    """Sensor noise, dropped readings and delays."""
    faults: FaultRanges = field(default_factory=FaultRanges)
    """Rare faults: layer shift, clog, heater fault."""


def load_randomization(config: RandomizationConfig | str | Path | None = None) -> RandomizationConfig:
    """The config itself, a YAML file, or (``None``) the bundled ``configs/randomization.yaml``.

    Without the bundled file (an installed package) the dataclass defaults, which the file mirrors, apply.
    """
    if isinstance(config, RandomizationConfig):
        return config
    if config is None:
        return load_yaml(RandomizationConfig, DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else (
            RandomizationConfig())
    return load_yaml(RandomizationConfig, config)


def uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    """A uniform draw within ``[low, high]``."""
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


# -- changing a running simulator's physics ----------------------------------------------------------------
def replace_profile(sim: Simulator, **changes: Any) -> None:
    """Change the simulated printer's profile between runs, refreshing what the simulator derived from it.

    Heater constants and motion limits are copied into the simulator when it starts, so they are refreshed
    here; the limits keep any change a program made (``SET_VELOCITY_LIMIT``) as a ratio.
    """
    sim.set_profile(sim.profile.replace(**changes))


def scale_melt_capacity(sim: Simulator, factor: float) -> None:
    """Scale the melt capacity curve (capacity and its gain per kelvin), as a worn or clogged nozzle does."""
    p = sim.profile
    replace_profile(sim, max_volumetric_flow_mm3_s=max(0.1, p.max_volumetric_flow_mm3_s * factor),
                    melt_flow_per_c_mm3_s=p.melt_flow_per_c_mm3_s * factor)


def clog(sim: Simulator, demand_mm3_s: float, flow_fraction: float, hotend_temp_c: float) -> float:
    """Start a partial clog: at ``hotend_temp_c`` the hotend then melts only ``flow_fraction`` of
    ``demand_mm3_s``; returns the factor the capacity curve was scaled by (1 if it already melts less)."""
    # The hotend melts at its true temperature: the reading plus the hidden thermistor offset.
    capacity = melt_capacity_mm3_s(sim.profile, sim.material, hotend_temp_c + sim.hotend_offset_c)
    factor = min(1.0, flow_fraction * demand_mm3_s / capacity) if capacity > 0 else 1.0
    if factor < 1.0:
        scale_melt_capacity(sim, factor)
    return factor


def randomize_simulator(sim: Simulator, r: PrinterRanges, rng: np.random.Generator) -> dict[str, float]:
    """Perturb a simulator's printer and material within ``r`` (one uniform draw per field); the draws."""
    drawn = {f.name: uniform(rng, getattr(r, f.name)) for f in dataclasses.fields(r)}
    p = sim.profile
    hot, bed = p.hotend, p.bed
    replace_profile(
        sim,
        max_velocity_mm_s=p.max_velocity_mm_s * drawn["max_velocity_factor"],
        max_accel_mm_s2=p.max_accel_mm_s2 * drawn["max_accel_factor"],
        square_corner_velocity_mm_s=p.square_corner_velocity_mm_s * drawn["square_corner_velocity_factor"],
        hotend=dataclasses.replace(hot, power_w=hot.power_w * drawn["hotend_power_factor"],
                                   heat_capacity_j_per_k=hot.heat_capacity_j_per_k
                                   * drawn["hotend_heat_capacity_factor"],
                                   loss_w_per_k=hot.loss_w_per_k * drawn["hotend_loss_factor"]),
        bed=dataclasses.replace(bed, power_w=bed.power_w * drawn["bed_power_factor"],
                                loss_w_per_k=bed.loss_w_per_k * drawn["bed_loss_factor"]),
        ambient_temp_c=drawn["ambient_temp_c"],
        part_fan_max_rpm_fraction=p.part_fan_max_rpm_fraction * drawn["fan_efficacy_factor"])
    scale_melt_capacity(sim, drawn["melt_capacity_factor"])
    sim.extrusion_scale *= drawn["filament_diameter_factor"] ** 2
    sim.material = dataclasses.replace(sim.material,
                                       max_bridge_mm=sim.material.max_bridge_mm * drawn["max_bridge_factor"])
    return drawn
