"""``layerloop/GcodeWriter-v1`` (``-v0``) and ``layerloop/GcodeProgram-v0``: a language model writes G-code."""

from __future__ import annotations

import string
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.jobs import PrintJob
from envs.prompts import MAX_PROMPT_CHARS, end_prompt, layer_prompt, program_prompt, start_prompt
from envs.rewards import MAX_STEP_REWARD, StepScores
from envs.sampler import JobSource
from envs.scoring import episode_steps, feedback_text, new_simulator, score_program, score_step
from envs.slicer import cached_slice
from sim_bridge.backends import check_backend, simulate
from sim_bridge.options import SimOptions
from sim_bridge.report import EMBEDDED

MAX_ACTION_CHARS = 200_000
TEXT_CHARSET = string.printable
STATE_SIZE = 14
SUCCESS_GEOMETRY = 0.9
"""An episode succeeds when every step ran without failure and scored at least this geometry."""
STATE_LOW = np.array([0, 0, 0, 0, 0, 0, 0, -1000, -1000, -10, -10, 0, 0, -10], dtype=np.float32)
STATE_HIGH = np.array([256, 256, 1000, 500, 500, 200, 200, 2000, 2000, 2000, 1, 1, 1, 1], dtype=np.float32)


def _render_views(sim: Any) -> np.ndarray:
    """Top view (height map) beside a side view (highest material along Y), as one RGB image."""
    from sim_bridge.plots import render_rgb  # matplotlib loads only when a frame is rendered

    top = render_rgb(sim, 192)
    heights = sim.heightmap.heights
    profile = heights.max(axis=0)
    cols = np.flatnonzero(profile > 0)
    side = np.full((192, 192, 3), 30, dtype=np.uint8)
    if cols.size:
        lo, hi = max(cols[0] - 20, 0), min(cols[-1] + 20, len(profile))
        seg = profile[lo:hi]
        top_z = max(float(seg.max()), 1.0)
        xs = np.linspace(0, len(seg) - 1, 192).astype(int)
        bars = (seg[xs] / top_z * 180).astype(int)
        for i, bar in enumerate(bars):
            if bar > 0:
                side[191 - bar:191, i] = (230, 160, 40)
    return np.concatenate([top, side], axis=1)


