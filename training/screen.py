"""GRPO's prompts screened by the model it starts from (``grpo.screen_geometry``).

A GRPO group teaches only where its answers differ in reward. The SFT model of the default run prints most
parts already and is so peaked that its samples for such a prompt are one program: a batch drawn at random
is mostly groups with nothing to learn (``frac_reward_zero_std``). Screening answers every candidate prompt
once, greedily, scores the answer in the simulator (the reward's own scorer), and puts first the prompts the
model still gets wrong — a fatal step, a defect, or geometry below ``screen_geometry`` — then fills the
steps' prompts with the others in a seeded shuffle. This is DAPO's dynamic sampling done once before
training instead of per batch (one greedy answer a prompt, not a group): cheap enough for the CPU default.

The kept row indices are written to ``screen.json`` in the phase's folder, so a resumed run trains on the
same prompts without answering them again.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from agent.policy import Policy
from envs.rewards import StepScores
from training.rewards import LayerScorer

SCREEN_FILE = "screen.json"
"""The screening's record in the GRPO phase's folder."""


@dataclass(frozen=True)
class Screening:
    """What the screening found and kept."""

    candidates: int
    """Prompts answered."""
    geometry_below: float
    """The bar the answers were screened against."""
    prompts_needed: int
    """Prompts the steps needed."""
    hard: int
    """Of them, those the model still gets wrong (kept first)."""
    fatal: int
    """Of the hard ones, those whose answer ended on a fatal step (e.g. a move the firmware refuses)."""
    kept: list[int]
    """Row indices GRPO trains on, hard ones first."""
    seconds: float
    """Wall time of the screening."""


def is_hard(scores: StepScores, geometry_below: float) -> bool:
    """Whether an answer leaves something to learn: fatal, with a defect, or geometry under the bar."""
    return scores.fatal or scores.defects > 0 or scores.geometry < geometry_below


def screen_rows(policy: Policy, rows: datasets.Dataset, *, prompts_needed: int, geometry_below: float, seed: int,
                folder: Path) -> Screening:
    """Screen ``rows`` (GRPO's prompt rows: ``prompt``, ``job``, ``layer``) with ``policy`` (the starting
    model, greedy); at least ``prompts_needed`` rows are kept when there are that many (the hard ones, then
    others). Reads the record in ``folder`` instead when a screening of as many rows against the same bar
    for as many prompts left one (a resumed run)."""
    record = folder / SCREEN_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if (saved.get("candidates"), saved.get("geometry_below"), saved.get("prompts_needed")) == (
                len(rows), geometry_below, prompts_needed):
            return Screening(**saved)
    start = time.monotonic()
    print(f"[grpo] screening {len(rows)} prompts with the starting model (greedy answers, simulated)", flush=True)
    texts = policy(list(rows["prompt"]))
    scorer = LayerScorer()
    scores = scorer.scores(texts, list(rows["job"]), list(rows["layer"]))
    scorer.close()
    hard = [i for i, s in enumerate(scores) if is_hard(s, geometry_below)]
    hard_set = set(hard)
    others = [i for i in range(len(rows)) if i not in hard_set]
    random.Random(seed).shuffle(others)
    kept = hard + others[:max(0, prompts_needed - len(hard))]
    result = Screening(candidates=len(rows), geometry_below=geometry_below, prompts_needed=prompts_needed,
                       hard=len(hard), fatal=sum(scores[i].fatal for i in hard), kept=kept,
                       seconds=round(time.monotonic() - start, 1))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(record)
    print(f"[grpo] screening: {result.hard} of {result.candidates} prompts still wrong ({result.fatal} fatal), "
          f"training on {len(kept)} ({result.seconds:.0f} s)", flush=True)
    return result
