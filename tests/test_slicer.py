"""The slicer (envs.slicer) and the expert policy: programs that run cleanly, cover their layers, and say
what they extrude."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy import ndimage

from agent.expert import ExpertPolicy, expert_program
from envs import geometry
from envs.geometry import geometry_score
from envs.jobs import PartSpec, PrintJob, ProcessSettings
from envs.slicer import layer_gcode, slice_job
from sim_bridge import PrintReport, Simulator, simulate
from sim_bridge.deposition import raise_capsule
from sim_bridge.gcode import parse_line

ROOT = Path(__file__).parent.parent
CYLINDER_STL = str(ROOT / "tests" / "fixtures" / "prusaslicer" / "cylinder.stl")
GEOMETRY_MIN = 0.95
VOLUME_REL_TOL = 0.01

# size_mm, height_mm: two to four layers of 0.2 mm (the bridge needs seven: five of pillars, the deck over
# the gap, one layer on the deck). One solid layer at each end, so the middle layers are sparse.
PARTS: dict[str, tuple[list[float], float]] = {
    "rectangle": ([20.0, 20.0], 0.6),
    "circle": ([20.0], 0.6),
    "ring": ([24.0, 12.0], 0.6),
    "l_shape": ([30.0, 30.0, 10.0], 0.6),
    "polygon": ([24.0, 6.0], 0.6),
    "hole_plate": ([25.0, 25.0, 8.0], 0.8),
    "bridge": ([10.0, 6.0, 8.0, 1.0], 1.4),
    "stl": ([1.0], 0.4),
}


def _job(kind: str, **changes: object) -> PrintJob:
    size, height = PARTS[kind]
    part = PartSpec(kind=kind, size_mm=size, height_mm=height, stl_path=CYLINDER_STL if kind == "stl" else "")
    settings: dict[str, object] = {"solid_layers": 1}
    settings.update(changes)
    return PrintJob(job_id=f"test-{kind}", part=part, process=ProcessSettings(**settings), start_end=True)


@cache
def _layered(kind: str) -> tuple[list[float], PrintReport]:
    """Setup, then each layer as its own run (as the environment feeds them): geometry per layer, report."""
    job = _job(kind)
    sliced = slice_job(job)
    sim = Simulator(job.printer, job.material)
    sim.run(sliced.setup)
    scores = []
    for k, layer in enumerate(sliced.layers):
        sim.run(layer)
        # Scored right after its run: a later layer raises the same cells above this layer's band.
        scores.append(geometry_score(sim, job, k))
    return scores, sim.report()


def _per_move_geometry_score(sim: Simulator, job: PrintJob, layer: int, res: float = 0.1) -> float:
    """The geometry score as first written: one kernel call per move, scipy's closing by a disk, the target
    rasterised on every call (the reference the batched implementation must reproduce)."""
    target = geometry.target_region(job, layer)
    starts, ends, widths, _ = geometry.layer_moves(sim, job, layer)
    x0, y0, x1, y1 = target.bounds
    margin, phase = geometry.WINDOW_MARGIN_MM, geometry.GRID_PHASE
    x0 = math.floor((x0 - margin) / res) * res + phase * res
    y0 = math.floor((y0 - margin) / res) * res + phase * res
    nx = int(math.ceil((x1 + margin - x0) / res)) + 1
    ny = int(math.ceil((y1 + margin - y0) / res)) + 1
    grid = np.zeros((ny, nx), dtype=np.float32)
    for (ax, ay, _), (bx, by, _), w in zip(starts, ends, widths, strict=True):
        raise_capsule(grid, ax, ay, bx, by, 0.5 * w, 1.0, 1.0, x0, y0, res)
    radius = int(round(geometry.closing_radius_mm(job, layer) / res))
    r = max(1, radius)
    yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
    pad = radius + 1
    covered = ndimage.binary_closing(np.pad(grid > 0.5, pad), structure=xx * xx + yy * yy <= r * r)
    covered = ndimage.binary_fill_holes(covered[pad:-pad, pad:-pad])
    gx, gy = np.meshgrid(x0 + np.arange(nx) * res, y0 + np.arange(ny) * res)
    wanted = shapely.contains_xy(target, gx, gy)
    holes = geometry._holes(target)
    if not holes.is_empty:
        covered &= ~shapely.contains_xy(holes, gx, gy)
    union = np.count_nonzero(covered | wanted)
    return float(np.count_nonzero(covered & wanted) / union) if union else 0.0


@pytest.mark.parametrize("kind", ["rectangle", "ring", "hole_plate", "bridge"])
def test_batched_geometry_score_equals_the_per_move_one(kind: str) -> None:
    """Whole and cut layers (cut ones leave gaps the closing must not bridge), each scored both ways."""
    job = _job(kind)
    sliced = slice_job(job)
    sim = Simulator(job.printer, job.material)
    sim.run(sliced.setup)
    scores = []
    for k, layer in enumerate(sliced.layers):
        lines = layer.splitlines(keepends=True)
        sim.run("".join(lines[:7]) if k % 2 else layer)  # two sides of the outer loop
        scores.append((geometry_score(sim, job, k), _per_move_geometry_score(sim, job, k)))
    assert all(new == pytest.approx(old, abs=1e-12) for new, old in scores), scores
    assert min(old for _, old in scores) < GEOMETRY_MIN, "a cut layer is in the test"


def test_disk_closing_equals_scipys() -> None:
    rng = np.random.default_rng(0)
    # Both ways of closing: by the disk (small radii) and by distance transforms (from 5 cells).
    for radius in (0, 1, 3, 4, 5, 7, 12):
        mask = rng.random((40, 50)) < 0.08
        r = max(1, radius)
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        pad = radius + 1
        expected = ndimage.binary_closing(np.pad(mask, pad), structure=xx * xx + yy * yy <= r * r)[pad:-pad, pad:-pad]
        assert (geometry.close_disk(mask, radius) == expected).all(), radius
    assert not geometry.close_disk(np.zeros((5, 5), bool), 2).any()


def _commands(text: str) -> list:
    return [c for c in (parse_line(line, n) for n, line in enumerate(text.splitlines(), 1)) if c and c.code]


@pytest.mark.parametrize("kind", PARTS)
def test_whole_program_simulates_without_failures_or_notices(kind: str) -> None:
    job = _job(kind)
    report = simulate(slice_job(job).text(), job.printer, job.material)
    assert report.success, report.summary()
    assert report.notices == []
    assert report.layer_count == job.layer_count


@pytest.mark.parametrize("kind", PARTS)
def test_every_layer_covers_its_target(kind: str) -> None:
    scores, report = _layered(kind)
    assert report.success, report.summary()
    assert len(scores) == _job(kind).layer_count
    assert min(scores) >= GEOMETRY_MIN, [round(s, 4) for s in scores]


@pytest.mark.parametrize("kind", PARTS)
def test_layer_volume_is_what_the_simulator_extrudes(kind: str) -> None:
    job = _job(kind)
    sliced = slice_job(job)
    _, report = _layered(kind)
    area = Simulator(job.printer, job.material).profile.filament_area_mm2
    assert len(sliced.layer_volume_mm3) == len(report.layers) == job.layer_count
    for volume, metrics in zip(sliced.layer_volume_mm3, report.layers, strict=True):
        assert volume > 0.0
        assert volume == pytest.approx(metrics.filament_mm * area, rel=VOLUME_REL_TOL)


@pytest.mark.parametrize("kind", ["circle", "bridge"])
def test_slicing_is_deterministic_and_layers_stand_alone(kind: str) -> None:
    job = _job(kind)
    first, second = slice_job(job), slice_job(PrintJob.from_json(job.to_json()))
    assert first.text() == second.text()
    assert first.layer_volume_mm3 == second.layer_volume_mm3
    assert [layer_gcode(job, k) for k in range(job.layer_count)] == first.layers
    assert expert_program(job) == first.text()


def test_start_heats_homes_and_primes_away_from_the_part_and_end_shuts_down() -> None:
    job = _job("rectangle")
    sliced = slice_job(job)
    start = _commands(sliced.start)
    codes = [c.code for c in start]
    assert codes[:5] == ["M140", "M104", "M190", "M109", "G28"]
    assert [c.get("S") for c in start[:4]] == [60.0, 210.0, 60.0, 210.0]
    assert "M83" in codes
    prime = [c for c in start if c.code == "G1" and (c.get("E") or 0.0) > 0.0]
    assert len(prime) == 1, "one prime line"
    x0, y0, x1, y1 = job.target(0).bounds
    assert prime[0].get("Y") < y0 - 20.0, "the prime line runs along the front of the bed, clear of the part"
    assert _commands(sliced.setup)[:5] == start[:5] and not any(
        (c.get("E") or 0.0) > 0.0 for c in _commands(sliced.setup)), "setup heats and homes but never primes"
    end = [c.code for c in _commands(sliced.end)]
    assert end[-4:] == ["M104", "M140", "M107", "M84"]
    report = simulate(sliced.text(), job.printer, job.material)
    state = report.final_state
    assert state["hotend_target_c"] == 0.0 and state["bed_target_c"] == 0.0
    assert state["position_mm"][2] == pytest.approx(job.layer_zs()[-1] + 10.0, abs=1e-6)


def test_extrusion_per_mm_is_a_rectangular_bead_and_retraction_guards_long_travels() -> None:
    settings = {"first_layer_height_mm": 0.25, "layer_height_mm": 0.15, "line_width_mm": 0.5,
                "extrusion_multiplier": 1.1, "retract_mm": 1.2, "retract_min_travel_mm": 1.5, "fan": 0.5}
    job = _job("hole_plate", **settings)
    area = math.pi * 1.75 ** 2 / 4.0
    sliced = slice_job(job)
    for k, layer in enumerate(sliced.layers):
        height = 0.25 if k == 0 else 0.15
        want_e_per_mm = 0.5 * height / area * 1.1
        x = y = None
        retracted = True  # every layer begins retracted
        commands = _commands(layer)
        assert commands[0].code == "G1" and commands[0].get("Z") == pytest.approx(job.layer_zs()[k])
        assert commands[1].code == ("M107" if k == 0 else "M106")
        if k:
            assert commands[1].get("S") == round(255 * 0.5)
        for c in commands:
            e = c.get("E")
            nx, ny = c.get("X"), c.get("Y")
            if e is not None and nx is None:
                assert e == pytest.approx(-1.2 if e < 0 else 1.2)
                retracted = e < 0
            elif nx is not None and e is not None:
                assert not retracted, f"layer {k}: extrusion while retracted"
                length = math.hypot(nx - x, ny - y)
                assert e == pytest.approx(length * want_e_per_mm, abs=6e-6)
            elif nx is not None and x is not None and math.hypot(nx - x, ny - y) > 1.5:
                assert retracted, f"layer {k}: travel of {math.hypot(nx - x, ny - y):.2f} mm without retraction"
            if nx is not None:
                x, y = nx, ny
        assert retracted, "every layer ends retracted"
    report = simulate(sliced.text(), job.printer, job.material)
    assert report.success, report.summary()


def test_bridge_deck_is_printed_across_the_span_from_pillar_to_pillar() -> None:
    job = _job("bridge")
    span, pillar, _, pillar_h = job.part.size_mm
    deck = next(k for k, z in enumerate(job.layer_zs()) if z > pillar_h + 1e-9)
    cx = job.part.center_mm[0]
    x = y = None
    across = others = 0
    for c in _commands(slice_job(job).layers[deck]):
        nx, ny, e = c.get("X"), c.get("Y"), c.get("E")
        if nx is not None and e is not None and e > 0:
            inside_gap = abs(ny - job.part.center_mm[1]) < job.part.size_mm[2] / 2 - 2 * 0.45
            if inside_gap and ny == pytest.approx(y):
                lo, hi = sorted((x, nx))
                assert lo < cx - span / 2 and hi > cx + span / 2, "each line is anchored on both pillars"
                across += 1
            elif inside_gap and abs(nx - x) > 0.1:
                others += 1
        if nx is not None:
            x, y = nx, ny
    assert across >= 8 and others == 0
    scores, report = _layered("bridge")
    assert not [f for f in report.failures if f.mode == "extrusion_in_mid_air"]


@pytest.mark.parametrize("changes", [
    {"infill_pattern": "grid", "infill_density": 0.3},
    {"infill_density": 0.0, "perimeters": 1, "solid_layers": 0},
    {"perimeters": 3, "infill_density": 1.0},
], ids=["grid", "perimeters-only", "solid"])
def test_other_infill_settings_run_cleanly_and_account_their_volume(changes: dict[str, object]) -> None:
    job = _job("circle", **changes)
    sliced = slice_job(job)
    report = simulate(sliced.text(), job.printer, job.material)
    assert report.success and not report.notices, report.summary()
    area = report.filament_mm3 / report.filament_mm
    for volume, metrics in zip(sliced.layer_volume_mm3, report.layers, strict=True):
        assert volume == pytest.approx(metrics.filament_mm * area, rel=VOLUME_REL_TOL)


def test_sparse_layers_extrude_less_than_solid_ones_and_grid_crosses_itself() -> None:
    lines = slice_job(_job("rectangle", infill_density=0.2)).layer_volume_mm3
    assert lines[1] < 0.7 * lines[0], "the middle layer is 20 % infill, the first is solid"
    grid = _commands(slice_job(_job("rectangle", infill_pattern="grid", infill_density=0.2)).layers[1])
    slopes: set[int] = set()
    x = y = None
    for c in grid:
        nx, ny, e = c.get("X"), c.get("Y"), c.get("E")
        if nx is not None and e is not None and e > 0 and abs(nx - x) > 1e-6 and abs(ny - y) > 1e-6:
            slopes.add(round(math.degrees(math.atan2(ny - y, nx - x))) % 180)
        if nx is not None:
            x, y = nx, ny
    assert slopes == {45, 135}


def test_expert_steps_follow_the_environment() -> None:
    job = _job("polygon")
    sliced = slice_job(job)
    policy = ExpertPolicy(job)
    assert policy.step_count == job.layer_count + 2
    assert policy.act({"step": 0}) == sliced.start
    assert [policy.program_for_step(k + 1) for k in range(job.layer_count)] == sliced.layers
    assert policy.act({"step": job.layer_count + 1}) == sliced.end
    with pytest.raises(ValueError, match="out of range"):
        policy.program_for_step(job.layer_count + 2)
    bare = ExpertPolicy(PrintJob.from_dict({**job.to_dict(), "start_end": False}))
    assert bare.step_count == job.layer_count
    assert bare.act({"step": 0}) == sliced.layers[0]
    assert re.match(r";LAYER_CHANGE\nG1 Z0\.2 ", bare.act({"step": 0}))
