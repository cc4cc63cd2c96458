"""Sim-to-real wrappers: domain randomisation, sensor noise and rare faults, seeded.

The ranges are :class:`~envs.randomization.RandomizationConfig`'s (``configs/randomization.yaml``), the
changes to the simulator :mod:`envs.randomization`'s. Every draw comes from a generator spawned from the
wrapped env's ``np_random`` at reset, so a seeded reset gives the same episode, perturbations and noise
included.

The wrappers work on any layerloop env that exposes its simulator as ``.sim`` (``GcodeWriter``,
``PrintSupervisor``); what needs more (a layer shift needs the env to generate the layers) is skipped
where the env cannot do it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.randomization import (
    RandomizationConfig,
    clog,
    load_randomization,
    randomize_simulator,
    replace_profile,
    uniform,
)
from sim_bridge.thermal import S_TARGET

SEED_BOUND = 2**63 - 1


def spawn_rng(env: gym.Env) -> np.random.Generator:
    """A generator seeded from the env's own (seeded) ``np_random``."""
    return np.random.default_rng(int(env.unwrapped.np_random.integers(SEED_BOUND)))


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
