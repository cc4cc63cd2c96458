"""Print jobs: what to print (a part), on what (printer, material), and how (process settings).

A :class:`PrintJob` is plain data, JSON-serialisable (``to_dict``/``from_dict``), so it can travel as a
dataset column to TRL reward functions. Parts are 2.5-D: :meth:`PartSpec.outline` gives the region to fill
at a height, as a shapely geometry; parametric kinds are built from a few sizes, ``stl`` parts are sliced
from a mesh with trimesh.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

from sim_bridge.config import ConfigError, check_ranges, from_dict, ranged

PART_KINDS = ("rectangle", "circle", "ring", "l_shape", "polygon", "hole_plate", "bridge", "stl")
INFILL_PATTERNS = ("lines", "grid")
CIRCLE_SEGMENTS = 64
"""Polygon segments of a full circle (shapely ``quad_segs`` = 16)."""


@dataclass(frozen=True)
class PartSpec:
    """A part to print, centred at ``center_mm`` on the bed.

    ``size_mm`` by kind: rectangle ``[width, depth]``; circle ``[diameter]``; ring ``[outer, inner diameter]``;
    l_shape ``[width, depth, arm width]``; polygon ``[circumscribed diameter, sides]``; hole_plate
    ``[width, depth, hole diameter]``; bridge ``[span, pillar width, depth, pillar height]`` (two pillars
    joined by a deck above the gap); stl ``[scale]``.
    """

    kind: str = ranged("rectangle", choices=PART_KINDS)
    """Shape family."""
    size_mm: list[float] = ranged([20.0, 20.0], 0.0, 500.0)
    """Sizes, by kind (see the class docstring)."""
    height_mm: float = ranged(0.2, 0.05, 500.0)
    """Part height."""
    center_mm: list[float] = ranged([110.0, 110.0], -1000.0, 2000.0)
    """Where the part's centre stands on the bed (X, Y)."""
    stl_path: str = ""
    """Mesh file for ``kind: stl``."""

    def __post_init__(self) -> None:
        check_ranges(self)
        need = {"rectangle": 2, "circle": 1, "ring": 2, "l_shape": 3, "polygon": 2, "hole_plate": 3,
                "bridge": 4, "stl": 1}[self.kind]
        if len(self.size_mm) != need:
            raise ConfigError(f"part {self.kind}: size_mm needs {need} values, got {self.size_mm}")
        if self.kind == "ring" and not self.size_mm[1] < self.size_mm[0]:
            raise ConfigError(f"part ring: inner diameter {self.size_mm[1]} must be below outer {self.size_mm[0]}")
        if self.kind == "stl" and not self.stl_path:
            raise ConfigError("part stl: stl_path is required")

    def outline(self, z_mm: float) -> Polygon | MultiPolygon:
        """The region to fill at height ``z_mm`` (empty above the part)."""
        if z_mm > self.height_mm + 1e-9 or z_mm <= 0.0:
            return Polygon()
        return _outline(self.kind, tuple(self.size_mm), tuple(self.center_mm), self.stl_path, round(z_mm, 6))


