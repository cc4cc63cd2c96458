"""A recorded Prunt trajectory against the commanded path: when each vertex is passed, how far off it runs.

Prunt blends every corner with a curve that stays within the configured *chord error* of the corner, so
the head never goes through a commanded corner. A vertex counts as *passed* at the sample nearest it
within a stretch of samples closer than ``tolerance_mm``; vertices are searched in order, each from the
sample after the previous pass, so a path that crosses itself (a square's start corner) is matched at the
right visit. The distance at a 90° corner is the chord error Prunt kept (3.50 µm at 0.0035 mm).

Deviation measures each sample against the legs around the vertex it heads for, not the whole polyline:
a neighbouring infill line must not stand in for its own. A blend's largest distance from its two legs
is smaller than its distance from the corner (3.17 µm for a 3.5 µm chord error at 90°). The samples come
from :func:`sim_bridge.prunt_trajectory.iter_chunks`, so files of any size stream.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim_bridge.prunt_trajectory import DEFAULT_CHUNK_LINES, STEP_S, iter_chunks

DEFAULT_PASS_TOLERANCE_MM = 0.2
"""How near a sample must come to a commanded vertex to pass it: above any sane chord error (0.1 mm is
already coarse), below the shortest moves of the recordings (0.45 mm)."""


@dataclass(frozen=True, slots=True)
class Pass:
    """The sample nearest a commanded vertex."""

    vertex: int
    target_mm: tuple[float, ...]
    sample: int
    """Full-stream sample index."""
    time_s: float
    """The sample's time, padding of earlier rests left out (:mod:`sim_bridge.prunt_trajectory`)."""
    distance_mm: float
    speed_mm_s: float
    """XYZ speed over the step into the sample: the corner speed of a blended corner."""


@dataclass(frozen=True, slots=True)
class Deviation:
    """Distance of the samples from the commanded legs."""

    max_mm: float
    mean_mm: float
    """Over all samples, each weighted alike (time-weighted; rests included)."""
    max_at_time_s: float
    max_at_mm: tuple[float, ...]
    samples: int


def _leg_distance(q: np.ndarray, v: np.ndarray, h: int) -> np.ndarray:
    """Distance of points ``q`` from the legs before, into and out of vertex ``h`` (what a blend mixes)."""
    if len(v) == 1:
        return np.linalg.norm(q - v[0], axis=1)
    lo, hi = max(0, min(h - 2, len(v) - 2)), max(0, min(h, len(v) - 2))
    a, ab = v[lo:hi + 1], v[lo + 1:hi + 2] - v[lo:hi + 1]
    rel = q[:, None, :] - a[None]
    t = np.clip(np.sum(rel * ab[None], axis=2) / np.maximum(np.sum(ab * ab, axis=1), 1e-300), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * ab[None], axis=2).min(axis=1)


class _Deviation:
    """Running max and mean of :func:`_leg_distance`."""

    def __init__(self) -> None:
        self.max_mm, self.sum_mm, self.count, self.at_s, self.at_mm = 0.0, 0.0, 0, math.nan, ()

    def add(self, q: np.ndarray, t: np.ndarray, v: np.ndarray, h: int) -> None:
        if not len(q):
            return
        d = _leg_distance(q[:, :v.shape[1]], v, h)
        self.sum_mm, self.count = self.sum_mm + float(d.sum()), self.count + len(d)
        k = int(d.argmax())
        if d[k] > self.max_mm:
            self.max_mm, self.at_s, self.at_mm = float(d[k]), float(t[k]), tuple(float(x) for x in q[k])

    def result(self) -> Deviation:
        return Deviation(self.max_mm, self.sum_mm / max(self.count, 1), self.at_s, self.at_mm, self.count)


def follow_path(path: str | os.PathLike[str], vertices: Sequence[Sequence[float]], *,
                tolerance_mm: float = DEFAULT_PASS_TOLERANCE_MM, xy_only: bool = False,
                step_s: float = STEP_S, decimation: int = 1,
                chunk_lines: int = DEFAULT_CHUNK_LINES) -> tuple[list[Pass], Deviation]:
    """:func:`pass_times` and :func:`path_deviation` in one streamed read of the recording."""
    v = np.asarray(vertices, float)
    if v.ndim != 2 or v.shape[1] != 3 or not len(v) or not tolerance_mm > 0:
        raise ValueError(f"vertices must be (x, y, z) triples in mm and tolerance_mm > 0, not shape "
                         f"{v.shape} and {tolerance_mm}")
    # Passes are found in XYZ (in XY alone a Z move's two ends are one point); xy_only is for deviation.
    legs = v[:, :2] if xy_only else v
    passes: list[Pass] = []
    dev = _Deviation()
    # The open stretch's best sample: distance, position in the buffer (-1: before it), sample, time, speed.
    best: list | None = None
    carry = (np.empty((0, 3)), np.empty(0), np.empty(0), np.empty(0, np.int64))
    prev, closest = None, math.inf
    for chunk in iter_chunks(path, step_s=step_s, decimation=decimation, chunk_lines=chunk_lines):
        xyz = chunk.xyze[:, :3]
        steps = np.diff(np.concatenate((xyz[:1] if prev is None else prev, xyz)), axis=0)
        prev = xyz[-1:]
        new = (xyz, chunk.time_s, np.linalg.norm(steps, axis=1) / (step_s * decimation),
               (chunk.first + np.arange(len(xyz))) * decimation)
        q, t, s, sample = (np.concatenate(pair) for pair in zip(carry, new, strict=True))
        # Samples are measured up to each pass against the legs around that vertex; those after a pass
        # (or after the open stretch's best sample, carried on) belong to the next one.
        measured, j = 0, 0
        while j < len(q) and len(passes) < len(v):
            dist = np.linalg.norm(q[j:] - v[len(passes)], axis=1)
            inside = np.flatnonzero(dist <= tolerance_mm) if best is None else np.zeros(1, np.int64)
            if not inside.size:
                closest = min(closest, float(dist.min()))
                break
            f = int(inside[0])
            out = np.flatnonzero(dist[f:] > tolerance_mm)
            stop = j + f + (int(out[0]) if out.size else len(dist) - f)
            k = j + f + int(dist[f:stop - j].argmin())
            if best is None or dist[k - j] < best[0]:
                best = [float(dist[k - j]), k, int(sample[k]), float(t[k]), float(s[k])]
            dev.add(q[measured:best[1] + 1], t[measured:best[1] + 1], legs, len(passes))
            measured = max(measured, best[1] + 1)
            if not out.size:
                break  # still near the vertex at the chunk's end
            passes.append(Pass(len(passes), tuple(float(x) for x in v[len(passes)]), best[2], best[3],
                               best[0], best[4]))
            j, best, closest = best[1] + 1, None, math.inf
        if best is None:
            dev.add(q[measured:], t[measured:], legs, len(passes))
            measured = len(q)
        # The samples not measured yet (after the open stretch's best one) go on to the next chunk.
        carry = (q[measured:], t[measured:], s[measured:], sample[measured:])
        if best is not None:
            best[1] = -1
    if best is not None:
        passes.append(Pass(len(passes), tuple(float(x) for x in v[len(passes)]), best[2], best[3], best[0],
                           best[4]))
        dev.add(carry[0], carry[1], legs, len(passes))
    if len(passes) < len(v):
        h = len(passes)
        raise ValueError(f"{path}: vertex {h} {tuple(float(x) for x in v[h])} is never passed within "
                         f"{tolerance_mm} mm after vertex {h - 1} (closest {closest:.4g} mm)")
    return passes, dev.result()


