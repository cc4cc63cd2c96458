"""What the supervisor's telemetry measures of a layer, and the reward of a layer against the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from envs.jobs import PrintJob
from envs.rewards import DEFECT_PENALTY, FATAL_PENALTY, extrusion_score
from envs.slicer import cached_slice
from envs.supervisor.physics import printer
from sim_bridge.events import F_EXTRUDE
from sim_bridge.options import SimOptions
from sim_bridge.simulator import Simulator

RESOLUTION_MM = 0.2
"""Height-map cell of the supervisor's simulator (coarser than the writer's: the reward needs no IoU)."""
REFERENCE_JOBS_KEPT = 256
"""Jobs whose reference measurements :func:`reference_layers` keeps."""
REFUSED_PENALTY = 0.5
"""Per refused command."""
TIME_WEIGHT = 0.1
"""Per unit of layer time beyond the reference's (a layer twice as slow costs 0.1)."""
DIMENSION_TOLERANCE_MM = 1.0
"""Dimensional score ``exp(-error / tolerance)`` of a layer's outer extent against the reference's."""

TELEMETRY_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("layers_done_fraction", "exact", 0.0, 1.0),
    ("layer_count", "exact", 0.0, 1000.0),
    ("hotend_error_c", "temperature", -300.0, 300.0),
    ("hotend_target_offset_c", "exact", -300.0, 300.0),
    ("bed_error_c", "temperature", -200.0, 200.0),
    ("delivered_fraction", "ratio", 0.0, 1.0),
    ("width_ratio", "ratio", 0.0, 10.0),
    ("height_ratio", "ratio", 0.0, 10.0),
    ("volume_ratio", "ratio", 0.0, 10.0),
    ("extent_error_mm", "length", 0.0, 1000.0),
    ("peak_flow_mm3_s", "flow", 0.0, 1000.0),
    ("defects", "exact", 0.0, 1000.0),
    ("fan", "exact", 0.0, 1.0),
    ("flow_factor", "exact", 0.0, 5.0),
    ("speed_factor", "exact", 0.0, 5.0),
    ("pressure_advance_s", "exact", 0.0, 5.0),
    ("refused", "exact", 0.0, 1000.0),
    ("time_ratio", "exact", 0.0, 100.0),
)
"""The telemetry vector: name, sensor kind (for :class:`envs.wrappers.SensorNoise`), low, high."""
TELEMETRY_NAMES = tuple(f[0] for f in TELEMETRY_FIELDS)
TELEMETRY_LOW = np.array([f[2] for f in TELEMETRY_FIELDS], dtype=np.float32)
TELEMETRY_HIGH = np.array([f[3] for f in TELEMETRY_FIELDS], dtype=np.float32)