@lru_cache(maxsize=4096)
def _outline(kind: str, s: tuple[float, ...], center: tuple[float, ...], stl_path: str, z_mm: float
             ) -> Polygon | MultiPolygon:
    if kind == "rectangle":
        shape = box(-s[0] / 2, -s[1] / 2, s[0] / 2, s[1] / 2)
    elif kind == "circle":
        shape = shapely.Point(0, 0).buffer(s[0] / 2, quad_segs=CIRCLE_SEGMENTS // 4)
    elif kind == "ring":
        shape = shapely.Point(0, 0).buffer(s[0] / 2, quad_segs=CIRCLE_SEGMENTS // 4).difference(
            shapely.Point(0, 0).buffer(s[1] / 2, quad_segs=CIRCLE_SEGMENTS // 4))
    elif kind == "l_shape":
        w, d, arm = s
        shape = box(-w / 2, -d / 2, w / 2, -d / 2 + arm).union(box(-w / 2, -d / 2, -w / 2 + arm, d / 2))
    elif kind == "polygon":
        n = max(3, int(round(s[1])))
        r = s[0] / 2
        shape = Polygon([(r * math.cos(2 * math.pi * k / n + math.pi / 2), r * math.sin(2 * math.pi * k / n + math.pi / 2))
                         for k in range(n)])
    elif kind == "hole_plate":
        w, d, hole = s
        shape = box(-w / 2, -d / 2, w / 2, d / 2).difference(
            shapely.Point(0, 0).buffer(hole / 2, quad_segs=CIRCLE_SEGMENTS // 4))
    elif kind == "bridge":
        span, pillar, depth, pillar_h = s
        half = span / 2 + pillar
        if z_mm <= pillar_h + 1e-9:
            shape = box(-half, -depth / 2, -span / 2, depth / 2).union(box(span / 2, -depth / 2, half, depth / 2))
        else:
            shape = box(-half, -depth / 2, half, depth / 2)
    else:
        shape = _stl_section(stl_path, s[0], z_mm)
    return affinity.translate(shape, center[0], center[1])


@lru_cache(maxsize=8)
def _load_mesh(path: str) -> Any:
    import trimesh

    mesh = trimesh.load_mesh(path)
    if mesh.is_empty:
        raise ConfigError(f"{path}: the mesh is empty")
    lo, hi = mesh.bounds
    mesh.apply_translation([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    return mesh


def _stl_section(path: str, scale: float, z_mm: float) -> Polygon | MultiPolygon:
    """The filled cross-section of a mesh at ``z_mm`` (mesh centred on the origin, resting on z = 0)."""
    mesh = _load_mesh(path)
    section = mesh.section(plane_origin=[0.0, 0.0, z_mm / scale], plane_normal=[0.0, 0.0, 1.0])
    if section is None:
        return Polygon()
    planar, _ = section.to_2D(to_2D=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -z_mm / scale], [0, 0, 0, 1]])
    # Even-odd fill of the section's closed loops: a loop inside another is a hole, one inside that an island.
    region = Polygon()
    for loop in planar.discrete:
        if len(loop) >= 4:
            ring = shapely.make_valid(Polygon(loop))
            region = region.symmetric_difference(ring) if ring.area > 1e-6 else region
    region = shapely.make_valid(region)
    if region.is_empty or region.area <= 1e-6:
        return Polygon()
    polygons = [g for g in getattr(region, "geoms", [region]) if isinstance(g, Polygon) and g.area > 1e-6]
    return affinity.scale(shapely.union_all(polygons), scale, scale, origin=(0, 0))


@dataclass(frozen=True)
class ProcessSettings:
    """How to print: layers, lines, speeds, temperatures, retraction."""

    layer_height_mm: float = ranged(0.2, 0.04, 1.0)
    """Height of every layer after the first."""
    first_layer_height_mm: float = ranged(0.2, 0.04, 1.0)
    """Height of the first layer."""
    line_width_mm: float = ranged(0.45, 0.1, 2.0)
    """Extrusion width of every line."""
    perimeters: int = ranged(2, 0, 20)
    """Closed loops along each outline (outer and holes)."""
    infill_density: float = ranged(0.2, 0.0, 1.0)
    """Fraction of the interior filled with infill lines (1 = solid)."""
    infill_pattern: str = ranged("lines", choices=INFILL_PATTERNS)
    """``lines`` (alternating 45°/135° per layer) or ``grid`` (both directions every layer)."""
    solid_layers: int = ranged(2, 0, 100)
    """Bottom and top layers printed solid regardless of ``infill_density``."""
    print_speed_mm_s: float = ranged(40.0, 1.0, 1000.0)
    """Speed of perimeters and infill."""
    first_layer_speed_mm_s: float = ranged(20.0, 1.0, 1000.0)
    """Speed of the first layer."""
    travel_speed_mm_s: float = ranged(150.0, 1.0, 1000.0)
    """Speed of travel moves."""
    z_speed_mm_s: float = ranged(5.0, 0.1, 100.0)
    """Speed of layer changes."""
    retract_mm: float = ranged(0.8, 0.0, 20.0)
    """Filament pulled back before a travel (and pushed again after)."""
    retract_speed_mm_s: float = ranged(35.0, 1.0, 200.0)
    """Speed of retraction moves."""
    retract_min_travel_mm: float = ranged(2.0, 0.0, 100.0)
    """Shortest travel that is retracted."""
    hotend_temp_c: float = ranged(210.0, 0.0, 400.0)
    """Hotend target while printing."""
    bed_temp_c: float = ranged(60.0, 0.0, 150.0)
    """Bed target while printing."""
    fan: float = ranged(1.0, 0.0, 1.0)
    """Part-cooling fan from the second layer on (0–1)."""
    extrusion_multiplier: float = ranged(1.0, 0.5, 2.0)
    """Scales every extrusion amount."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PrintJob:
    """One job: a part, a printer, a material and process settings."""

    job_id: str = "job"
    """Stable identifier (suites and datasets key on it; no part leaks across splits by id)."""
    part: PartSpec = field(default_factory=PartSpec)
    """What to print."""
    printer: str = "ender3-klipper"
    """Bundled printer profile name (or a profile file)."""
    material: str = ranged("PLA", choices=("PLA", "PETG", "ABS"))
    """Filament material."""
    process: ProcessSettings = field(default_factory=ProcessSettings)
    """How to print."""
    difficulty: int = ranged(0, 0, 4)
    """0 one-layer perimeter … 4 whole part with start and end sequences (see envs.sampler)."""
    start_end: bool = False
    """Whether the program includes the start sequence (heat, home, prime) and the end sequence."""

    def __post_init__(self) -> None:
        check_ranges(self)

    def layer_zs(self) -> list[float]:
        """Nozzle heights of the layers, bottom up."""
        p = self.process
        zs = [p.first_layer_height_mm]
        while zs[-1] + p.layer_height_mm <= self.part.height_mm + 1e-6:
            zs.append(round(zs[-1] + p.layer_height_mm, 6))
        return zs

    @property
    def layer_count(self) -> int:
        """Number of layers."""
        return len(self.layer_zs())

    def target(self, layer: int) -> Polygon | MultiPolygon:
        """The region layer ``layer`` must fill."""
        zs = self.layer_zs()
        return self.part.outline(zs[layer])

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (JSON-ready)."""
        return asdict(self)

    def to_json(self) -> str:
        """The job as one line of JSON (a dataset column)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PrintJob:
        """Build and validate a job from a mapping."""
        return from_dict(PrintJob, data, "job")

    @staticmethod
    def from_json(text: str) -> PrintJob:
        """Build a job from :meth:`to_json` text."""
        return PrintJob.from_dict(json.loads(text))
