"""TRL reward adapters: the environments' rewards as picklable callables, with their state in one object.

TRL calls each reward function with ``completions`` and the dataset's columns and logs each under its
``__name__``. The writer's layer reward reaches TRL in its parts (:data:`LAYER_REWARD_PARTS`, weights
:data:`LAYER_REWARD_WEIGHTS`: the weighted sum is ``envs.scoring.layer_reward`` × ``MAX_STEP_REWARD``); all
parts of one trainer share one :class:`LayerScorer`, which simulates each answer once (in worker processes
if asked), keeps the scores for the other parts, and draws the randomised printer of sim-to-real training.
The supervisor's reward (:class:`SupervisorReward`) keeps the restored environments of its rows.

Nothing here is module state: a trainer holds its reward objects, a copy (pickle) starts with an empty
cache and no worker pool, and both measure the time they take (:class:`RewardTimer`) so the trainer can log
``train/reward_time_s``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import multiprocessing as mp
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from envs.jobs import PrintJob
from envs.rewards import (
    DEFECT_PENALTY,
    FATAL_PENALTY,
    MAX_STEP_REWARD,
    W_EXTRUSION,
    W_GEOMETRY,
    W_TIME,
    StepScores,
    completion_text,
)
from envs.scoring import score_layer
from envs.supervisor import PrintSupervisorEnv
from training.supervise import restore_state

SCORES_KEPT = 4096
"""Layer scores a :class:`LayerScorer` keeps (the reward parts of a batch ask for the same simulations)."""
STATES_KEPT = 256
"""Restored supervisor environments a :class:`SupervisorReward` keeps."""
LAYER_PARTS = ("geometry", "extrusion", "time", "penalty")
"""The parts of the layer reward, as TRL logs them (``<part>_reward``)."""
LAYER_REWARD_WEIGHTS = [W_GEOMETRY, W_EXTRUSION, W_TIME, 1.0]
"""TRL ``reward_weights`` of the parts, in :data:`LAYER_PARTS` order."""

ScoreKey = tuple[str, str, int, int | None]
"""(answer, job JSON, layer, physics seed): what decides a layer's scores."""


class RewardTimer:
    """Wall time spent in reward functions since it was last read."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def take(self) -> float:
        """The seconds counted so far; the count starts again at 0."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _score(key: ScoreKey) -> StepScores:
    text, job_json, layer, physics_seed = key
    return score_layer(text, PrintJob.from_json(job_json), layer, physics_seed)


