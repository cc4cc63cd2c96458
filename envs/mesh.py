"""A job's part as a closed mesh: what a real slicer needs to print the same layers the job asks for.

Each run of layers with the same outline (:meth:`~envs.jobs.PrintJob.target`) becomes one prism from the
bottom of its first layer to the top of its last, its caps triangulated (shapely's constrained Delaunay
triangulation, holes kept) and its walls one quad per outline edge. A slicer cutting at a layer's middle
height (as PrusaSlicer does) meets one prism only and recovers that layer's outline exactly; prisms touch
at layer boundaries, where no slice is cut. Faces wind counter-clockwise seen from outside.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient

from envs.jobs import PrintJob


@dataclass(frozen=True)
class Prism:
    """One outline extruded from ``z0_mm`` to ``z1_mm``."""

    outline: Polygon | MultiPolygon
    z0_mm: float
    z1_mm: float


def job_prisms(job: PrintJob) -> list[Prism]:
    """The job's layers as prisms, consecutive layers of one outline merged (empty layers left out)."""
    zs = job.layer_zs()
    prisms: list[Prism] = []
    bottom = 0.0
    for k, top in enumerate(zs):
        outline = job.target(k)
        if outline.is_empty:
            bottom = top
            continue
        last = prisms[-1] if prisms else None
        if last is not None and last.z1_mm == bottom and last.outline.equals_exact(outline, 1e-9):
            prisms[-1] = Prism(outline, last.z0_mm, top)
        else:
            prisms.append(Prism(outline, bottom, top))
        bottom = top
    return prisms


def _polygons(geometry: Polygon | MultiPolygon) -> list[Polygon]:
    parts = list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    return [orient(p, 1.0) for p in parts if not p.is_empty and p.area > 0]


def prism_triangles(prism: Prism) -> np.ndarray:
    """The prism's faces, ``(n, 3, 3)`` vertices, counter-clockwise seen from outside."""
    faces: list[np.ndarray] = []
    z0, z1 = prism.z0_mm, prism.z1_mm
    for polygon in _polygons(prism.outline):
        for tri in shapely.constrained_delaunay_triangles(polygon).geoms:
            xy = np.asarray(tri.exterior.coords)[:3]
            if _signed_area(xy) < 0:
                xy = xy[::-1]
            faces.append(np.column_stack([xy, np.full(3, z1)]))  # top, seen from above
            faces.append(np.column_stack([xy[::-1], np.full(3, z0)]))  # bottom, seen from below
        # Exterior counter-clockwise, holes clockwise: the solid lies left of every edge.
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords)
            for (ax, ay), (bx, by) in zip(xy[:-1], xy[1:], strict=True):
                faces.append(np.array([[ax, ay, z0], [bx, by, z0], [bx, by, z1]]))
                faces.append(np.array([[ax, ay, z0], [bx, by, z1], [ax, ay, z1]]))
    return np.asarray(faces, dtype=float).reshape(-1, 3, 3)


def _signed_area(xy: np.ndarray) -> float:
    (ax, ay), (bx, by), (cx, cy) = xy
    return 0.5 * ((bx - ax) * (cy - ay) - (cx - ax) * (by - ay))


def job_triangles(job: PrintJob) -> np.ndarray:
    """Every face of the job's prisms, ``(n, 3, 3)``."""
    prisms = job_prisms(job)
    if not prisms:
        raise ValueError(f"job {job.job_id!r}: every layer's outline is empty, there is no part to mesh")
    return np.concatenate([prism_triangles(p) for p in prisms])


def binary_stl(triangles: np.ndarray, name: str = "layerloop") -> bytes:
    """A binary STL of ``(n, 3, 3)`` triangles (normals from the winding)."""
    tri = np.asarray(triangles, dtype=np.float64)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
    record = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rows = np.zeros(len(tri), dtype=record)
    rows["normal"] = normals
    rows["v"] = tri
    header = name.encode()[:80].ljust(80, b" ")
    return header + struct.pack("<I", len(tri)) + rows.tobytes()


def mesh_volume_mm3(triangles: np.ndarray) -> float:
    """Enclosed volume of a closed, outward-wound mesh (divergence theorem; negative when wound inward)."""
    tri = np.asarray(triangles, dtype=float)
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)
