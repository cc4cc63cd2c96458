"""``layerloop/PrintSupervisor-v1``: tuning a print between layers, against hidden faults (text actions)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.jobs import PrintJob
from envs.randomization import RandomizationConfig, clog, load_randomization
from envs.rewards import defect_count
from envs.sampler import JobSource
from envs.slicer import SlicedJob, cached_slice
from envs.supervisor.edits import override_fan, shift_xy
from envs.supervisor.measure import (
    RESOLUTION_MM,
    TELEMETRY_FIELDS,
    TELEMETRY_HIGH,
    TELEMETRY_LOW,
    TELEMETRY_NAMES,
    LayerMeasure,
    bbox_error_mm,
    measure_runs,
    reference_layers,
    supervisor_reward,
)
from envs.supervisor.physics import HiddenPhysics, hidden_simulator, printer
from envs.supervisor.prompt import MAX_PROMPT_CHARS, TEXT_CHARSET, supervisor_prompt
from envs.supervisor.tuning import (
    FAN_PWM_MAX,
    check_tuning,
)
from sim_bridge.gcode import parse_line
from sim_bridge.simulator import Simulator

DIFFICULTIES = (2, 3, 4)
"""Difficulties a job is sampled at when the env is given none."""
MAX_ACTION_CHARS = 2000


class PrintSupervisorEnv(gym.Env):
    """Supervise a print between layers: read the telemetry, send tuning commands, against hidden faults.

    ## Description
    An episode is one :class:`~envs.jobs.PrintJob` printed by the reference program (:mod:`envs.slicer`)
    on one persistent simulated printer whose physics are drawn at random per episode and hidden from the
    agent (ranges in ``configs/randomization.yaml``, section ``supervisor``): the true filament diameter
    (the delivered material scales with its square), the hotend's melt capacity, the thermistor's offset
    (the melt sees the true temperature, the telemetry the reading), the bed adhesion (a first layer
    printed higher than the adhering gap does not stick), the part fan's efficacy, and, in some episodes,
    a partial clog starting before a random layer after the first, after which the hotend melts only part
    of the job's peak printing flow at the job's temperature. Each step is one layer: the env runs the
    agent's accepted tuning commands, then the reference program's next layer. An accepted ``M106``/``M107``
    replaces the reference program's fan commands from then on. Pressure advance is accepted and reported
    but the simulator does not model it (as in Klipper, it does not change print time).

    ## Action space
    ``spaces.Text(2000)`` over printable ASCII: tuning commands, one per line, or nothing. Accepted
    commands and their live-tuning windows (the safety layer's, :mod:`envs.supervisor.tuning`):
    ``M221 S80..120`` (flow %), ``M220 S50..150`` (speed %), ``M104 S`` within ±15 °C of the job's
    temperature and at most the printer's ``max_temp``, ``M106 S0..255``, ``M107``,
    ``SET_PRESSURE_ADVANCE ADVANCE=0..0.2``; at most 8 per step, no other parameters. Any other line
    (motion, homing, ``M109``, a value outside its window) is refused: not sent, and penalised per finding
    of the safety layer's live-tuning validator. Blank and comment lines are ignored.

    ## Observation space
    ``spaces.Dict``:
    * ``prompt`` — ``spaces.Text(4000)``: the telemetry as text (numbers, warnings with line numbers,
      refused commands and why) and the allowed commands with their windows.
    * ``telemetry`` — ``spaces.Box(18,)`` (:data:`TELEMETRY_FIELDS`): layers done / layer count, layer
      count, hotend reading − target (°C), hotend target − job temperature (°C), bed reading − target
      (°C), then of the last layer: delivered / commanded flow, mean bead width / line width, mean bead
      height / layer height (the beads the simulator laid on its height map), delivered volume / the
      reference's, largest edge offset of the layer's outer extent from the reference's (mm; a layer
      shift shows here), peak commanded flow (mm³/s), defects;
      then the fan duty (0–1), flow factor, speed factor, pressure advance (s), refused commands of the
      last step, and the last layer's time / the reference's. Before the first layer the ratios read 1, the
      rest of the layer figures 0.

    ## Rewards
    Per layer (:func:`supervisor_reward`): ``quality − 1 per defect − 0.5 per refusal
    − 0.1·max(0, time / reference time − 1) − 5 if fatal``; a refusal is one finding of
    :func:`safety.tuning.validate_tuning` (one refused line may have several). Here
    ``quality = extrusion · delivered · dimension``: extrusion is :func:`envs.rewards.extrusion_score` of
    the delivered volume against the reference program's on the nominal printer, delivered is the
    delivered fraction of the commanded filament, and dimension is ``exp(−edge error / 1 mm)`` of the
    layer's outer extent against the reference's. Defects are the simulator's non-fatal failures of the
    layer (under-extrusion, a first layer that does not stick, unsupported or uncooled overhangs,
    collisions). Attainable: 1 per layer. Doing
    nothing loses to a good supervisor when the physics are off: a thicker filament over-extrudes unless
    ``M221`` compensates; a clog under-extrudes unless the speed drops or the temperature rises.

    ## Starting state
    A job from ``job``, from the ``suite`` (in order, cycling, or by ``options={"job_index": i}``), or
    sampled at ``difficulty`` (default: 2, 3 or 4 at random) from the env's seeded generator; a fresh
    printer with the episode's hidden physics, after the job's start sequence (with its prime line) or,
    for jobs without one, a silent heat-and-home. ``options={"hidden": HiddenPhysics(...)}`` fixes the
    hidden physics (tests, evaluation).

    ## Episode end
    Terminated after the last layer (the job's end sequence then runs) or on a fatal failure (a heater
    fault, a Klipper error). Truncated by the ``TimeLimit`` set at registration (200 steps).

    ## Arguments
    ``job`` (PrintJob or JSON dict), ``suite`` (held-out suite name), ``difficulty`` (2–4, default random),
    ``randomization`` (a :class:`~envs.randomization.RandomizationConfig` or YAML path; default
    ``configs/randomization.yaml``), ``resolution_mm`` (height-map cell, default 0.2), ``render_mode``
    (``"rgb_array"``).

    ## Version history
    * v1: refusals are the safety layer's (:func:`safety.tuning.validate_tuning`, the check deployment
      runs, disguised forms read as deployment reads them) and the penalty counts each finding, where v0
      checked its own copy of the windows and counted refused lines.
    * v0: first version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    telemetry_kinds = tuple(f[1] for f in TELEMETRY_FIELDS)

    def __init__(self, job: PrintJob | dict | None = None, suite: str | None = None, difficulty: int | None = None,
                 randomization: RandomizationConfig | str | Path | None = None,
                 resolution_mm: float = RESOLUTION_MM, render_mode: str | None = None) -> None:
        if difficulty is not None and difficulty not in range(5):
            raise ValueError(f"difficulty {difficulty}: out of range, allowed 0..4")
        self.jobs = JobSource(job, suite, difficulty, DIFFICULTIES)
        self.ranges = load_randomization(randomization).supervisor
        self.resolution_mm = resolution_mm
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "prompt": spaces.Text(MAX_PROMPT_CHARS, min_length=0, charset=TEXT_CHARSET),
            "telemetry": spaces.Box(TELEMETRY_LOW, TELEMETRY_HIGH, dtype=np.float32),
        })
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.job: PrintJob | None = None
        self.sim: Simulator | None = None
        self.sliced: SlicedJob | None = None
        self.reference: tuple[LayerMeasure, ...] = ()
        self.peak_flow_mm3_s = 0.0
        """The reference program's peak flow (what a clog is measured against)."""
        self.hidden = HiddenPhysics()
        self._reset_episode_state()

    def _reset_episode_state(self) -> None:
        self.layer = 0
        self.fan_pwm: int | None = None
        self.pressure_advance_s = 0.0
        self.shift_mm = (0.0, 0.0)
        self.last: LayerMeasure | None = None
        self.last_defects = 0
        self.warnings: list[str] = []
        self.refused: list[str] = []
        self.clogged = False

    # -- episode -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        self.job = self.jobs.next(self.np_random, options)
        self.sliced = cached_slice(self.job)
        self.reference = reference_layers(self.job.to_json(), self.resolution_mm)
        self.peak_flow_mm3_s = max(m.peak_flow_mm3_s for m in self.reference)
        hidden = options.get("hidden")
        if hidden is None:
            hidden = HiddenPhysics.draw(self.np_random, self.ranges, self.job.layer_count)
        self.hidden = HiddenPhysics(**hidden) if isinstance(hidden, dict) else hidden
        self.sim = self._new_simulator()
        self.sim.run(self.sliced.start if self.job.start_end else self.sliced.setup)
        self._reset_episode_state()
        return self._observation(), {"job_id": self.job.job_id, "layers": self.job.layer_count}

    def _new_simulator(self) -> Simulator:
        assert self.job is not None
        return hidden_simulator(printer(self.job.printer), self.job.material, self.hidden, self.resolution_mm)

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        assert self.job is not None and self.sim is not None and self.sliced is not None, "call reset() first"
        if self.layer >= self.job.layer_count or self.sim.fatal is not None:
            raise RuntimeError("episode is over; call reset()")
        sim, job, k = self.sim, self.job, self.layer
        tuning = check_tuning(str(action), job.process.hotend_temp_c, sim.profile)
        if self.hidden.clog_layer == k and not self.clogged:
            clog(sim, self.peak_flow_mm3_s, self.hidden.clog_flow_fraction, job.process.hotend_temp_c)
            self.clogged = True
        self._remember(tuning.accepted)
        first_run, first_failure, t0 = len(sim.executed), len(sim.failures), sim.time_s
        commands = "".join(line + "\n" for line in tuning.accepted)
        report = sim.run(commands + self.layer_text(k))
        measure = measure_runs(sim, first_run, t0)
        defects, fatal = defect_count(report.failures[first_failure:])
        reward = supervisor_reward(measure, self.reference[k], defects, len(tuning.refused), fatal)
        self.last, self.last_defects, self.refused = measure, defects, tuning.refused
        self.warnings = [f"line {f.line}: {f.mode}: {f.message}" for f in report.failures[first_failure:]]
        self.layer += 1
        terminated = fatal or self.layer >= job.layer_count
        if self.layer >= job.layer_count and job.start_end and not fatal:
            sim.run(self.sliced.end)
        info: dict[str, Any] = {"layer": k, "accepted": tuning.accepted, "refused": tuning.refused,
                                "defects": defects, "fatal": fatal,
                                "failures": [f.mode for f in report.failures[first_failure:]]}
        if terminated:
            info["hidden"] = asdict(self.hidden)
            info["success"] = not fatal and self.layer >= job.layer_count
        return self._observation(), float(reward), bool(terminated), False, info

    def _remember(self, accepted: list[str]) -> None:
        """Track the settings the simulator does not keep (fan override, pressure advance)."""
        for number, line in enumerate(accepted, 1):
            cmd = parse_line(line, number)
            if cmd is None:
                continue
            if cmd.code == "M106":
                self.fan_pwm = round(cmd.get("S", 0.0))
            elif cmd.code == "M107":
                self.fan_pwm = 0
            elif cmd.code == "SET_PRESSURE_ADVANCE":
                self.pressure_advance_s = float(cmd.args["ADVANCE"])

    def layer_text(self, layer: int) -> str:
        """The reference program's layer as it will run: the supervisor's fan setting, any layer shift."""
        assert self.sliced is not None
        text = self.sliced.layers[layer]
        if self.fan_pwm is not None:
            text = override_fan(text, self.fan_pwm)
        if self.shift_mm != (0.0, 0.0):
            text = shift_xy(text, *self.shift_mm)
        return text

    def shift_layers(self, dx_mm: float, dy_mm: float) -> None:
        """A layer shift (a fault, see :class:`envs.wrappers.RareFaults`): later layers print offset."""
        self.shift_mm = (self.shift_mm[0] + dx_mm, self.shift_mm[1] + dy_mm)

    # -- observation ---------------------------------------------------------------------------------------
    def settings(self) -> dict[str, float]:
        """The tuning settings in force: flow and speed (%), hotend target (°C), fan (PWM), pressure advance."""
        assert self.sim is not None
        st = self.sim.state
        return {"flow_percent": 100.0 * st.extrude_factor, "speed_percent": 100.0 * st.speed_factor,
                "hotend_target_c": float(st.hotend_target_c), "fan_pwm": FAN_PWM_MAX * st.fan,
                "pressure_advance_s": self.pressure_advance_s}

    def telemetry(self) -> np.ndarray:
        """The telemetry vector (:data:`TELEMETRY_FIELDS`)."""
        assert self.job is not None and self.sim is not None
        job, p = self.job, self.job.process
        state = self.sim.report().final_state
        k = self.layer - 1
        n = job.layer_count
        ratios = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        if self.last is not None and k >= 0:
            m, ref = self.last, self.reference[k]
            nominal_h = p.first_layer_height_mm if k == 0 else p.layer_height_mm
            ratios = [m.delivered_fraction, m.width_mm / p.line_width_mm, m.height_mm / nominal_h,
                      m.volume_mm3 / ref.volume_mm3 if ref.volume_mm3 > 0 else 1.0,
                      bbox_error_mm(m.bbox_mm, ref.bbox_mm), m.peak_flow_mm3_s,
                      m.time_s / ref.time_s if ref.time_s > 0 else 1.0]
        s = self.settings()
        vec = np.array([
            self.layer / n, n, state["hotend_c"] - state["hotend_target_c"],
            state["hotend_target_c"] - p.hotend_temp_c, state["bed_c"] - state["bed_target_c"], *ratios[:6],
            self.last_defects, s["fan_pwm"] / FAN_PWM_MAX, s["flow_percent"] / 100.0, s["speed_percent"] / 100.0,
            s["pressure_advance_s"], len(self.refused), ratios[6]], dtype=np.float64)
        return np.clip(np.nan_to_num(vec), TELEMETRY_LOW, TELEMETRY_HIGH).astype(np.float32)

    def render_prompt(self, telemetry: np.ndarray) -> str:
        """The telemetry as text for a language model (:func:`envs.supervisor.prompt.supervisor_prompt`)."""
        assert self.job is not None
        job = self.job
        return supervisor_prompt(dict(zip(TELEMETRY_NAMES, (float(v) for v in telemetry), strict=True)),
                                 title=f"job {job.job_id} ({job.part.kind}, {job.material} on {job.printer})",
                                 layer_count=job.layer_count, job_hotend_c=job.process.hotend_temp_c,
                                 line_width_mm=job.process.line_width_mm,
                                 hotend_max_temp_c=printer(job.printer).hotend.max_temp_c,
                                 warnings=self.warnings, refused=self.refused)

    def _observation(self) -> dict:
        telemetry = self.telemetry()
        return {"prompt": self.render_prompt(telemetry), "telemetry": telemetry}

    def attainable_reward(self) -> float:
        """The return of a perfect episode (1 per layer)."""
        assert self.job is not None, "call reset() first"
        return float(self.job.layer_count)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.sim is None:
            return None
        from sim_bridge.plots import render_rgb  # matplotlib loads only when a frame is rendered

        return render_rgb(self.sim, 192)
