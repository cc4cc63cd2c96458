"""Scoring steps and programs on the simulator, against the reference (expert) program of the job.

Shared by the environments and by the TRL reward functions. The score maths is :mod:`envs.rewards`'s, the
geometry :mod:`envs.geometry`'s; this module runs the simulations. What is the same for every answer to one
prompt is done once and kept: the job's slice (:func:`envs.slicer.cached_slice`), the expert's figures
(:func:`reference`) and the printer the expert's program leaves before a layer (:func:`state_before_layer`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from envs.geometry import layer_moves, moves_geometry_score
from envs.jobs import PrintJob
from envs.randomization import load_randomization, randomize_simulator
from envs.rewards import (
    MAX_STEP_REWARD,
    ProgramScore,
    StepScores,
    completion_text,
    defect_count,
    extrusion_score,
    time_score,
)
from envs.slicer import cached_slice
from sim_bridge.failures import UNREADABLE
from sim_bridge.options import SimOptions
from sim_bridge.report import Failure
from sim_bridge.simulator import Simulator

READY_TOLERANCE_C = 5.0
"""Start sequence: temperatures within this of the job's targets count as ready."""
REFERENCE_STATES_KEPT = 64
"""Printer states kept by :func:`state_before_layer` (one per job, layer and physics seed: every completion
of a GRPO group starts from the same one; a randomised group's seed changes every step)."""


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
    sliced = cached_slice(job)
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
    moves = [layer_moves(sim, job, k) for k in range(job.layer_count)]
    return Reference(tuple(times), tuple(m.volume_mm3 for m in moves),
                     tuple(moves_geometry_score(job, k, m) for k, m in enumerate(moves)), sim.time_s - start_time)


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
    sim.feed(text)
    defects, fatal = defect_count(sim.failures[before:])
    elapsed = sim.time_s - t0
    scores = StepScores(defects=defects, fatal=fatal)
    if kind == "layer":
        moves = layer_moves(sim, job, k)
        scores.geometry = moves_geometry_score(job, k, moves)
        scores.extrusion = extrusion_score(moves.volume_mm3, ref.layer_volume_mm3[k])
        scores.time = time_score(elapsed, ref.step_time_s[step]) if scores.geometry > 0.0 else 0.0
    elif kind == "start":
        state = sim.final_state()
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
    state = sim.final_state()
    conditions = [state["hotend_target_c"] == 0.0, state["bed_target_c"] == 0.0, state["fan"] == 0.0,
                  not any(state["homed"]), state["position_mm"][2] >= job.part.height_mm + 1.0]
    return sum(conditions) / len(conditions)


def score_program(text: str, job: PrintJob) -> ProgramScore:
    """Run a whole program for ``job`` on a fresh printer and score it layer by layer."""
    ref = reference(job)
    sim = new_simulator(job)
    if not job.start_end:
        sim.run(cached_slice(job).setup)
    t0 = sim.time_s
    report = sim.run(text)
    if any(f.mode == UNREADABLE for f in report.failures):
        return ProgramScore(fatal=True)
    defects, fatal = defect_count(report.failures)
    score = ProgramScore(defects=defects, fatal=fatal)
    for k in range(job.layer_count):
        moves = layer_moves(sim, job, k)
        score.layers.append(StepScores(geometry=moves_geometry_score(job, k, moves),
                                       extrusion=extrusion_score(moves.volume_mm3, ref.layer_volume_mm3[k])))
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
    sim = state_before_layer(job, layer, physics_seed)
    step = layer + (1 if job.start_end else 0)
    before = len(sim.failures)
    scores = score_step(sim, job, step, text)
    return scores, feedback_text(scores, sim.failures[before:])


