"""Scoring steps and programs on the simulator, against the reference (expert) program of the job.

Shared by the environments and by the TRL reward functions in :mod:`envs.rewards`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from envs.jobs import PrintJob
from envs.rewards import (
    FATAL_PENALTY,
    MAX_STEP_REWARD,
    W_EXTRUSION,
    W_GEOMETRY,
    W_TIME,
    StepScores,
    defect_count,
    extrusion_score,
    geometry_score,
    layer_volume_mm3,
    time_score,
)
from envs.slicer import slice_job
from sim_bridge.failures import UNREADABLE
from sim_bridge.options import SimOptions
from sim_bridge.report import Failure
from sim_bridge.simulator import Simulator

READY_TOLERANCE_C = 5.0
"""Start sequence: temperatures within this of the job's targets count as ready."""


def new_simulator(job: PrintJob, options: SimOptions | None = None) -> Simulator:
    """A fresh simulated printer for ``job``."""
    return Simulator(job.printer, job.material, options or SimOptions())


def episode_steps(job: PrintJob) -> list[tuple[str, int]]:
    """The steps of a ``GcodeWriter`` episode: ("start", -1)?, ("layer", k)…, ("end", -1)?"""
    steps = [("layer", k) for k in range(job.layer_count)]
    if job.start_end:
        steps = [("start", -1), *steps, ("end", -1)]
    return steps


@dataclass(frozen=True)
class Reference:
    """What the expert's program achieves, step by step."""

    step_time_s: tuple[float, ...]
    layer_volume_mm3: tuple[float, ...]
    layer_geometry: tuple[float, ...]
    total_time_s: float


@lru_cache(maxsize=512)
def _reference(job_json: str) -> Reference:
    job = PrintJob.from_json(job_json)
    sliced = slice_job(job)
    sim = new_simulator(job)
    if not job.start_end:
        sim.run(sliced.setup)
    times = []
    start_time = sim.time_s
    for kind, k in episode_steps(job):
        t0 = sim.time_s
        sim.run(sliced.start if kind == "start" else sliced.end if kind == "end" else sliced.layers[k])
        times.append(sim.time_s - t0)
    if sim.fatal is not None:
        raise RuntimeError(f"the reference program of {job.job_id} fails: {sim.fatal.message} "
                           f"(line {sim.fatal.line})")
    volumes = tuple(layer_volume_mm3(sim, job, k) for k in range(job.layer_count))
    geometry = tuple(geometry_score(sim, job, k) for k in range(job.layer_count))
    return Reference(tuple(times), volumes, geometry, sim.time_s - start_time)


def reference(job: PrintJob) -> Reference:
    """The expert's per-step figures for ``job`` (computed once per job, then cached)."""
    return _reference(job.to_json())


def score_step(sim: Simulator, job: PrintJob, step: int, text: str) -> StepScores:
    """Run one episode step's G-code on ``sim`` and score it."""
    kind, k = episode_steps(job)[step]
    ref = reference(job)
    before = len(sim.failures)
    t0 = sim.time_s
    # Text that is not G-code at all (binary junk, a runaway line) is an 'unreadable' failure: a fatal step.
    report = sim.run(text)
    defects, fatal = defect_count(report, before)
    elapsed = sim.time_s - t0
    scores = StepScores(defects=defects, fatal=fatal)
    if kind == "layer":
        scores.geometry = geometry_score(sim, job, k)
        scores.extrusion = extrusion_score(layer_volume_mm3(sim, job, k), ref.layer_volume_mm3[k])
        scores.time = time_score(elapsed, ref.step_time_s[step]) if scores.geometry > 0.0 else 0.0
    elif kind == "start":
        state = report.final_state
        p = job.process
        ready = [all(state["homed"]),
                 abs(state["hotend_c"] - p.hotend_temp_c) <= READY_TOLERANCE_C,
                 abs(state["bed_c"] - p.bed_temp_c) <= READY_TOLERANCE_C]
        scores.geometry = sum(ready) / len(ready)
        # Nothing to extrude in a start sequence: the slot rewards a complete, failure-free start only.
        scores.extrusion = 1.0 if all(ready) and not fatal else 0.0
        scores.time = time_score(elapsed, ref.step_time_s[step]) if all(ready) else 0.0
    else:
        scores.geometry = end_state_score(sim, job)
        scores.extrusion = 1.0 if scores.geometry == 1.0 and not fatal else 0.0
        scores.time = time_score(elapsed, ref.step_time_s[step]) if scores.geometry == 1.0 else 0.0
    return scores


