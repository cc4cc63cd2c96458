"""The geometry score: how well the beads a simulator laid at a layer's height cover the layer's outline.

The score is the IoU, on a grid of :data:`GEOMETRY_RESOLUTION_MM` cells around the part's footprint, of the
covered region against the layer's filled outline (:func:`target_region`). The covered region is the
layer's bead cells after a morphological closing by a disk (:func:`closing_radius_mm`: half the infill line
spacing) that bridges the gaps between sparse infill lines, with every region they enclose filled in (a
closed perimeter loop covers its interior) except the part's own holes. So a correct 20 % infill, or a
correct perimeter-only layer, covers its outline; a loop a millimetre off loses a little, not everything;
printing nothing, or half a layer, scores low.

The part of the work that depends only on the job and layer (the grid and the target's cells) is computed
once per layer and kept (:func:`layer_raster`); the beads are rasterised in one compiled call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import shapely
from scipy import ndimage

from envs.jobs import PrintJob
from sim_bridge.deposition import raise_capsule
from sim_bridge.events import F_EXTRUDE
from sim_bridge.kernels import kernel
from sim_bridge.simulator import Simulator

GRID_PHASE = 0.3719
"""Offset of the scoring grid, in cells, from round coordinates."""
WINDOW_MARGIN_MM = 5.0
"""Margin around the part's footprint in which material counts for geometry."""
GEOMETRY_RESOLUTION_MM = 0.1
"""Cell of the geometry score's grid."""
RASTERS_KEPT = 1024
"""Layer rasters kept (one per job, layer and resolution: the targets of a dataset's prompts)."""


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


def layer_band(job: PrintJob, layer: int) -> tuple[float, float]:
    """Nozzle heights that count as printing layer ``layer``: its Z ± half a layer height."""
    zs = job.layer_zs()
    z = zs[layer]
    h = z - (zs[layer - 1] if layer > 0 else 0.0)
    return z - 0.5 * h, z + 0.5 * h


class LayerMoves(NamedTuple):
    """The extruding moves a simulator ran at one layer's height."""

    starts: np.ndarray
    """Start points (n, 3), mm."""
    ends: np.ndarray
    """End points (n, 3), mm."""
    widths_mm: np.ndarray
    """Bead widths (n,)."""
    volumes_mm3: np.ndarray
    """Material delivered on each move (n,)."""

    @property
    def volume_mm3(self) -> float:
        """Material delivered on all of them."""
        return float(self.volumes_mm3.sum())


def layer_moves(sim: Simulator, job: PrintJob, layer: int) -> LayerMoves:
    """Extruding moves the simulator ran at layer ``layer``'s height."""
    lo, hi = layer_band(job, layer)
    starts, ends, widths, volumes = [], [], [], []
    area = sim.profile.filament_area_mm2 * sim.extrusion_scale
    for moves in sim.executed:
        # One chunk per episode step: testing each one's height range keeps a step's cost flat over an episode.
        z_lo, z_hi = moves.extruded_z_mm
        if z_hi <= lo or z_lo > hi:
            continue
        sel = ((moves.flags & F_EXTRUDE) != 0) & (moves.xyz[:, 2] > lo) & (moves.xyz[:, 2] <= hi)
        if sel.any():
            starts.append(moves.starts[sel])
            ends.append(moves.xyz[sel])
            widths.append(moves.width[sel])
            volumes.append(moves.de[sel] * moves.delivered[sel] * area)
    if not starts:
        empty = np.zeros((0, 3))
        return LayerMoves(empty, empty, np.zeros(0), np.zeros(0))
    return LayerMoves(np.vstack(starts), np.vstack(ends), np.concatenate(widths), np.concatenate(volumes))


@dataclass(frozen=True)
class LayerRaster:
    """The scoring grid of one layer and what it must cover, cell by cell (arrays read-only)."""

    x0_mm: float
    """Centre of cell (0, 0)."""
    y0_mm: float
    resolution_mm: float
    wanted: np.ndarray
    """Cells inside the target region, (ny, nx)."""
    holes: np.ndarray | None
    """Cells inside the part's holes (None: the layer has none)."""


@lru_cache(maxsize=RASTERS_KEPT)
def _layer_raster(job_json: str, layer: int, resolution_mm: float) -> LayerRaster | None:
    target = target_region(PrintJob.from_json(job_json), layer)
    if target.is_empty:
        return None
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
    gx, gy = np.meshgrid(x0 + np.arange(nx) * resolution_mm, y0 + np.arange(ny) * resolution_mm)
    wanted = shapely.contains_xy(target, gx, gy)
    wanted.setflags(write=False)
    region = _holes(target)
    holes = None
    if not region.is_empty:
        holes = shapely.contains_xy(region, gx, gy)
        holes.setflags(write=False)
    return LayerRaster(x0, y0, resolution_mm, wanted, holes)