class LayerScorer:
    """Scores layer answers for the reward parts of one trainer: simulated once each (in ``workers``
    processes when > 0, started on first use with ``spawn``, safe beside a threaded trainer), kept for the
    other parts of the batch, and — with ``randomize_seed`` — on randomised printers
    (:meth:`physics_seed`)."""

    def __init__(self, workers: int = 0, randomize_seed: int | None = None, kept: int = SCORES_KEPT) -> None:
        if workers < 0:
            raise ValueError(f"reward workers = {workers}: must be 0 (in process) or more")
        self.workers = workers
        self.randomize_seed = randomize_seed
        self.kept = kept
        self.timer = RewardTimer()
        self._scores: OrderedDict[ScoreKey, StepScores] = OrderedDict()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A process pool cannot travel, and a copy need not carry the scores of the original's batches.
        return {**self.__dict__, "_scores": OrderedDict(), "_pool": None}

    def physics_seed(self, job_json: str, layer: int, step: int) -> int | None:
        """The seed of the randomised printer a layer answer meets at trainer step ``step`` (None: the
        nominal printer). Drawn from the scorer's seed, the job, the layer and the step: the completions of
        one GRPO group meet the same printer, each step and prompt a new one."""
        if self.randomize_seed is None:
            return None
        digest = hashlib.sha256(f"{self.randomize_seed}|{step}|{layer}|{job_json}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def remember(self, text: str, job_json: str, layer: int, physics_seed: int | None, scores: StepScores) -> None:
        """Keep scores simulated elsewhere (a multi-turn rollout's feedback) for the reward parts to reuse."""
        self._scores[(text, job_json, int(layer), physics_seed)] = scores

    def scores(self, texts: Sequence[str], jobs: Sequence[str], layers: Sequence[int], step: int = 0
               ) -> list[StepScores]:
        """Scores of a batch of layer answers at trainer step ``step``."""
        keys = [(t, j, int(k), self.physics_seed(j, int(k), step)) for t, j, k in zip(texts, jobs, layers, strict=True)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._scores]
        if self.workers and len(todo) > 1:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
            results = list(self._pool.map(_score, todo, chunksize=max(1, len(todo) // (4 * self.workers))))
        else:
            results = [_score(k) for k in todo]
        for k, r in zip(todo, results, strict=True):
            self._scores[k] = r
        out = [self._scores[k] for k in keys]
        while len(self._scores) > self.kept:
            self._scores.popitem(last=False)
        return out

    def close(self) -> None:
        """Stop the worker processes (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _step(trainer_state: Any) -> int:
    return int(getattr(trainer_state, "global_step", 0) or 0)


def _part(scores: StepScores, part: str) -> float:
    if part == "penalty":
        return -(DEFECT_PENALTY * scores.defects + (FATAL_PENALTY if scores.fatal else 0.0))
    return float(getattr(scores, part))


class LayerRewardPart:
    """One part of the layer reward (``geometry``, ``extrusion``, ``time`` or ``penalty``) for TRL, scored
    by ``scorer`` (the parts of one trainer share it, and so one simulation per answer). Multi-turn rollouts
    pass ``revision``, the last answer: that is the answer the episode ends with."""

    def __init__(self, scorer: LayerScorer, part: str) -> None:
        if part not in LAYER_PARTS:
            raise ValueError(f"part {part!r}: choose one of {', '.join(LAYER_PARTS)}")
        self.scorer = scorer
        self.part = part
        self.__name__ = f"{part}_reward"

    @property
    def timer(self) -> RewardTimer:
        return self.scorer.timer

    def __call__(self, completions: Sequence[Any], job: Sequence[str] | None = None,
                 layer: Sequence[int] | None = None, revision: Sequence[str] | None = None,
                 trainer_state: Any = None, **_: Any) -> list[float | None]:
        if job is None or layer is None:
            raise ValueError(f"{self.__name__} needs the 'job' and 'layer' columns in the dataset")
        with self.timer.timing():
            texts = list(revision) if revision is not None else [completion_text(c) for c in completions]
            return [_part(s, self.part) for s in self.scorer.scores(texts, job, layer, _step(trainer_state))]


class FirstAnswerReward:
    """Multi-turn mode: the layer reward (normalised to 1) of the answer before any revision; logged beside
    the parts with weight 0, so the gain from revising is visible."""

    __name__ = "first_answer_reward"

    def __init__(self, scorer: LayerScorer) -> None:
        self.scorer = scorer

    @property
    def timer(self) -> RewardTimer:
        return self.scorer.timer

    def __call__(self, completions: Sequence[Any], job: Sequence[str] | None = None,
                 layer: Sequence[int] | None = None, first_answer: Sequence[str] | None = None,
                 trainer_state: Any = None, **_: Any) -> list[float | None]:
        if job is None or layer is None:
            raise ValueError("first_answer_reward needs the 'job' and 'layer' columns in the dataset")
        with self.timer.timing():
            texts = list(first_answer) if first_answer is not None else [completion_text(c) for c in completions]
            return [s.reward / MAX_STEP_REWARD for s in self.scorer.scores(texts, job, layer, _step(trainer_state))]


def layer_reward_functions(scorer: LayerScorer | None = None, multi_turn: bool = False
                           ) -> tuple[list[LayerRewardPart | FirstAnswerReward], list[float]]:
    """The writer's reward functions and weights for TRL, all scored by ``scorer`` (default: a new
    in-process one): the parts of the layer reward and, in multi-turn mode, the first answer's reward with
    weight 0."""
    scorer = scorer if scorer is not None else LayerScorer()
    parts: list[LayerRewardPart | FirstAnswerReward] = [LayerRewardPart(scorer, p) for p in LAYER_PARTS]
    if not multi_turn:
        return parts, list(LAYER_REWARD_WEIGHTS)
    return [*parts, FirstAnswerReward(scorer)], [*LAYER_REWARD_WEIGHTS, 0.0]


class SupervisorReward:
    """TRL reward of ``PrintSupervisor-v1`` rows: the environment's reward for sending each completion in
    its row's state (≤ 1). A row's state is restored once (:func:`training.supervise.restore_state`) and
    copied from the object's cache afterwards."""

    __name__ = "supervisor_reward"

    def __init__(self, kept: int = STATES_KEPT) -> None:
        self.kept = kept
        self.timer = RewardTimer()
        self._states: OrderedDict[tuple[str, str, str], PrintSupervisorEnv] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_states": OrderedDict()}

    def restore(self, job_json: str, hidden_json: str, history_json: str) -> PrintSupervisorEnv:
        """A fresh environment in a row's state (a copy: stepping it leaves the cache alone)."""
        key = (job_json, hidden_json, history_json)
        if key not in self._states:
            self._states[key] = restore_state(job_json, hidden_json, history_json)
            while len(self._states) > self.kept:
                self._states.popitem(last=False)
        return copy.deepcopy(self._states[key])

    def __call__(self, completions: Sequence[Any], job: Sequence[str] | None = None,
                 hidden: Sequence[str] | None = None, history: Sequence[str] | None = None,
                 **_: Any) -> list[float | None]:
        if job is None or hidden is None or history is None:
            raise ValueError("supervisor_reward needs the 'job', 'hidden' and 'history' columns in the dataset")
        with self.timer.timing():
            out: list[float | None] = []
            for c, j, h, past in zip(completions, job, hidden, history, strict=True):
                _, reward, *_ = self.restore(j, h, past).step(completion_text(c))
                out.append(float(reward))
            return out
