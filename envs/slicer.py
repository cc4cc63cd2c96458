"""A small slicer for :class:`~envs.jobs.PrintJob`: the expert's programs and the reference for rewards.

Each layer is sliced on its own from ``job.target(layer)``:

* **perimeters** — for every island of the outline, closed loops at offsets ``w/2, 3w/2, …`` inward
  (shapely ``buffer(-d, join_style="mitre")``), every ring of each offset (outer boundary and holes).
  Loops are printed outermost first (PrusaSlicer's "external perimeters first"): the outer wall is laid
  with nothing beside it yet to push it outward, so it sits exactly on the outline. That trades a little
  surface finish and overhang reach for dimensional accuracy, which is what the geometry reward measures;
* **infill** — parallel lines clipped to the region inside the innermost perimeter, ending
  ``INFILL_OVERLAP_FRACTION`` of a line width into it so the two bond. Solid (spacing ``w``) on the first
  and last ``solid_layers`` layers and on bridge layers, else spacing ``w / density`` (``lines``,
  alternating 45°/135° per layer) or ``2w / density`` in each of both directions (``grid``, so the total
  fill is still ``density``). Lines are ordered nearest-end-first, which zig-zags across each island;
* **bridges** — a layer whose region reaches beyond the layer below is a bridge layer: its lines run in the
  direction (of 0°, 15°, … 165°) where every piece over the gap ends on the layer below, shortest first,
  so each line is anchored at both ends (for the ``bridge`` part: along X, pillar to pillar).

Extrusion is relative (M83) with a rectangular bead: ``E/mm = w · h / filament area · multiplier``.

Every layer program starts and ends with the filament retracted (and the nozzle anywhere), so a layer can
be generated, run and scored on its own: :func:`layer_gcode` needs nothing from the layer before, and
``slice_job(job).layers[k] == layer_gcode(job, k)``. The start sequence (and the silent ``setup`` used
when the job has no start/end) ends retracted too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from envs.jobs import PrintJob
from sim_bridge.gcode import format_number
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile

INFILL_OVERLAP_FRACTION = 0.15
"""How far (in line widths) infill lines reach into the innermost perimeter, so the two bond."""
PRIME_LENGTH_MM = 60.0
"""Length of the prime line drawn along X at the front of the bed."""
PRIME_MARGIN_MM = 5.0
"""Distance of the prime line from the bed's reachable edge."""
PRIME_CLEARANCE_MM = 5.0
"""Least distance between the prime line and the part's footprint."""
PRIME_WIDTH_FACTOR = 1.5
"""Prime line width over the job's line width (a wider bead fills the nozzle before the part)."""
START_LIFT_MM = 2.0
"""Nozzle height above the first layer after homing and after the prime line (clears the bed)."""
END_LIFT_MM = 10.0
"""Z lift above the last layer at the end of the print (bounded by the printer's maximum Z)."""
PARK_MARGIN_MM = 5.0
"""Distance of the park position from the reachable X minimum and Y maximum."""
BRIDGE_ANGLES_DEG = tuple(range(0, 180, 15))
"""Candidate line directions for bridge layers."""
BRIDGE_MIN_AREA_LW2 = 1.0
"""Unsupported area, in line widths squared, above which a layer is a bridge layer."""
ANCHOR_TOLERANCE_LW = 0.5
"""A bridge line's end within this many line widths of the layer below counts as anchored."""
MIN_SEGMENT_MM = 1e-3
"""Shorter extrusions are dropped (their E would round to nothing)."""
XYZ_DECIMALS = 3
E_DECIMALS = 5
SLICES_KEPT = 512
"""Jobs whose slice :func:`cached_slice` keeps (a training dataset's jobs, an evaluation suite)."""


@dataclass(frozen=True)
class Toolpath:
    """One path of a layer as written: travel to ``start``, then extrude through ``moves``.

    Numbers are kept as the program writes them (rounded text), so a prompt that lists them and the
    program that prints them agree to the digit."""

    start: tuple[str, str]
    """X and Y of the travel's end (mm)."""
    moves: tuple[tuple[str, str, str], ...]
    """X, Y (mm) and E (mm of filament) of each extruding move."""