@dataclass(frozen=True)
class _Snapshot:
    """A simulator kept as a starting point, and the part of its height map that holds material."""

    sim: Simulator
    rows: slice
    cols: slice

    @staticmethod
    def of(sim: Simulator) -> _Snapshot:
        heights = sim.heightmap.heights
        rows, cols = np.flatnonzero(heights.any(axis=1)), np.flatnonzero(heights.any(axis=0))
        if not rows.size:
            return _Snapshot(sim, slice(0, 0), slice(0, 0))
        return _Snapshot(sim, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))

    def copy(self) -> Simulator:
        """An independent simulator in the kept state."""
        heights = self.sim.heightmap.heights
        # The height map covers the whole bed (tens of MB) but holds material only around the part: a fresh
        # zero array (its untouched pages cost nothing) with that region copied in, instead of a full copy.
        fresh = np.zeros(heights.shape, heights.dtype)
        fresh[self.rows, self.cols] = heights[self.rows, self.cols]
        return copy.deepcopy(self.sim, {id(heights): fresh})


@lru_cache(maxsize=REFERENCE_STATES_KEPT)
def _state_before(job_json: str, layer: int, physics_seed: int | None) -> _Snapshot:
    job = PrintJob.from_json(job_json)
    sliced = cached_slice(job)
    sim = new_simulator(job)
    if physics_seed is not None:
        randomize_simulator(sim, load_randomization().printer, np.random.default_rng(physics_seed))
    sim.run(sliced.start if job.start_end else sliced.setup)
    for k in range(layer):
        sim.run(sliced.layers[k])
    return _Snapshot.of(sim)


def state_before_layer(job: PrintJob, layer: int, physics_seed: int | None = None) -> Simulator:
    """A printer as the expert's program leaves it before layer ``layer``: its start sequence (or, for a job
    without one, the silent set-up) and layers ``0 … layer-1`` run, on the nominal printer or (with
    ``physics_seed``) one randomised as :func:`layer_feedback` says. Simulated once per (job, layer, seed) and
    kept (:data:`REFERENCE_STATES_KEPT`); each call returns its own copy, free to run on."""
    return _state_before(job.to_json(), int(layer), physics_seed).copy()


FEEDBACK_FAILURES = 3
"""Failures quoted in a step's feedback (the first ones: later failures often follow from them)."""


def feedback_text(scores: StepScores, failures: list[Failure]) -> str:
    """One line of feedback: the scores and the step's failures with their line numbers."""
    parts = [f"geometry {scores.geometry:.2f}, extrusion {scores.extrusion:.2f}, time {scores.time:.2f}"]
    parts += [f"line {f.line}: {f.message}" for f in failures[:FEEDBACK_FAILURES]]
    return "; ".join(parts)


# -- reward functions (TRL's signature: completions and dataset columns in, one reward each out) ---------------------------------------------------------------------------------
def program_reward(completions: Sequence[Any], job: Sequence[str] | None = None, **_: Any) -> list[float | None]:
    """Reward of whole programs (``GcodeProgram``): mean step reward over the job's layers, normalised to
    [≈-5, 1]. ``job`` is the dataset column of :meth:`PrintJob.to_json` texts."""
    if job is None:
        raise ValueError("program_reward needs the 'job' column (PrintJob.to_json) in the dataset")
    return [score_program(completion_text(c), PrintJob.from_json(j)).normalized
            for c, j in zip(completions, job, strict=True)]


def layer_reward(completions: Sequence[Any], job: Sequence[str] | None = None, layer: Sequence[int] | None = None,
                 **_: Any) -> list[float | None]:
    """Reward of one layer written after the expert's program up to it (``GcodeWriter`` data), on the
    nominal printer, normalised to 1. (GRPO uses its parts, cached and optionally randomised:
    ``training.rewards``.)"""
    if job is None or layer is None:
        raise ValueError("layer_reward needs the 'job' and 'layer' columns in the dataset")
    return [score_layer(completion_text(c), PrintJob.from_json(j), int(k)).reward / MAX_STEP_REWARD
            for c, j, k in zip(completions, job, layer, strict=True)]
