"""Sim-to-real wrappers: domain randomisation, sensor noise and rare faults, seeded, ranges in one config.

The ranges live in ``configs/randomization.yaml``, mapped 1:1 onto :class:`RandomizationConfig` (four
sections: the hidden physics of ``PrintSupervisor`` episodes, printer and material parameters for
:class:`DomainRandomization`, sensor imperfections for :class:`SensorNoise`, and fault rates for
:class:`RareFaults`). Every draw comes from a generator spawned from the wrapped env's ``np_random`` at
reset, so a seeded reset gives the same episode, perturbations and noise included.

The wrappers work on any layerloop env that exposes its simulator as ``.sim`` (``GcodeWriter``,
``PrintSupervisor``); what needs more (a layer shift needs the env to generate the layers) is skipped
where the env cannot do it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim_bridge.config import ConfigError, check_ranges, load_yaml, ranged
from sim_bridge.simulator import Simulator
from sim_bridge.thermal import S_TARGET

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "randomization.yaml"
SEED_BOUND = 2**63 - 1


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


def spawn_rng(env: gym.Env) -> np.random.Generator:
    """A generator seeded from the env's own (seeded) ``np_random``."""
    return np.random.default_rng(int(env.unwrapped.np_random.integers(SEED_BOUND)))


# -- changing a running simulator's physics ----------------------------------------------------------------
def replace_profile(sim: Simulator, **changes: Any) -> None:
    """Change the simulated printer's profile between runs, refreshing what the simulator derived from it.

    Heater constants and motion limits are copied into the simulator when it starts, so they are refreshed
    here; the limits keep any change a program made (``SET_VELOCITY_LIMIT``) as a ratio.
    """
    sim.set_profile(sim.profile.replace(**changes))


def melt_capacity_mm3_s(sim: Simulator, hotend_temp_c: float) -> float:
    """What the hotend melts at a thermistor reading of ``hotend_temp_c`` (thermistor offset included)."""
    true_c = hotend_temp_c + sim.hotend_offset_c
    return sim.profile.melt_capacity_mm3_s(true_c) * sim.material.melt_flow_factor


def scale_melt_capacity(sim: Simulator, factor: float) -> None:
    """Scale the melt capacity curve (capacity and its gain per kelvin), as a worn or clogged nozzle does."""
    p = sim.profile
    replace_profile(sim, max_volumetric_flow_mm3_s=max(0.1, p.max_volumetric_flow_mm3_s * factor),
                    melt_flow_per_c_mm3_s=p.melt_flow_per_c_mm3_s * factor)


def clog(sim: Simulator, demand_mm3_s: float, flow_fraction: float, hotend_temp_c: float) -> float:
    """Start a partial clog: at ``hotend_temp_c`` the hotend then melts only ``flow_fraction`` of
    ``demand_mm3_s``; returns the factor the capacity curve was scaled by (1 if it already melts less)."""
    capacity = melt_capacity_mm3_s(sim, hotend_temp_c)
    factor = min(1.0, flow_fraction * demand_mm3_s / capacity) if capacity > 0 else 1.0
    if factor < 1.0:
        scale_melt_capacity(sim, factor)
    return factor


def _print_demand_mm3_s(env: gym.Env) -> float:
    """The print's peak flow: the env's own figure if it has one, else the highest flow run so far."""
    demand = getattr(env.unwrapped, "peak_flow_mm3_s", None)
    if demand:
        return float(demand)
    flows = [m.max_flow_mm3_s for m in env.unwrapped.sim.report().layers]
    return max(flows) if flows else env.unwrapped.sim.profile.max_volumetric_flow_mm3_s


def _target_temp_c(env: gym.Env) -> float:
    job = getattr(env.unwrapped, "job", None)
    return float(job.process.hotend_temp_c) if job is not None else float(env.unwrapped.sim.hot[S_TARGET])


# -- wrappers ----------------------------------------------------------------------------------------------
class DomainRandomization(gym.Wrapper):
    """Perturb printer and material parameters within ``config.printer``'s ranges at every reset.

    The perturbation applies after the wrapped env's reset (its set-up ran on the nominal printer, which
    leaves the heaters at temperature and the axes homed either way) and lasts the episode. The drawn
    values are in ``info["randomization"]``.
    """

    def __init__(self, env: gym.Env, config: RandomizationConfig | str | Path | None = None) -> None:
        super().__init__(env)
        self.ranges = load_randomization(config).printer

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        drawn = randomize_simulator(self.env.unwrapped.sim, self.ranges, spawn_rng(self.env))
        return obs, {**info, "randomization": drawn}


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


SENSOR_KINDS = ("temperature", "ratio", "length", "flow", "exact")
"""Telemetry field kinds an env may declare (``telemetry_kinds``); ``exact`` fields get no noise."""