@dataclass
class SlicedJob:
    """A job as G-code: start, one program per layer, end (see the module docstring)."""

    job: PrintJob
    start: str
    """Heat, home, prime line at the front of the bed, retract, lift."""
    layers: list[str]
    """One program per layer (layer ``k`` at ``job.layer_zs()[k]``), each starting with ``;LAYER_CHANGE``."""
    end: str
    """Retract, lift, park, heaters and fan off, motors off."""
    setup: str
    """Heat and home without a prime line: run silently before an episode of a job without start/end."""
    layer_volume_mm3: list[float] = field(default_factory=list)
    """Filament volume each layer extrudes on its XYZ moves (retractions excluded, as the simulator counts)."""
    layer_paths: list[list[Toolpath]] = field(default_factory=list)
    """Each layer's toolpath as its program prints it: the planner's paths, in order."""

    def text(self) -> str:
        """The whole program: start (or setup, for a job without start/end), the layers, the end."""
        if self.job.start_end:
            return self.start + "".join(self.layers) + self.end
        return self.setup + "".join(self.layers)


def slice_job(job: PrintJob) -> SlicedJob:
    """Slice ``job``: start, setup, every layer and end, with each layer's extruded volume."""
    printer = load_printer(job.printer)
    layers: list[str] = []
    volumes: list[float] = []
    paths: list[list[Toolpath]] = []
    for layer in range(job.layer_count):
        w = _layer_writer(job, printer, layer, None)
        layers.append(w.text())
        volumes.append(w.volume_mm3)
        paths.append(w.paths)
    return SlicedJob(job=job, start=_start(job, printer, prime=True), layers=layers, end=_end(job, printer),
                     setup=_start(job, printer, prime=False), layer_volume_mm3=volumes, layer_paths=paths)


@lru_cache(maxsize=SLICES_KEPT)
def _slice_json(job_json: str) -> SlicedJob:
    return slice_job(PrintJob.from_json(job_json))


def cached_slice(job: PrintJob) -> SlicedJob:
    """:func:`slice_job`, sliced once per job and kept (:data:`SLICES_KEPT` jobs): every call for an equal job
    returns the same object, so read it and never change it."""
    return _slice_json(job.to_json())


def layer_gcode(job: PrintJob, layer: int, start_xy: tuple[float, float] | None = None) -> str:
    """The program of layer ``layer`` alone.

    ``start_xy`` is where the nozzle comes from; it picks the first island and the seams. ``None`` starts
    from the front-left corner of the layer's outline, as :func:`slice_job` does.
    """
    if not 0 <= layer < job.layer_count:
        raise ValueError(f"layer {layer}: out of range, the job has layers 0..{job.layer_count - 1}")
    return _layer_writer(job, load_printer(job.printer), layer, start_xy).text()


# -- the G-code writer -------------------------------------------------------------------------------------
def _num(value: float, decimals: int) -> str:
    return format_number(value, decimals)


def _rounded(value: float) -> float:
    return round(value, XYZ_DECIMALS)