@dataclass(frozen=True)
class LayerMeasure:
    """What the telemetry reports about one layer (from the simulator's executed moves)."""

    time_s: float = 0.0
    volume_mm3: float = 0.0
    """Material delivered on extruding moves."""
    delivered_fraction: float = 1.0
    """Delivered over commanded filament (below 1 where the flow exceeded the melt capacity)."""
    width_mm: float = 0.0
    """Mean bead width, weighted by length."""
    height_mm: float = 0.0
    """Mean bead height (delivered cross-section over width), weighted by length."""
    peak_flow_mm3_s: float = 0.0
    """Highest commanded volumetric flow."""
    bbox_mm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Outer extent of the beads: x0, y0, x1, y1."""


def measure_runs(sim: Simulator, first_run: int, t0_s: float) -> LayerMeasure:
    """Measure what the runs ``sim.executed[first_run:]`` printed (one layer)."""
    area = sim.profile.filament_area_mm2 * sim.extrusion_scale
    parts = [m for m in sim.executed[first_run:] if len(m.de)]
    time_s = sim.time_s - t0_s
    if not parts:
        return LayerMeasure(time_s=time_s)
    starts = np.vstack([m.starts for m in parts])
    ends = np.vstack([m.xyz for m in parts])
    de = np.concatenate([m.de for m in parts])
    delivered = np.concatenate([m.delivered for m in parts])
    width = np.concatenate([m.width for m in parts])
    layer = np.concatenate([m.layer for m in parts])
    ext = ((np.concatenate([m.flags for m in parts]) & F_EXTRUDE) != 0) & (de > 0)
    if not ext.any():
        return LayerMeasure(time_s=time_s)
    starts, ends, de, delivered, width = starts[ext], ends[ext], de[ext], delivered[ext], width[ext]
    length = np.hypot(ends[:, 0] - starts[:, 0], ends[:, 1] - starts[:, 1])
    volume = de * delivered * area
    path = float(length.sum())
    mean_width = float((width * length).sum() / path) if path > 0 else 0.0
    laid = float((width * length).sum())
    half = 0.5 * width
    bbox = (float((np.minimum(starts[:, 0], ends[:, 0]) - half).min()),
            float((np.minimum(starts[:, 1], ends[:, 1]) - half).min()),
            float((np.maximum(starts[:, 0], ends[:, 0]) + half).max()),
            float((np.maximum(starts[:, 1], ends[:, 1]) + half).max()))
    peak = max((sim.layers[k].max_flow_mm3_s for k in np.unique(layer[ext]).tolist() if k in sim.layers),
               default=0.0)
    return LayerMeasure(time_s=time_s, volume_mm3=float(volume.sum()),
                        delivered_fraction=float((de * delivered).sum() / de.sum()), width_mm=mean_width,
                        height_mm=float(volume.sum()) / laid if laid > 0 else 0.0, peak_flow_mm3_s=float(peak),
                        bbox_mm=bbox)


def bbox_error_mm(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Largest difference between the edges of two extents."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def supervisor_reward(measure: LayerMeasure, reference: LayerMeasure, defects: int, refused: int,
                      fatal: bool) -> float:
    """One layer's reward: quality minus penalties (see ``PrintSupervisor-v1``'s Rewards).

    >>> ref = LayerMeasure(time_s=30.0, volume_mm3=100.0, bbox_mm=(0, 0, 10, 10))
    >>> supervisor_reward(ref, ref, 0, 0, False)
    1.0
    >>> round(supervisor_reward(LayerMeasure(60.0, 110.0, 1.0, bbox_mm=(0, 0, 10, 10)), ref, 0, 1, False), 3)
    -0.07
    """
    quality = extrusion_score(measure.volume_mm3, reference.volume_mm3) * measure.delivered_fraction
    quality *= math.exp(-bbox_error_mm(measure.bbox_mm, reference.bbox_mm) / DIMENSION_TOLERANCE_MM)
    slow = max(0.0, measure.time_s / reference.time_s - 1.0) if reference.time_s > 0 else 0.0
    return (quality - DEFECT_PENALTY * defects - REFUSED_PENALTY * refused - TIME_WEIGHT * slow
            - (FATAL_PENALTY if fatal else 0.0))


@lru_cache(maxsize=REFERENCE_JOBS_KEPT)
def reference_layers(job_json: str, resolution_mm: float = RESOLUTION_MM) -> tuple[LayerMeasure, ...]:
    """What the reference program measures, layer by layer, on the nominal printer (cached per job)."""
    job = PrintJob.from_json(job_json)
    program = cached_slice(job)
    sim = Simulator(printer(job.printer), job.material, SimOptions(resolution_mm=resolution_mm))
    sim.run(program.start if job.start_end else program.setup)
    out = []
    for text in program.layers:
        first, t0 = len(sim.executed), sim.time_s
        sim.run(text)
        out.append(measure_runs(sim, first, t0))
    if sim.fatal is not None:
        raise RuntimeError(f"the reference program of {job.job_id} fails: {sim.fatal.message} "
                           f"(line {sim.fatal.line})")
    return tuple(out)