def pass_times(path: str | os.PathLike[str], vertices: Sequence[Sequence[float]], *,
               tolerance_mm: float = DEFAULT_PASS_TOLERANCE_MM, step_s: float = STEP_S, decimation: int = 1,
               chunk_lines: int = DEFAULT_CHUNK_LINES) -> list[Pass]:
    """When the trajectory passes each commanded vertex (x, y, z in mm, in program order), streaming.

    A vertex is passed at the nearest sample of the first stretch within ``tolerance_mm`` after the
    previous pass; one never passed raises ValueError naming it and the closest distance seen."""
    return follow_path(path, vertices, tolerance_mm=tolerance_mm, step_s=step_s, decimation=decimation,
                       chunk_lines=chunk_lines)[0]


def path_deviation(path: str | os.PathLike[str], vertices: Sequence[Sequence[float]], *,
                   tolerance_mm: float = DEFAULT_PASS_TOLERANCE_MM, xy_only: bool = False,
                   step_s: float = STEP_S, decimation: int = 1,
                   chunk_lines: int = DEFAULT_CHUNK_LINES) -> Deviation:
    """Max and mean distance of the samples (XYZ, or XY with ``xy_only``) from the commanded polyline,
    each sample against the legs around the vertex it heads for (see the module doc)."""
    return follow_path(path, vertices, tolerance_mm=tolerance_mm, xy_only=xy_only, step_s=step_s,
                       decimation=decimation, chunk_lines=chunk_lines)[1]


@dataclass(frozen=True, slots=True)
class TimingComparison:
    """A planned run against a recorded one, corner by corner."""

    corners: int
    """Corners compared: between two moves of the head (next to an extrude-only move the head stands at
    the corner for the whole E move, so when it "passes" is not defined by position)."""
    segment_error_s: np.ndarray
    """Planned minus recorded time between consecutive compared corners."""
    segment_real_s: np.ndarray
    """Recorded time between consecutive compared corners."""
    corner_speed_real_mm_s: np.ndarray
    corner_speed_planned_mm_s: np.ndarray
    """XYZ speeds at the compared corners."""


def compare_timing(path: str | os.PathLike[str], starts: np.ndarray, ends: np.ndarray, de: np.ndarray,
                   profile: np.ndarray, *, tolerance_mm: float = DEFAULT_PASS_TOLERANCE_MM, step_s: float = STEP_S,
                   decimation: int = 1) -> TimingComparison:
    """Compare a recording with a plan of the same program: moves ``starts``→``ends`` (XYZ, mm) with
    extrusion ``de`` and the planner's table ``profile`` (:func:`sim_bridge.prunt_planner.plan_prunt`:
    speeds at move ends in column 2, ramp/coast/ramp times in columns 3–5)."""
    length = np.linalg.norm(ends - starts, axis=1)
    n = len(length)
    # Every corner of the head is searched for, in order, so that none is found where the path crossed it
    # earlier; only the clean ones are compared.
    kinematic = [i for i in range(n) if length[i] > 0]
    passes = pass_times(path, [tuple(ends[i]) for i in kinematic], tolerance_mm=tolerance_mm, step_s=step_s,
                        decimation=decimation)
    clean = [k for k, i in enumerate(kinematic) if i + 1 == n or length[i + 1] > 0]
    idx = [kinematic[k] for k in clean]
    planned_t = np.cumsum(profile[:, 3] + profile[:, 4] + profile[:, 5])[idx]
    real_t = np.array([passes[k].time_s for k in clean])
    real_dt = np.diff(np.r_[0.0, real_t])
    # The planner's speeds are along the XYZE path; the recording's are XYZ speeds.
    planned_v = profile[idx, 2] * length[idx] / np.hypot(length[idx], de[idx])
    return TimingComparison(len(idx), np.diff(np.r_[0.0, planned_t]) - real_dt, real_dt,
                            np.array([passes[k].speed_mm_s for k in clean]), planned_v)