class GcodeWriterEnv(gym.Env):
    """A language model writes a print job's G-code, one part of the program per step.

    ## Description
    An episode is one :class:`~envs.jobs.PrintJob`. For jobs with start and end sequences the first step
    writes the start sequence (heat, home, prime), each following step writes one layer, and the last step
    writes the end sequence; other jobs start on a heated, homed printer and have one step per layer. The
    embedded simulator runs each action on persistent machine state: the nozzle is where the last step left
    it, the heaters keep their temperature, and the layers below are really there.

    ## Action space
    ``spaces.Text(200000)`` over printable ASCII: G-code text.

    ## Observation space
    ``spaces.Dict``:
    * ``prompt`` — ``spaces.Text(16000)``: the step's task; for a layer (v1) its Z, the printer, material,
      temperatures and fan, every speed and the retraction, the planner's toolpath (each path's travel point,
      each move's end point and filament E), and feedback on the previous step (failures with line numbers,
      scores); v0 lists the outline to fill, line width and extrusion per mm and the machine state instead of
      the toolpath — see :mod:`envs.prompts`.
    * ``state`` — ``spaces.Box(14,)``: step index, steps in the episode, target Z (mm), hotend and its
      target, bed and its target (°C), nozzle X, Y, Z (mm), and the last step's geometry, extrusion and time
      scores and reward.

    ## Rewards
    Per step (:mod:`envs.rewards`): ``0.6·geometry + 0.25·extrusion + 0.15·time − 1 per defect − 5 if
    fatal``. Geometry is the IoU of the covered region against the layer's filled outline; extrusion
    compares the delivered volume with the reference program's; time compares the step's duration with the
    reference's. Start step: geometry is the fraction of {homed, hotend ready, bed ready}; end step: the
    fraction of {heaters off, fan off, motors off, nozzle clear}. The attainable reward per step is 1.0.

    ## Starting state
    A job from ``job``, from the ``suite`` (in order, cycling, or by ``options={"job_index": i}``), or
    sampled at ``difficulty`` from the env's seeded generator; a fresh printer (heated and homed unless the
    job has start and end sequences).

    ## Episode end
    Terminated after the last step or on a fatal failure (a Klipper error, cold extrusion, heater fault).
    Truncated by the ``TimeLimit`` set at registration (64 steps).

    ## Arguments
    ``job`` (PrintJob or JSON dict), ``suite`` (held-out suite name), ``difficulty`` (0–4, default 0),
    ``resolution_mm`` (height-map cell, default 0.1), ``render_mode`` (``"rgb_array"``), ``toolpath``
    (list the planner's toolpath in layer prompts: ``True`` is v1, ``False`` v0).

    ## Version history
    * v1: a layer's prompt lists the planner's toolpath instead of the outline — each path's travel point,
      then every move's end point and filament E, in print order, the numbers as the reference program
      writes them (:func:`envs.prompts.planned_layer_prompt`) — with the layer's Z, temperatures, fan and
      every speed, and nothing else (no printer limits, no machine state). The model's job becomes writing
      the G-code of a planned layer (Z, fan, feeds, travel, retraction, the moves, the loop closed), not
      planning it: v0 asked a small model to inset, reorder and re-seam a polygon in its head
      (docs/results.md). Rewards, success and suites are unchanged.
    * v0: first version (the outline only).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, job: PrintJob | dict | None = None, suite: str | None = None, difficulty: int = 0,
                 resolution_mm: float = 0.1, render_mode: str | None = None, toolpath: bool = True) -> None:
        self.jobs = JobSource(job, suite, difficulty)
        self.toolpath = toolpath
        self.options = SimOptions(resolution_mm=resolution_mm)
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "prompt": spaces.Text(MAX_PROMPT_CHARS, charset=TEXT_CHARSET),
            "state": spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32),
        })
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.job: PrintJob | None = None
        self.sim = None
        self.step_index = 0
        self.last = StepScores()
        self.feedback = ""

    # -- episode -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.job = self.jobs.next(self.np_random, options)
        self.sim = new_simulator(self.job, self.options)
        self.steps = episode_steps(self.job)
        if not self.job.start_end:
            self.sim.run(cached_slice(self.job).setup)
        self.step_index = 0
        self.last = StepScores()
        self.feedback = ""
        self._geometries: list[float] = []
        return self._observation(), {"job_id": self.job.job_id, "steps": len(self.steps)}

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        assert self.job is not None and self.sim is not None, "call reset() first"
        if self.step_index >= len(self.steps):
            raise RuntimeError("episode is over; call reset()")
        before = len(self.sim.failures)
        scores = score_step(self.sim, self.job, self.step_index, str(action))
        self.last = scores
        self._geometries.append(scores.geometry)
        self.step_index += 1
        # One episode step reads the simulator's failures and state, never a whole report: building one per
        # step made an episode quadratic in its length.
        failures = self.sim.failures
        terminated = scores.fatal or self.step_index >= len(self.steps)
        self.feedback = feedback_text(scores, failures[before:])
        info = {"geometry": scores.geometry, "extrusion": scores.extrusion, "time": scores.time,
                "defects": scores.defects, "fatal": scores.fatal, "failures": [f.mode for f in failures],
                "success": (self.step_index >= len(self.steps) and not failures
                            and min(self._geometries) >= SUCCESS_GEOMETRY),
                "normalized": scores.reward / MAX_STEP_REWARD}
        return self._observation(), float(scores.reward), bool(terminated), False, info

    def _observation(self) -> dict:
        assert self.job is not None and self.sim is not None
        state = self.sim.final_state()
        n = len(self.steps)
        i = min(self.step_index, n - 1)
        kind, k = self.steps[i]
        zs = self.job.layer_zs()
        if kind == "start":
            prompt = start_prompt(self.job, state)
        elif kind == "end":
            prompt = end_prompt(self.job, state, self.feedback)
        else:
            paths = cached_slice(self.job).layer_paths[k] if self.toolpath else None
            prompt = layer_prompt(self.job, k, state, self.feedback, paths)
        pos = state["position_mm"]
        vec = np.array([self.step_index, n, zs[k] if kind == "layer" else 0.0, state["hotend_c"],
                        state["hotend_target_c"], state["bed_c"], state["bed_target_c"], pos[0], pos[1], pos[2],
                        self.last.geometry, self.last.extrusion, self.last.time,
                        max(-10.0, self.last.reward)], dtype=np.float32)
        return {"prompt": prompt, "state": np.clip(vec, STATE_LOW, STATE_HIGH)}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.sim is None:
            return None
        return _render_views(self.sim)

    def expert_action(self) -> str:
        """The reference program's G-code for the current step (what the expert policy writes)."""
        assert self.job is not None
        sliced = cached_slice(self.job)
        kind, k = self.steps[min(self.step_index, len(self.steps) - 1)]
        return sliced.start if kind == "start" else sliced.end if kind == "end" else sliced.layers[k]

    def attainable_reward(self) -> float:
        """The reward of a perfect episode (1 per step)."""
        return MAX_STEP_REWARD * len(self.steps)


