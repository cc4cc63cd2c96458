"""Rewards: plain functions shared by the environments and the trainers.

Scores are in [0, 1]; the per-step reward combines them and subtracts penalties:

    reward = 0.6 · geometry + 0.25 · extrusion + 0.15 · time − 1 · (each defect) − 5 · (a fatal failure)

* **geometry** — IoU of the region a layer covers against the layer's filled outline. The covered region is
  the layer's deposited cells after a morphological closing that bridges the gaps between sparse infill
  lines, with every region they enclose filled in (a closed perimeter loop covers its interior) except the
  part's own holes. So a correct 20 % infill, or a correct perimeter-only layer, covers its outline; a loop
  a millimetre off loses a little, not everything; printing nothing, or half a layer, scores low: short
  outputs cannot win.
* **extrusion** — ``exp(-|ln(actual/expected)| / 0.15)``: 1 at the expert's volume, 0.51 at ±10 %.
* **time** — ``min(1, expert_time / time)``.

The TRL-facing functions (:func:`program_reward`, :func:`layer_reward`) take ``completions`` and the
dataset's job columns and return one float per completion, as ``GRPOTrainer`` expects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import multiprocessing as mp
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from envs.jobs import PrintJob
from sim_bridge.deposition import raise_capsule
from sim_bridge.events import F_EXTRUDE
from sim_bridge.report import PrintReport
from sim_bridge.simulator import Simulator

W_GEOMETRY = 0.6
W_EXTRUSION = 0.25
W_TIME = 0.15
DEFECT_PENALTY = 1.0
FATAL_PENALTY = 5.0
EXTRUSION_TOLERANCE = 0.15
"""Width of the extrusion score in log space (0.15 → half score at about ±10 %)."""
GRID_PHASE = 0.3719
"""Offset of the scoring grid, in cells, from round coordinates."""
WINDOW_MARGIN_MM = 5.0
"""Margin around the part's footprint in which material counts for geometry."""


@dataclass
class StepScores:
    """The parts of one step's reward."""

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


def layer_is_perimeter_only(job: PrintJob, layer: int) -> bool:
    """True when the layer is printed as perimeters alone (no infill)."""
    p = job.process
    solid = layer < p.solid_layers or layer >= job.layer_count - p.solid_layers
    return p.infill_density <= 0.0 and not solid


def target_region(job: PrintJob, layer: int) -> shapely.Geometry:
    """What layer ``layer`` must cover: its filled outline (the part's holes stay empty)."""
    return job.target(layer)


def closing_radius_mm(job: PrintJob, layer: int) -> float:
    """Gap the covered region bridges: half the infill line spacing (or half a line width)."""
    p = job.process
    w = p.line_width_mm
    if layer_is_perimeter_only(job, layer):
        return 0.5 * w
    solid = layer < p.solid_layers or layer >= job.layer_count - p.solid_layers
    density = 1.0 if solid else max(p.infill_density, 1e-3)
    spacing = w / density if p.infill_pattern == "lines" else 2.0 * w / density
    return 0.5 * spacing + 0.5 * w


def _holes(region: shapely.Geometry) -> shapely.Geometry:
    """The interiors (holes) of a polygon region, as a region."""
    polygons = getattr(region, "geoms", [region])
    rings = [shapely.Polygon(ring) for poly in polygons for ring in getattr(poly, "interiors", [])]
    return shapely.union_all(rings) if rings else shapely.Polygon()


def _disk(radius_cells: int) -> np.ndarray:
    r = max(1, radius_cells)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def layer_band(job: PrintJob, layer: int) -> tuple[float, float]:
    """Nozzle heights that count as printing layer ``layer``: its Z ± half a layer height."""
    zs = job.layer_zs()
    z = zs[layer]
    h = z - (zs[layer - 1] if layer > 0 else 0.0)
    return z - 0.5 * h, z + 0.5 * h


