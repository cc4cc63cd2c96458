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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from envs.jobs import PrintJob
from sim_bridge.deposition import raise_capsule
from sim_bridge.interpreter import F_EXTRUDE
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
    return [score_program(completion_text(c), PrintJob.from_json(j)).normalized
            for c, j in zip(completions, job, strict=True)]


def layer_reward(completions: Sequence[Any], job: Sequence[str] | None = None, layer: Sequence[int] | None = None,
                 **_: Any) -> list[float | None]:
    """Reward of one layer written after the expert's program up to it (``GcodeWriter`` data), on the
    nominal printer, normalised to 1. (GRPO uses its parts, cached and optionally randomised:
    ``training.rewards``.)"""
    from envs.scoring import score_layer

    if job is None or layer is None:
        raise ValueError("layer_reward needs the 'job' and 'layer' columns in the dataset")
    return [score_layer(completion_text(c), PrintJob.from_json(j), int(k)).reward / MAX_STEP_REWARD
            for c, j, k in zip(completions, job, layer, strict=True)]


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