def layer_raster(job: PrintJob, layer: int, resolution_mm: float = GEOMETRY_RESOLUTION_MM) -> LayerRaster | None:
    """The scoring grid of layer ``layer`` (None when the layer has nothing to cover); computed once per job,
    layer and resolution, then kept (:data:`RASTERS_KEPT`)."""
    return _layer_raster(job.to_json(), layer, resolution_mm)


def _beads_work(grid: np.ndarray, starts: np.ndarray, ends: np.ndarray, widths_mm: np.ndarray, x0_mm: float,
                y0_mm: float, resolution_mm: float) -> float:
    # Cells covered, in the units of sim_bridge.deposition's estimate (a cell costs Python about 0.5 us).
    length_mm = np.hypot(*(ends[:, :2] - starts[:, :2]).T) + widths_mm
    return float(widths_mm.shape[0] + (length_mm * widths_mm).sum() / resolution_mm**2 / 20.0)


@kernel(work=_beads_work)
def _raise_beads(grid: np.ndarray, starts: np.ndarray, ends: np.ndarray, widths_mm: np.ndarray, x0_mm: float,
                 y0_mm: float, resolution_mm: float) -> None:
    """Mark every cell a bead covers (one compiled loop over the moves)."""
    for i in range(widths_mm.shape[0]):
        raise_capsule(grid, starts[i, 0], starts[i, 1], ends[i, 0], ends[i, 1], 0.5 * widths_mm[i], 1.0, 1.0,
                      x0_mm, y0_mm, resolution_mm)


EDT_CLOSING_MIN_RADIUS_CELLS = 5
"""From this radius on, closing by distance transforms beats scipy's closing by a disk (whose cost grows
with the disk's area): measured on 250² and 400² cell layers, 1 ms against 4 ms at radius 1, 22 ms against
9 ms at radius 8 (``benchmarks/bench_reward_path.py score``; both give the same cells)."""


def _disk(radius_cells: int) -> np.ndarray:
    y, x = np.ogrid[-radius_cells:radius_cells + 1, -radius_cells:radius_cells + 1]
    return x * x + y * y <= radius_cells * radius_cells


def close_disk(mask: np.ndarray, radius_cells: int) -> np.ndarray:
    """Morphological closing of ``mask`` by a disk of ``radius_cells`` (at least 1), cells outside the mask
    counting as empty: the cells of ``ndimage.binary_closing`` with that disk on a mask padded by
    ``radius_cells + 1`` — computed so for small disks, and from two exact Euclidean distance transforms
    (cost independent of the radius) for large ones.

    >>> m = np.zeros((9, 9), bool); m[:, 2] = m[:, 6] = True  # two lines, a gap of three cells
    >>> close_disk(m, 2)[4].astype(int).tolist()
    [0, 0, 1, 1, 1, 1, 1, 0, 0]
    """
    r = max(1, radius_cells)
    pad = radius_cells + 1
    padded = np.pad(mask, pad)
    if not padded.any():
        return np.zeros_like(mask)
    if r < EDT_CLOSING_MIN_RADIUS_CELLS:
        return ndimage.binary_closing(padded, structure=_disk(r))[pad:-pad, pad:-pad]
    # Dilation: cells within r of a marked cell. Erosion of that: cells farther than r from every unmarked
    # cell, a ring of unmarked cells standing for everything outside (the disk is convex and symmetric, so
    # the nearest outside cell is never nearer than the ring).
    dilated = ndimage.distance_transform_edt(~padded) <= r
    closed = ndimage.distance_transform_edt(np.pad(dilated, 1))[1:-1, 1:-1] > r
    return closed[pad:-pad, pad:-pad]


def moves_geometry_score(job: PrintJob, layer: int, moves: LayerMoves,
                         resolution_mm: float = GEOMETRY_RESOLUTION_MM) -> float:
    """IoU of the region ``moves`` cover against :func:`target_region` (see :func:`geometry_score`)."""
    raster = layer_raster(job, layer, resolution_mm)
    if raster is None:
        return 0.0
    grid = np.zeros(raster.wanted.shape, dtype=np.float32)
    _raise_beads(grid, moves.starts, moves.ends, moves.widths_mm, raster.x0_mm, raster.y0_mm, resolution_mm)
    covered = close_disk(grid > 0.5, int(round(closing_radius_mm(job, layer) / resolution_mm)))
    covered = ndimage.binary_fill_holes(covered)
    if raster.holes is not None:
        covered &= ~raster.holes
    union = np.count_nonzero(covered | raster.wanted)
    return float(np.count_nonzero(covered & raster.wanted) / union) if union else 0.0


def geometry_score(sim: Simulator, job: PrintJob, layer: int,
                   resolution_mm: float = GEOMETRY_RESOLUTION_MM) -> float:
    """IoU of the region layer ``layer`` covers against :func:`target_region`.

    The covered region is rasterised from the beads the simulator laid at the layer's height (so later
    layers do not hide it), closed over infill gaps, and compared cell by cell with the target.
    """
    return moves_geometry_score(job, layer, layer_moves(sim, job, layer), resolution_mm)
