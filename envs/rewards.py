"""Rewards: the score maths shared by the environments and the trainers (plain functions).

Scores are in [0, 1]; the per-step reward combines them and subtracts penalties:

    reward = 0.6 · geometry + 0.25 · extrusion + 0.15 · time − 1 · (each defect) − 5 · (a fatal failure)

* **geometry** — IoU of the region a layer covers against the layer's filled outline
  (:func:`envs.geometry.geometry_score`); short outputs cannot win.
* **extrusion** — ``exp(-|ln(actual/expected)| / 0.15)``: 1 at the expert's volume, 0.51 at ±10 %.
* **time** — ``min(1, expert_time / time)``.

What is simulated and compared to produce the scores is :mod:`envs.scoring`'s; this module only combines
them. The TRL-facing functions (:func:`program_reward`, :func:`layer_reward`) take ``completions`` and the
dataset's job columns and return one float per completion, as ``GRPOTrainer`` expects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import multiprocessing as mp
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envs.jobs import PrintJob
from sim_bridge.report import Failure

W_GEOMETRY = 0.6
W_EXTRUSION = 0.25
W_TIME = 0.15
DEFECT_PENALTY = 1.0
FATAL_PENALTY = 5.0
EXTRUSION_TOLERANCE = 0.15
"""Width of the extrusion score in log space (0.15 → half score at about ±10 %)."""


@dataclass
class StepScores:
    """The parts of one step's reward.

    >>> StepScores(geometry=1.0, extrusion=1.0, time=1.0).reward
    1.0
    >>> round(StepScores(geometry=0.5, extrusion=0.2, time=1.0, defects=2).reward, 2)
    -1.5
    >>> StepScores(fatal=True).reward
    -5.0
    """

    geometry: float = 0.0
    extrusion: float = 0.0
    time: float = 0.0
    defects: int = 0
    fatal: bool = False

    @property
    def reward(self) -> float:
        """The combined reward (see the module docstring)."""
        return (W_GEOMETRY * self.geometry + W_EXTRUSION * self.extrusion + W_TIME * self.time
                - DEFECT_PENALTY * self.defects - (FATAL_PENALTY if self.fatal else 0.0))


MAX_STEP_REWARD = W_GEOMETRY + W_EXTRUSION + W_TIME
"""The attainable reward of one step (all scores 1, no penalty)."""


@dataclass
class ProgramScore:
    """The score of a whole program: its layers' geometry and extrusion, one time score for the program,
    the fraction of the end conditions met (scales the layers' part), defects and a fatal failure.

    >>> ProgramScore([StepScores(1.0, 1.0), StepScores(0.5, 1.0)], time=1.0).normalized
    0.85
    >>> ProgramScore(fatal=True).reward
    -5.0
    """

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
        return (shape * self.end + W_TIME * self.time - DEFECT_PENALTY * self.defects
                - (FATAL_PENALTY if self.fatal else 0.0))

    @property
    def normalized(self) -> float:
        """``reward / MAX_STEP_REWARD``: 1 for the expert's quality, ≤ 0 for nothing or failures."""
        return self.reward / MAX_STEP_REWARD


def extrusion_score(actual_mm3: float, expected_mm3: float) -> float:
    """1 when the volume matches the expert's, falling off in log space.

    >>> extrusion_score(10.0, 10.0), round(extrusion_score(11.0, 10.0), 2), extrusion_score(0.0, 10.0)
    (1.0, 0.53, 0.0)
    >>> extrusion_score(0.0, 0.0), extrusion_score(1.0, 0.0)
    (1.0, 0.0)
    """
    if expected_mm3 <= 0.0:
        return 1.0 if actual_mm3 <= 1e-6 else 0.0
    if actual_mm3 <= 0.0:
        return 0.0
    return math.exp(-abs(math.log(actual_mm3 / expected_mm3)) / EXTRUSION_TOLERANCE)


def time_score(time_s: float, expert_time_s: float) -> float:
    """``min(1, expert / time)``; a step that takes no time scores 0 (it printed nothing).

    >>> time_score(20.0, 10.0), time_score(5.0, 10.0), time_score(0.0, 10.0)
    (0.5, 1.0, 0.0)
    """
    if time_s <= 0.0:
        return 0.0
    return min(1.0, expert_time_s / time_s)


def defect_count(failures: Sequence[Failure]) -> tuple[int, bool]:
    """Defects (non-fatal failures) among ``failures``, and whether one of them is fatal.

    >>> defect_count([Failure("nozzle_collision", "", 3), Failure("cold_extrusion", "", 9, fatal=True)])
    (1, True)
    >>> defect_count([])
    (0, False)
    """
    return sum(1 for f in failures if not f.fatal), any(f.fatal for f in failures)


# -- TRL reward functions ---------------------------------------------------------------------------------
def program_reward(completions: Sequence[Any], job: Sequence[str] | None = None, **_: Any) -> list[float | None]:
    """Reward of whole programs (``GcodeProgram``): mean step reward over the job's layers, normalised to
    [≈-5, 1]. ``job`` is the dataset column of :meth:`PrintJob.to_json` texts."""
    from envs.scoring import score_program

    if job is None:
        raise ValueError("program_reward needs the 'job' column (PrintJob.to_json) in the dataset")
    return [score_program(_text(c), PrintJob.from_json(j)).normalized for c, j in zip(completions, job, strict=True)]


def layer_reward(completions: Sequence[Any], job: Sequence[str] | None = None, layer: Sequence[int] | None = None,
                 trainer_state: Any = None, **_: Any) -> list[float | None]:
    """Reward of one layer written after the expert's program up to it (``GcodeWriter`` data)."""
    if job is None or layer is None:
        raise ValueError("layer_reward needs the 'job' and 'layer' columns in the dataset")
    step = int(getattr(trainer_state, "global_step", 0) or 0)
    return [s.reward / MAX_STEP_REWARD for s in layer_scores([_text(c) for c in completions], job, layer, step)]


_SCORES: OrderedDict[tuple[str, str, int, int | None], StepScores] = OrderedDict()
_SCORES_KEPT = 4096
"""Scores kept for the reward parts of one batch (each part asks for the same simulation)."""
_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_workers = 0
_randomize_seed: int | None = None


def set_reward_randomization(seed: int | None) -> None:
    """Score the TRL reward parts on randomised printers (``None``: the nominal printer). The printer of a
    completion is drawn from ``seed``, its job, its layer and the trainer's step: the completions of one
    GRPO group meet the same printer, each step and prompt a new one."""
    global _randomize_seed
    _randomize_seed = seed


def physics_seed(job_json: str, layer: int, step: int) -> int | None:
    """The seed of the randomised printer a layer answer meets at ``step`` (None: randomisation is off)."""
    if _randomize_seed is None:
        return None
    digest = hashlib.sha256(f"{_randomize_seed}|{step}|{layer}|{job_json}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def set_reward_workers(workers: int) -> None:
    """Simulate rewards in ``workers`` parallel processes (0: in this process). The pool starts on first
    use (``spawn``: safe beside a threaded trainer) and lives until the next call."""
    global _pool, _pool_workers
    if workers < 0:
        raise ValueError(f"reward workers = {workers}: must be 0 (in process) or more")
    if _pool is not None and workers != _pool_workers:
        _pool.shutdown(cancel_futures=True)
        _pool = None
    _pool_workers = workers


def _score(key: tuple[str, str, int, int | None]) -> StepScores:
    from envs.scoring import score_layer

    text, job_json, layer, physics_seed = key
    return score_layer(text, PrintJob.from_json(job_json), layer, physics_seed)


def remember_scores(text: str, job_json: str, layer: int, physics_seed: int | None, scores: StepScores) -> None:
    """Keep scores simulated elsewhere (a multi-turn rollout's feedback) for the reward parts to reuse."""
    _SCORES[(text, job_json, int(layer), physics_seed)] = scores


def layer_scores(texts: Sequence[str], jobs: Sequence[str], layers: Sequence[int], step: int = 0
                 ) -> list[StepScores]:
    """Scores of a batch of layer answers, simulated once each (in parallel with :func:`set_reward_workers`;
    on randomised printers with :func:`set_reward_randomization`) and remembered for the other reward parts
    of the same batch."""
    global _pool
    keys = [(t, j, int(k), physics_seed(j, int(k), step)) for t, j, k in zip(texts, jobs, layers, strict=True)]
    todo = [k for k in dict.fromkeys(keys) if k not in _SCORES]
    if _pool_workers and len(todo) > 1:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(_pool_workers, mp_context=mp.get_context("spawn"))
        results = list(_pool.map(_score, todo, chunksize=max(1, len(todo) // (4 * _pool_workers))))
    else:
        results = [_score(k) for k in todo]
    for k, r in zip(todo, results, strict=True):
        _SCORES[k] = r
    out = [_SCORES[k] for k in keys]
    while len(_SCORES) > _SCORES_KEPT:
        _SCORES.popitem(last=False)
    return out


def _component(name: str) -> Any:
    def reward(completions: Sequence[Any], job: Sequence[str] | None = None, layer: Sequence[int] | None = None,
               revision: Sequence[str] | None = None, trainer_state: Any = None, **_: Any) -> list[float | None]:
        if job is None or layer is None:
            raise ValueError(f"{name}_reward needs the 'job' and 'layer' columns in the dataset")
        # Multi-turn rollouts pass the last revision: that is the answer the episode ends with.
        texts = list(revision) if revision is not None else [_text(c) for c in completions]
        out = []
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        for s in layer_scores(texts, job, layer, step):
            out.append({"geometry": s.geometry, "extrusion": s.extrusion, "time": s.time,
                        "penalty": -(DEFECT_PENALTY * s.defects + (FATAL_PENALTY if s.fatal else 0.0))}[name])
        return out

    reward.__name__ = f"{name}_reward"
    reward.__doc__ = f"The {name} part of :func:`layer_reward` (one simulation shared by all parts)."
    return reward


geometry_reward = _component("geometry")
extrusion_reward = _component("extrusion")
time_reward = _component("time")
penalty_reward = _component("penalty")
LAYER_REWARD_PARTS = [geometry_reward, extrusion_reward, time_reward, penalty_reward]
"""``layer_reward`` split into parts for TRL (which logs each): use with ``reward_weights``
:data:`LAYER_REWARD_WEIGHTS`; the weighted sum equals ``layer_reward`` × ``MAX_STEP_REWARD``."""
LAYER_REWARD_WEIGHTS = [W_GEOMETRY, W_EXTRUSION, W_TIME, 1.0]


def _text(completion: Any) -> str:
    """A completion as text: plain strings, or chat messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)