class SensorNoise(gym.ObservationWrapper):
    """Gaussian noise on the telemetry, dropped readings (the last value is held) and delayed observations.

    The telemetry is the observation itself (a ``Box``) or its ``telemetry`` entry (a ``Dict``). Where the
    env declares ``telemetry_kinds`` (one of :data:`SENSOR_KINDS` per component) each component gets its
    kind's noise from ``config.sensor``; otherwise every component gets relative noise ``ratio_noise``.
    Noisy values are clipped to the space. With a ``prompt`` entry and an env method
    ``render_prompt(telemetry)``, the prompt is re-rendered from the noisy telemetry. The delay (steps) is
    drawn per episode; until enough steps have passed, the first observation is repeated.
    """

    def __init__(self, env: gym.Env, config: RandomizationConfig | str | Path | None = None) -> None:
        super().__init__(env)
        self.ranges = load_randomization(config).sensor
        space = env.observation_space
        self.key = None
        if isinstance(space, spaces.Dict):
            self.key = "telemetry" if "telemetry" in space.spaces else "state"
            space = space.spaces[self.key]
        if not isinstance(space, spaces.Box):
            raise TypeError(f"SensorNoise needs a Box observation (or a Dict with 'telemetry'), got {space}")
        self.box = space
        kinds = getattr(env.unwrapped, "telemetry_kinds", None)
        r = self.ranges
        std = {"temperature": r.temperature_noise_c, "ratio": r.ratio_noise, "length": r.length_noise_mm,
               "flow": r.flow_noise_mm3_s, "exact": 0.0}
        if kinds is not None:
            self.std = np.array([std[k] for k in kinds], dtype=np.float64)
            self.relative = False
        else:
            self.std = np.full(space.shape, r.ratio_noise, dtype=np.float64)
            self.relative = True
        self.rng = np.random.default_rng(0)
        self.held: np.ndarray | None = None
        self.queue: deque[Any] = deque()
        self.delay = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.rng = spawn_rng(self.env)
        lo, hi = self.ranges.delay_steps
        self.delay = int(self.rng.integers(lo, hi + 1))
        self.held = None
        self.queue.clear()
        return self.observation(obs), {**info, "sensor_delay_steps": self.delay}

    def observation(self, observation: Any) -> Any:
        vec = np.asarray(observation[self.key] if self.key else observation, dtype=np.float64)
        scale = np.abs(vec) if self.relative else 1.0
        noisy = vec + self.rng.normal(0.0, 1.0, vec.shape) * self.std * scale
        if self.held is not None:
            dropped = (self.rng.random(vec.shape) < self.ranges.drop_probability) & (self.std > 0)
            noisy = np.where(dropped, self.held, noisy)
        noisy = np.clip(noisy, self.box.low, self.box.high).astype(self.box.dtype)
        self.held = noisy.astype(np.float64)
        if self.key:
            out = dict(observation)
            out[self.key] = noisy
            render = getattr(self.env.unwrapped, "render_prompt", None)
            if "prompt" in out and render is not None:
                out["prompt"] = render(noisy)
        else:
            out = noisy
        self.queue.append(out)
        while len(self.queue) > self.delay + 1:
            self.queue.popleft()
        return self.queue[0]


class RareFaults(gym.Wrapper):
    """Inject rare faults before steps, at ``config.faults``' rates: layer shift, partial clog, heater fault.

    * **layer shift** — the toolhead loses steps: every later layer is printed offset by a few millimetres
      in X/Y. The env shifts the coordinates of the layers it generates (``shift_layers(dx, dy)``); never a
      ``G92`` (the safety layer forbids redefining positions). Skipped on envs that do not generate layers.
    * **clog** — the hotend then melts only a fraction of the print's peak flow (:func:`clog`).
    * **heater fault** — the hotend heater keeps only a fraction of its power; it may no longer hold its
      target, and Klipper's ``verify_heater`` may stop the print.

    The faults of each step are in ``info["faults"]``.
    """

    def __init__(self, env: gym.Env, config: RandomizationConfig | str | Path | None = None) -> None:
        super().__init__(env)
        self.ranges = load_randomization(config).faults
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.rng = spawn_rng(self.env)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        faults = self._inject()
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "faults": faults}

    def _inject(self) -> list[str]:
        r = self.ranges
        env = self.env.unwrapped
        sim = env.sim
        faults: list[str] = []
        # Draw every fault's dice each step, so the random stream does not depend on which faults fire.
        rolls = self.rng.random(3)
        shift = uniform(self.rng, r.layer_shift_mm)
        angle = float(self.rng.uniform(0.0, 2.0 * np.pi))
        fraction = uniform(self.rng, r.clog_flow_fraction)
        power = uniform(self.rng, r.heater_power_fraction)
        if rolls[0] < r.layer_shift_probability and hasattr(env, "shift_layers"):
            dx, dy = shift * np.cos(angle), shift * np.sin(angle)
            env.shift_layers(float(dx), float(dy))
            faults.append(f"layer_shift {dx:+.2f} {dy:+.2f} mm")
        if rolls[1] < r.clog_probability:
            factor = clog(sim, _print_demand_mm3_s(self.env), fraction, _target_temp_c(self.env))
            faults.append(f"clog: melt capacity x{factor:.2f}")
        if rolls[2] < r.heater_fault_probability:
            hot = sim.profile.hotend
            replace_profile(sim, hotend=dataclasses.replace(hot, power_w=max(1.0, hot.power_w * power)))
            faults.append(f"heater_fault: power x{power:.2f}")
        return faults