def end_state_score(sim: Simulator, job: PrintJob) -> float:
    """Fraction of the end conditions met: heaters off, fan off, motors off, nozzle clear of the part."""
    state = sim.report().final_state
    conditions = [state["hotend_target_c"] == 0.0, state["bed_target_c"] == 0.0, state["fan"] == 0.0,
                  not any(state["homed"]), state["position_mm"][2] >= job.part.height_mm + 1.0]
    return sum(conditions) / len(conditions)


@dataclass
class ProgramScore:
    """The score of a whole program."""

    layers: list[StepScores] = field(default_factory=list)
    time: float = 0.0
    end: float = 1.0
    defects: int = 0
    fatal: bool = False

    @property
    def reward(self) -> float:
        """Mean layer score (geometry, extrusion) plus time, minus penalties; at most ``MAX_STEP_REWARD``."""
        if not self.layers:
            return -(FATAL_PENALTY if self.fatal else 0.0)
        shape = sum(W_GEOMETRY * s.geometry + W_EXTRUSION * s.extrusion for s in self.layers) / len(self.layers)
        return (shape * self.end + W_TIME * self.time - self.defects * 1.0
                - (FATAL_PENALTY if self.fatal else 0.0))

    @property
    def normalized(self) -> float:
        """``reward / MAX_STEP_REWARD``: 1 for the expert's quality, ≤ 0 for nothing or failures."""
        return self.reward / MAX_STEP_REWARD


def score_program(text: str, job: PrintJob) -> ProgramScore:
    """Run a whole program for ``job`` on a fresh printer and score it layer by layer."""
    ref = reference(job)
    sim = new_simulator(job)
    if not job.start_end:
        sim.run(slice_job(job).setup)
    t0 = sim.time_s
    report = sim.run(text)
    if any(f.mode == UNREADABLE for f in report.failures):
        return ProgramScore(fatal=True)
    defects, fatal = defect_count(report)
    score = ProgramScore(defects=defects, fatal=fatal)
    for k in range(job.layer_count):
        geometry = geometry_score(sim, job, k)
        score.layers.append(StepScores(geometry=geometry,
                                       extrusion=extrusion_score(layer_volume_mm3(sim, job, k),
                                                                 ref.layer_volume_mm3[k])))
    mean_geometry = sum(s.geometry for s in score.layers) / len(score.layers)
    score.time = time_score(sim.time_s - t0, ref.total_time_s) * mean_geometry
    if job.start_end:
        score.end = end_state_score(sim, job)
    return score


def score_layer(text: str, job: PrintJob, layer: int, physics_seed: int | None = None) -> StepScores:
    """Score one layer written after the expert's program up to it (the ``layer_reward`` of TRL); with
    ``physics_seed``, on a printer randomised as :func:`layer_feedback` says."""
    return layer_feedback(text, job, layer, physics_seed)[0]


def layer_feedback(text: str, job: PrintJob, layer: int, physics_seed: int | None = None
                   ) -> tuple[StepScores, str]:
    """:func:`score_layer` and the simulator's feedback on it, as the environment phrases it: the scores,
    then each failure with its line number in ``text`` (at most :data:`FEEDBACK_FAILURES`).

    With ``physics_seed``, the printer and material are first perturbed within the domain-randomisation
    ranges of ``configs/randomization.yaml`` (``printer``: speeds, heaters, melt capacity, filament
    diameter, fan, bridging), drawn from that seed — the sim-to-real setting of GRPO. The expert's figures
    the scores compare against stay those of the nominal printer.
    """
    sliced = slice_job(job)
    sim = new_simulator(job)
    if physics_seed is not None:
        import numpy as np

        from envs.wrappers import load_randomization, randomize_simulator

        randomize_simulator(sim, load_randomization().printer, np.random.default_rng(physics_seed))
    sim.run(sliced.start if job.start_end else sliced.setup)
    for k in range(layer):
        sim.run(sliced.layers[k])
    step = layer + (1 if job.start_end else 0)
    before = len(sim.failures)
    scores = score_step(sim, job, step, text)
    return scores, feedback_text(scores, sim.failures[before:])


FEEDBACK_FAILURES = 3
"""Failures quoted in a step's feedback (the first ones: later failures often follow from them)."""


def feedback_text(scores: StepScores, failures: list[Failure]) -> str:
    """One line of feedback: the scores and the step's failures with their line numbers."""
    parts = [f"geometry {scores.geometry:.2f}, extrusion {scores.extrusion:.2f}, time {scores.time:.2f}"]
    parts += [f"line {f.line}: {f.message}" for f in failures[:FEEDBACK_FAILURES]]
    return "; ".join(parts)