class GcodeProgramEnv(GcodeWriterEnv):
    """One step: the whole program for a small job.

    ## Description
    As :class:`GcodeWriterEnv`, but the action is the complete program (with the start and end sequences
    for jobs that have them; otherwise the printer starts heated and homed) and the episode ends after it.

    ## Action space
    ``spaces.Text(200000)``: the program.

    ## Observation space
    As ``GcodeWriter-v0``; the prompt lists every layer's Z and outline (:func:`envs.prompts.program_prompt`).

    ## Rewards
    The mean over layers of ``0.6·geometry + 0.25·extrusion`` (times the end-state score for jobs with an end
    sequence), plus ``0.15·time`` against the reference program, minus 1 per defect and 5 for a fatal failure.
    Attainable: 1.0.

    With ``backend="klipper-batch"`` (or ``"moonraker"``, ``"prunt"``), the program also runs on that backend
    (after the job's setup sequence when the job has none of its own) and its verdict decides ``fatal``: the
    reward's fatal penalty and ``info["fatal"]`` are the real firmware's. Geometry, extrusion and time stay the
    embedded simulator's scores.

    ## Starting state, arguments
    As ``GcodeWriter-v0``, plus ``backend`` (:data:`sim_bridge.backends.BACKENDS`, default ``"embedded"``),
    ``url`` (for ``moonraker`` and ``prunt``) and ``api_key`` (for ``moonraker``).

    ## Info
    As ``GcodeWriter-v0``; with another backend also ``backend``, ``backend_success``, ``backend_failures``
    (mode, message, line in the program, source) and ``backend_print_time_s``.

    ## Episode end
    Always terminated after the one step.

    ## Version history
    * v0: first version.
    * v0 (issue 11): the ``backend`` argument. Its default, ``"embedded"``, leaves the reward as it was, so the
      id keeps its version.
    * v0 (issue 16): ``backend="prunt"``; the default's reward is unchanged, so the id keeps its version.
    """

    def __init__(self, job: PrintJob | dict | None = None, suite: str | None = None, difficulty: int = 0,
                 resolution_mm: float = 0.1, render_mode: str | None = None, backend: str = EMBEDDED,
                 url: str | None = None, api_key: str | None = None) -> None:
        super().__init__(job, suite, difficulty, resolution_mm, render_mode)
        self.backend = check_backend(backend, url)
        self.url = url
        self.api_key = api_key

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, info = super().reset(seed=seed, options=options)
        self.steps = [("program", -1)]
        return self._observation(), {**info, "steps": 1}

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        assert self.job is not None
        if self.step_index >= 1:
            raise RuntimeError("episode is over; call reset()")
        score = score_program(str(action), self.job)
        extra: dict[str, Any] = {}
        if self.backend != EMBEDDED:
            extra = self._backend_verdict(str(action))
            score = replace(score, fatal=not extra["backend_success"] and any(
                f["fatal"] for f in extra["backend_failures"]))
        self.step_index = 1
        geometry = sum(s.geometry for s in score.layers) / max(len(score.layers), 1)
        extrusion = sum(s.extrusion for s in score.layers) / max(len(score.layers), 1)
        self.last = StepScores(geometry=geometry, extrusion=extrusion, time=score.time, defects=score.defects,
                               fatal=score.fatal)
        info = {"geometry": geometry, "extrusion": extrusion, "time": score.time, "defects": score.defects,
                "fatal": score.fatal, "normalized": score.normalized,
                "success": not score.fatal and score.defects == 0 and min(
                    (s.geometry for s in score.layers), default=0.0) >= SUCCESS_GEOMETRY and score.end == 1.0,
                **extra}
        return self._observation(), float(score.reward), True, False, info

    def _backend_verdict(self, program: str) -> dict[str, Any]:
        """The program on the env's backend: its verdict, failures (lines in ``program``) and time."""
        assert self.job is not None
        setup = "" if self.job.start_end else cached_slice(self.job).setup
        if setup and not setup.endswith("\n"):
            setup += "\n"
        offset = setup.count("\n")
        report = simulate(setup + program, self.job.printer, backend=self.backend, url=self.url,
                          api_key=self.api_key, options=self.options, material=self.job.material)
        return {"backend": self.backend, "backend_success": report.success,
                "backend_print_time_s": report.print_time_s,
                "backend_failures": [{"mode": f.mode, "message": f.message, "line": f.line - offset,
                                      "fatal": f.fatal, "source": f.source or report.backend}
                                     for f in report.failures]}

    def _observation(self) -> dict:
        assert self.job is not None and self.sim is not None
        state = self.sim.final_state()
        pos = state["position_mm"]
        vec = np.array([self.step_index, 1, 0.0, state["hotend_c"], state["hotend_target_c"], state["bed_c"],
                        state["bed_target_c"], pos[0], pos[1], pos[2], self.last.geometry, self.last.extrusion,
                        self.last.time, max(-10.0, self.last.reward)], dtype=np.float32)
        return {"prompt": program_prompt(self.job), "state": np.clip(vec, STATE_LOW, STATE_HIGH)}

    def expert_action(self) -> str:
        assert self.job is not None
        sliced = cached_slice(self.job)
        body = "".join(sliced.layers)
        return sliced.start + body + sliced.end if self.job.start_end else body

    def attainable_reward(self) -> float:
        return MAX_STEP_REWARD