class _Writer:
    """Accumulates one program's lines, tracking position, feed rate, retraction and extruded volume."""

    def __init__(self, job: PrintJob, printer: PrinterProfile, xy: tuple[float, float] | None,
                 retracted: bool) -> None:
        p = job.process
        self.lines: list[str] = []
        self.xy = xy
        self.feed_mm_min: float | None = None
        self.retracted = retracted
        self.retract_mm = p.retract_mm
        self.retract_feed = p.retract_speed_mm_s * 60.0
        self.retract_min_travel_mm = p.retract_min_travel_mm
        self.travel_feed = p.travel_speed_mm_s * 60.0
        self.z_feed = p.z_speed_mm_s * 60.0
        self.filament_area_mm2 = printer.filament_area_mm2
        self.multiplier = p.extrusion_multiplier
        self.volume_mm3 = 0.0
        self.paths: list[Toolpath] = []

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def _feed(self, feed_mm_min: float) -> str:
        # F is modal: writing it only when it changes keeps the programs short (they are training targets).
        if self.feed_mm_min is not None and abs(self.feed_mm_min - feed_mm_min) < 1e-9:
            return ""
        self.feed_mm_min = feed_mm_min
        return f" F{_num(feed_mm_min, 1)}"

    def retract(self) -> None:
        if self.retract_mm > 0.0 and not self.retracted:
            self.emit(f"G1 E-{_num(self.retract_mm, E_DECIMALS)}{self._feed(self.retract_feed)}")
        self.retracted = True

    def unretract(self) -> None:
        if self.retract_mm > 0.0 and self.retracted:
            self.emit(f"G1 E{_num(self.retract_mm, E_DECIMALS)}{self._feed(self.retract_feed)}")
        self.retracted = False

    def move_z(self, z_mm: float) -> None:
        self.emit(f"G1 Z{_num(z_mm, XYZ_DECIMALS)}{self._feed(self.z_feed)}")

    def travel(self, x: float, y: float, *, may_retract: bool = True) -> None:
        x, y = _rounded(x), _rounded(y)
        # From an unknown place the travel may be long: keep the filament back.
        distance = math.inf if self.xy is None else math.hypot(x - self.xy[0], y - self.xy[1])
        if distance < MIN_SEGMENT_MM:
            return
        if may_retract and distance > self.retract_min_travel_mm:
            self.retract()
        self.emit(f"G0 X{_num(x, XYZ_DECIMALS)} Y{_num(y, XYZ_DECIMALS)}{self._feed(self.travel_feed)}")
        self.xy = (x, y)

    def extrude(self, x: float, y: float, width_mm: float, height_mm: float, feed_mm_min: float) -> None:
        assert self.xy is not None, "extrusion needs a known start point (travel first)"
        # E follows the path as written (rounded), so the bead's cross-section is exactly w·h.
        x, y = _rounded(x), _rounded(y)
        length = math.hypot(x - self.xy[0], y - self.xy[1])
        if length < MIN_SEGMENT_MM:
            return
        e_text = _num(length * width_mm * height_mm / self.filament_area_mm2 * self.multiplier, E_DECIMALS)
        if float(e_text) <= 0.0:
            return
        self.unretract()
        self.emit(f"G1 X{_num(x, XYZ_DECIMALS)} Y{_num(y, XYZ_DECIMALS)} E{e_text}{self._feed(feed_mm_min)}")
        # The volume is counted from the written E, so it matches what the simulator reads to the digit.
        self.volume_mm3 += float(e_text) * self.filament_area_mm2
        self.xy = (x, y)

    def path(self, coords: np.ndarray, width_mm: float, height_mm: float, feed_mm_min: float) -> None:
        """Travel to the first point, then extrude through the rest (recorded in :attr:`paths`)."""
        self.travel(float(coords[0, 0]), float(coords[0, 1]))
        start = self.xy
        first = len(self.lines)
        for x, y in coords[1:]:
            self.extrude(float(x), float(y), width_mm, height_mm, feed_mm_min)
        moves = tuple(_xye(line) for line in self.lines[first:] if line.startswith("G1 X"))
        if start is not None and moves:
            self.paths.append(Toolpath((_num(start[0], XYZ_DECIMALS), _num(start[1], XYZ_DECIMALS)), moves))

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def _xye(line: str) -> tuple[str, str, str]:
    words = dict((w[0], w[1:]) for w in line.split()[1:])
    return words["X"], words["Y"], words["E"]


# -- start, setup and end ----------------------------------------------------------------------------------
def _heat_and_home(job: PrintJob) -> list[str]:
    p = job.process
    bed, hotend = _num(p.bed_temp_c, 1), _num(p.hotend_temp_c, 1)
    return [
        "; heat, then home",
        f"M140 S{bed}",
        f"M104 S{hotend}",
        f"M190 S{bed}",
        f"M109 S{hotend}",
        "G28",
        "G90",
        "M83",
        "G92 E0",
        "M107",
    ]


def _prime_y(job: PrintJob, printer: PrinterProfile) -> float:
    """Y of the prime line: the front of the bed, or the back if the part reaches the front."""
    x0 = printer.position_min_mm[0] + PRIME_MARGIN_MM
    footprint = job.target(0)
    for y in (printer.position_min_mm[1] + PRIME_MARGIN_MM, printer.position_max_mm[1] - PRIME_MARGIN_MM):
        line = LineString([(x0, y), (x0 + PRIME_LENGTH_MM, y)])
        if footprint.is_empty or footprint.distance(line) >= PRIME_CLEARANCE_MM:
            return y
    raise ValueError(f"job {job.job_id}: the part leaves no room for a {PRIME_LENGTH_MM:g} mm prime line "
                     f"at the front or back of the bed of {printer.name}")


def _start(job: PrintJob, printer: PrinterProfile, *, prime: bool) -> str:
    p = job.process
    z0 = job.layer_zs()[0]
    w = _Writer(job, printer, None, retracted=False)
    for line in _heat_and_home(job):
        w.emit(line)
    w.move_z(z0 + START_LIFT_MM)
    if prime:
        w.emit("; prime line")
        x0 = printer.position_min_mm[0] + PRIME_MARGIN_MM
        y = _prime_y(job, printer)
        w.travel(x0, y, may_retract=False)
        w.move_z(z0)
        w.extrude(x0 + PRIME_LENGTH_MM, y, PRIME_WIDTH_FACTOR * p.line_width_mm, p.first_layer_height_mm,
                  p.first_layer_speed_mm_s * 60.0)
    # Every layer program begins retracted (see the module docstring), so the start ends so too.
    w.retract()
    if prime:
        w.move_z(z0 + START_LIFT_MM)
    return w.text()


