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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


# -- completions -----------------------------------------------------------------------------------------
def completion_text(completion: Any) -> str:
    """A completion as text: plain strings, or chat messages (the last message's content).

    >>> completion_text("G28"), completion_text([{"role": "assistant", "content": "G28"}])
    ('G28', 'G28')
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)