def layer_moves(sim: Simulator, job: PrintJob, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Extruding moves the simulator ran at layer ``layer``'s height: starts, ends, bead widths, volumes."""
    lo, hi = layer_band(job, layer)
    starts, ends, widths, volumes = [], [], [], []
    area = sim.profile.filament_area_mm2 * sim.extrusion_scale
    for moves in sim.executed:
        sel = ((moves.flags & F_EXTRUDE) != 0) & (moves.xyz[:, 2] > lo) & (moves.xyz[:, 2] <= hi)
        if sel.any():
            starts.append(moves.starts[sel])
            ends.append(moves.xyz[sel])
            widths.append(moves.width[sel])
            volumes.append(moves.de[sel] * moves.delivered[sel] * area)
    if not starts:
        empty = np.zeros((0, 3))
        return empty, empty, np.zeros(0), np.zeros(0)
    return np.vstack(starts), np.vstack(ends), np.concatenate(widths), np.concatenate(volumes)


def layer_volume_mm3(sim: Simulator, job: PrintJob, layer: int) -> float:
    """Material delivered at layer ``layer``'s height."""
    return float(layer_moves(sim, job, layer)[3].sum())


def geometry_score(sim: Simulator, job: PrintJob, layer: int, resolution_mm: float = 0.1) -> float:
    """IoU of the region layer ``layer`` covers against :func:`target_region`.

    The covered region is rasterised from the beads the simulator laid at the layer's height (so later
    layers do not hide it), closed over infill gaps, and compared cell by cell with the target.
    """
    target = target_region(job, layer)
    if target.is_empty:
        return 0.0
    starts, ends, widths, _ = layer_moves(sim, job, layer)
    # The window is the part's footprint plus a margin: material far from the part (a purge line) is not
    # geometry, and the extrusion score already counts its volume.
    x0, y0, x1, y1 = target.bounds
    # Cell centres sit an odd fraction of a cell off the round grid, so an outline and a bead edge that
    # coincide on a round coordinate never fall on a cell centre (shapely counts boundary points as outside,
    # the beads as inside: a tie would cost a whole row of cells).
    x0 = math.floor((x0 - WINDOW_MARGIN_MM) / resolution_mm) * resolution_mm + GRID_PHASE * resolution_mm
    y0 = math.floor((y0 - WINDOW_MARGIN_MM) / resolution_mm) * resolution_mm + GRID_PHASE * resolution_mm
    nx = int(math.ceil((x1 + WINDOW_MARGIN_MM - x0) / resolution_mm)) + 1
    ny = int(math.ceil((y1 + WINDOW_MARGIN_MM - y0) / resolution_mm)) + 1
    grid = np.zeros((ny, nx), dtype=np.float32)
    for (ax, ay, _), (bx, by, _), w in zip(starts, ends, widths, strict=True):
        raise_capsule(grid, ax, ay, bx, by, 0.5 * w, 1.0, 1.0, x0, y0, resolution_mm)
    covered = grid > 0.5
    radius = int(round(closing_radius_mm(job, layer) / resolution_mm))
    pad = radius + 1
    covered = ndimage.binary_closing(np.pad(covered, pad), structure=_disk(radius))[pad:-pad, pad:-pad]
    covered = ndimage.binary_fill_holes(covered)
    gx, gy = np.meshgrid(x0 + np.arange(nx) * resolution_mm, y0 + np.arange(ny) * resolution_mm)
    wanted = shapely.contains_xy(target, gx, gy)
    holes = _holes(target)
    if not holes.is_empty:
        covered &= ~shapely.contains_xy(holes, gx, gy)
    union = np.count_nonzero(covered | wanted)
    return float(np.count_nonzero(covered & wanted) / union) if union else 0.0


def extrusion_score(actual_mm3: float, expected_mm3: float) -> float:
    """1 when the volume matches the expert's, falling off in log space.

    >>> extrusion_score(10.0, 10.0), round(extrusion_score(11.0, 10.0), 2), extrusion_score(0.0, 10.0)
    (1.0, 0.53, 0.0)
    """
    if expected_mm3 <= 0.0:
        return 1.0 if actual_mm3 <= 1e-6 else 0.0
    if actual_mm3 <= 0.0:
        return 0.0
    return math.exp(-abs(math.log(actual_mm3 / expected_mm3)) / EXTRUSION_TOLERANCE)


def time_score(time_s: float, expert_time_s: float) -> float:
    """``min(1, expert / time)``; a step that takes no time scores 0 (it printed nothing)."""
    if time_s <= 0.0:
        return 0.0
    return min(1.0, expert_time_s / time_s)


def defect_count(report: PrintReport, first_failure: int = 0) -> tuple[int, bool]:
    """Defects and whether a fatal failure occurred, among ``report.failures[first_failure:]``."""
    new = report.failures[first_failure:]
    return sum(1 for f in new if not f.fatal), any(f.fatal for f in new)


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