def _end(job: PrintJob, printer: PrinterProfile) -> str:
    p = job.process
    w = _Writer(job, printer, None, retracted=False)
    w.emit("; end")
    # The last layer already retracted; a second pull takes the filament out of the melt zone while it
    # is still hot, so it does not ooze or jam as the hotend cools.
    w.retract()
    z = min(job.layer_zs()[-1] + END_LIFT_MM, printer.position_max_mm[2])
    w.move_z(z)
    park_x = printer.position_min_mm[0] + PARK_MARGIN_MM
    park_y = printer.position_max_mm[1] - PARK_MARGIN_MM
    w.emit(f"G0 X{_num(park_x, XYZ_DECIMALS)} Y{_num(park_y, XYZ_DECIMALS)} F{_num(p.travel_speed_mm_s * 60, 1)}")
    for line in ("M104 S0", "M140 S0", "M107", "M84"):
        w.emit(line)
    return w.text()


# -- one layer ---------------------------------------------------------------------------------------------
def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return list(geometry.geoms)
    return [g for g in getattr(geometry, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]


def _layer_is_solid(job: PrintJob, layer: int) -> bool:
    p = job.process
    return layer < p.solid_layers or layer >= job.layer_count - p.solid_layers or p.infill_density >= 1.0


def _layer_writer(job: PrintJob, printer: PrinterProfile, layer: int, start_xy: tuple[float, float] | None
                  ) -> _Writer:
    """One layer written: its program, the filament volume its XYZ moves extrude, its toolpath."""
    p = job.process
    zs = job.layer_zs()
    z = zs[layer]
    height = p.first_layer_height_mm if layer == 0 else p.layer_height_mm
    feed = (p.first_layer_speed_mm_s if layer == 0 else p.print_speed_mm_s) * 60.0
    lw = p.line_width_mm
    region = job.target(layer)
    if not region.is_valid:
        region = region.buffer(0)
    below = job.target(layer - 1) if layer > 0 else None

    w = _Writer(job, printer, start_xy, retracted=True)
    w.emit(";LAYER_CHANGE")
    w.move_z(z)
    w.emit("M107" if layer == 0 or p.fan <= 0.0 else f"M106 S{round(255 * p.fan)}")
    islands = _polygons(region)
    # Without a known start, plan from the outline's front-left corner: the layer then depends on nothing
    # before it, and the first travel (from wherever the nozzle is) is retracted.
    here = start_xy
    if here is None:
        here = (region.bounds[0], region.bounds[1]) if islands else (0.0, 0.0)
    while islands:
        idx = int(np.argmin([island.exterior.distance(Point(here)) for island in islands]))
        island = islands.pop(idx)
        for ring in _perimeter_rings(island, lw, p.perimeters, here):
            w.path(ring, lw, height, feed)
            here = w.xy or here
        for segment in _infill_segments(job, layer, island, below, here):
            w.path(segment, lw, height, feed)
            here = w.xy or here
    w.retract()
    return w


def _perimeter_rings(island: Polygon, lw: float, count: int, here: tuple[float, float]) -> list[np.ndarray]:
    """The island's perimeter loops, outermost first, each a closed path starting near the last one's end."""
    levels: list[list[np.ndarray]] = []
    for k in range(count):
        shrunk = island.buffer(-(k + 0.5) * lw, join_style="mitre")
        rings = [np.asarray(r.coords)[:-1] for poly in _polygons(shrunk)
                 for r in (poly.exterior, *poly.interiors) if len(r.coords) > 3]
        if not rings:
            break
        levels.append(rings)
    ordered: list[np.ndarray] = []
    for rings in levels:
        rings = list(rings)
        while rings:
            # Nearest ring, entered at its nearest vertex (the seam), to keep travels short.
            best = min(range(len(rings)), key=lambda i: float(np.min(np.hypot(*(rings[i] - here).T))))
            ring = rings.pop(best)
            start = int(np.argmin(np.hypot(*(ring - here).T)))
            loop = np.vstack([ring[start:], ring[:start], ring[start:start + 1]])
            ordered.append(loop)
            here = (float(loop[-1, 0]), float(loop[-1, 1]))
    return ordered


def _infill_segments(job: PrintJob, layer: int, island: Polygon, below: BaseGeometry | None,
                     here: tuple[float, float]) -> list[np.ndarray]:
    """Infill lines of one island, ordered and oriented nearest-end-first from ``here``."""
    p = job.process
    lw = p.line_width_mm
    inset = p.perimeters * lw + 0.5 * lw - INFILL_OVERLAP_FRACTION * lw
    area = island.buffer(-inset, join_style="mitre")
    if area.is_empty:
        return []
    solid = _layer_is_solid(job, layer)
    if not solid and p.infill_density <= 0.0:
        # A perimeter-only layer stays one, over a gap too: its loops are the bridges (and the target the
        # geometry reward compares it with is the perimeter band, envs.geometry.layer_is_perimeter_only).
        return []
    bridge_angle = _bridge_angle(area, below, lw)
    if bridge_angle is not None:
        families = [(bridge_angle, lw)]
    elif solid:
        families = [(45.0 if layer % 2 == 0 else 135.0, lw)]
    elif p.infill_pattern == "grid":
        families = [(45.0, 2.0 * lw / p.infill_density), (135.0, 2.0 * lw / p.infill_density)]
    else:
        families = [(45.0 if layer % 2 == 0 else 135.0, lw / p.infill_density)]
    segments: list[np.ndarray] = []
    for angle, spacing in families:
        segments.extend(_line_family(area, angle, spacing))
    return _order_segments(segments, here)


def _line_family(area: BaseGeometry, angle_deg: float, spacing_mm: float) -> list[np.ndarray]:
    """Parallel lines at ``angle_deg`` and ``spacing_mm`` clipped to ``area``, centred across it."""
    origin = (0.0, 0.0)
    rotated = affinity.rotate(area, -angle_deg, origin=origin)
    x0, y0, x1, y1 = rotated.bounds
    count = int(math.floor((y1 - y0) / spacing_mm)) + 1
    # Centring the family leaves equal margins at both sides, at most half a spacing each.
    first = y0 + 0.5 * ((y1 - y0) - (count - 1) * spacing_mm)
    ys = first + spacing_mm * np.arange(count)
    lines = shapely.linestrings([[[x0 - 1.0, y], [x1 + 1.0, y]] for y in ys])
    clipped = shapely.intersection(lines, rotated)
    segments: list[np.ndarray] = []
    for geometry in clipped:
        for piece in getattr(geometry, "geoms", [geometry]):
            if isinstance(piece, LineString) and piece.length >= MIN_SEGMENT_MM:
                back = affinity.rotate(piece, angle_deg, origin=origin)
                coords = np.asarray(back.coords)
                segments.append(coords[[0, -1]])
    return segments


def _order_segments(segments: list[np.ndarray], here: tuple[float, float]) -> list[np.ndarray]:
    """Nearest end first; on parallel lines this is the zig-zag (boustrophedon) order."""
    if not segments:
        return []
    ends = np.array([[s[0], s[-1]] for s in segments])  # (n, 2, 2)
    left = np.ones(len(segments), dtype=bool)
    ordered: list[np.ndarray] = []
    pos = np.asarray(here, dtype=float)
    for _ in range(len(segments)):
        d = np.hypot(ends[:, :, 0] - pos[0], ends[:, :, 1] - pos[1])
        d[~left] = np.inf
        flat = int(np.argmin(d))
        i, side = divmod(flat, 2)
        left[i] = False
        seg = segments[i] if side == 0 else segments[i][::-1]
        ordered.append(seg)
        pos = seg[-1]
    return ordered


def _bridge_angle(area: BaseGeometry, below: BaseGeometry | None, lw: float) -> float | None:
    """The line direction of a bridge layer, or ``None`` when the island's infill stands on the layer below.

    Only the infill ``area`` is tested: an overhang that its perimeters cover is no bridge.
    """
    if below is None:
        return None
    unsupported = area.difference(below)
    if unsupported.area <= BRIDGE_MIN_AREA_LW2 * lw * lw:
        return None
    best: tuple[int, float, float] | None = None
    for angle in BRIDGE_ANGLES_DEG:
        unanchored = 0
        longest = 0.0
        for segment in _line_family(area, float(angle), lw):
            pieces = LineString(segment).intersection(unsupported)
            for piece in getattr(pieces, "geoms", [pieces]):
                if not isinstance(piece, LineString) or piece.length < lw:
                    continue
                longest = max(longest, piece.length)
                a, b = Point(piece.coords[0]), Point(piece.coords[-1])
                if below.distance(a) > ANCHOR_TOLERANCE_LW * lw or below.distance(b) > ANCHOR_TOLERANCE_LW * lw:
                    unanchored += 1
        score = (unanchored, round(longest, 6), float(angle))
        if best is None or score < best:
            best = score
    return best[2] if best is not None else None
