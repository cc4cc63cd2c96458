"""The ``slicer`` baseline: a job meshed layer by layer, sliced by the real PrusaSlicer, cut into steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.prusa_policy import END_MARKER, PrusaSlicerPolicy, prusa_config, slice_with_prusaslicer
from envs.jobs import PartSpec, PrintJob, ProcessSettings
from envs.mesh import binary_stl, job_prisms, job_triangles, mesh_volume_mm3
from envs.sampler import load_suite
from sim_bridge.prusa_slicer import (
    CONFIG_DUMP_BEGIN,
    NoLayersError,
    SlicedProgram,
    slice_mesh,
    split_layers,
)
from training.evaluate import main
from training.writer_eval import evaluate

FIXTURES = Path(__file__).parent / "fixtures" / "prusaslicer"


def _job(kind: str, size: list[float], height_mm: float, **process: float) -> PrintJob:
    return PrintJob(job_id=f"test-{kind}", part=PartSpec(kind=kind, size_mm=size, height_mm=height_mm,
                                                        center_mm=[110.0, 110.0]),
                    process=ProcessSettings(**process))


# -- the mesh ------------------------------------------------------------------------------------------------------
def test_a_hole_plate_meshes_to_its_volume_as_one_closed_prism() -> None:
    job = _job("hole_plate", [20.0, 10.0, 4.0], 0.6)
    prisms = job_prisms(job)
    assert len(prisms) == 1 and (prisms[0].z0_mm, prisms[0].z1_mm) == (0.0, 0.6)  # three equal layers merged
    triangles = job_triangles(job)
    expected = job.target(0).area * 0.6
    assert mesh_volume_mm3(triangles) == pytest.approx(expected, rel=1e-9)  # wound outward, hole kept
    # Closed: every edge is shared by exactly two faces, once in each direction.
    edges: dict[tuple, int] = {}
    for tri in triangles.round(9):
        for a, b in ((0, 1), (1, 2), (2, 0)):
            key = (tuple(tri[a]), tuple(tri[b]))
            edges[key] = edges.get(key, 0) + 1
    assert all(edges.get((b, a)) == n for (a, b), n in edges.items())


def test_a_bridge_meshes_as_pillars_then_a_deck() -> None:
    job = _job("bridge", [8.0, 5.0, 6.0, 0.6], 1.0)
    prisms = job_prisms(job)
    assert [(p.z0_mm, p.z1_mm) for p in prisms] == [(0.0, 0.6), (0.6, 1.0)]
    assert prisms[0].outline.area == pytest.approx(2 * 5.0 * 6.0) and prisms[1].outline.area == pytest.approx(18 * 6)
    stl = binary_stl(job_triangles(job))
    assert len(stl) == 84 + 50 * len(job_triangles(job))


# -- cutting PrusaSlicer's program ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cube20_ender3.gcode", "stock_bunny35.gcode"])
def test_split_keeps_every_line_and_finds_every_layer(name: str) -> None:
    text = (FIXTURES / name).read_text()
    program = split_layers(text)
    assert program.start + "".join(program.layers) + program.end == text[:text.index(CONFIG_DUMP_BEGIN)]
    assert len(program.layers) == len(re.findall(r"^;LAYER_CHANGE$", text, flags=re.M)) > 10
    assert all(layer.startswith(";LAYER_CHANGE\n") for layer in program.layers)


def test_split_at_the_end_marker() -> None:
    text = "G90\n;LAYER_CHANGE\nG1 X1 E1\n;LAYER_CHANGE\nG1 X2 E1\nM107\n; end here\nM84\n; prusaslicer_config = begin\n"
    program = split_layers(text, "; end here")
    assert program == SlicedProgram("G90\n", (";LAYER_CHANGE\nG1 X1 E1\n", ";LAYER_CHANGE\nG1 X2 E1\nM107\n"), "; end here\nM84\n")
    assert split_layers("G28\n").layers == ()


# -- the job's settings --------------------------------------------------------------------------------------------
def test_the_config_carries_the_job_settings() -> None:
    job = _job("rectangle", [20.0, 20.0], 0.6, line_width_mm=0.5, infill_density=0.3, infill_pattern="grid",
               solid_layers=1, print_speed_mm_s=55.0, retract_mm=1.2, hotend_temp_c=215.0, fan=0.5)
    config = prusa_config(job)
    assert config["bed_shape"] == "0x0,235x0,235x235,0x235" and config["gcode_flavor"] == "marlin"
    assert config["extrusion_width"] == config["first_layer_extrusion_width"] == "0.5"
    assert (config["fill_density"], config["fill_pattern"]) == ("30%", "grid")
    assert config["top_solid_layers"] == config["bottom_solid_layers"] == "1"
    assert config["infill_speed"] == config["external_perimeter_speed"] == "55" and config["retract_length"] == "1.2"
    assert config["temperature"] == config["first_layer_temperature"] == "215" and config["max_fan_speed"] == "50"
    assert config["use_relative_e_distances"] == "1" and config["skirts"] == "0"
    assert config["end_gcode"].startswith(END_MARKER) and config["start_gcode"] == ""  # no start/end sequences
    marlin = prusa_config(PrintJob(printer="mk3s-marlin", part=PartSpec(center_mm=[125.0, 105.0])))
    assert marlin["gcode_flavor"] == "marlin2" and marlin["bed_shape"].startswith("0x-4")


# -- the real PrusaSlicer ------------------------------------------------------------------------------------------
def test_prusaslicer_prints_the_jobs_layers(tmp_path: Path) -> None:
    job = _job("ring", [20.0, 10.0], 0.6, perimeters=2, infill_density=0.2, solid_layers=1)
    program = slice_with_prusaslicer(job, tmp_path)
    assert len(program.layers) == job.layer_count == 3
    for k, layer in enumerate(program.layers):
        z = float(re.search(r"^;Z:([\d.]+)$", layer, flags=re.M).group(1))
        assert z == pytest.approx(job.layer_zs()[k])
        xs = [float(x) for x in re.findall(r"^G1 X([\d.]+) Y[\d.]+ E", layer, flags=re.M)]
        # Extruded within the ring (outer radius 10 about X 110), reaching near its outer edge.
        assert 100.0 < min(xs) < 100.5 and 119.5 < max(xs) < 120.0
    ini = next(tmp_path.glob("*/part.ini")).read_text()
    assert "fill_density = 20%" in ini and "perimeters = 2" in ini


def test_the_slicer_policy_prints_tiny_jobs_and_the_command_reports_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERLOOP_SLICER_CACHE", str(tmp_path / "cache"))
    jobs = load_suite("tiny-v0")[:2]
    policy = PrusaSlicerPolicy(jobs)
    assert policy.notes == []
    result = evaluate(policy, jobs, 2)
    for record in result.per_episode:
        assert record.success and record.valid and record.violations == 0 and record.geometry > 0.95
        assert record.answers[0].startswith("G1 E")  # primed after the silent setup
        assert record.size_error_z_mm == pytest.approx(0.0, abs=1e-9)  # its top layer at the job's height
    out = tmp_path / "eval"
    assert main(["--policy", "slicer", "--suite", "tiny-v0", "--episodes", "2", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["policies"]["slicer"]["metrics"]["success_rate"]["value"] == 1.0
    assert "`slicer`" in (out / "report.md").read_text()


def test_a_start_end_job_gets_start_layers_and_end(tmp_path: Path) -> None:
    job = next(j for j in load_suite("heldout-v0") if j.start_end and j.part.kind != "bridge")
    policy = PrusaSlicerPolicy([job], tmp_path)
    program = policy.programs[job.job_id]
    assert "G28" in program.start and "M109" in program.start and program.end.startswith(END_MARKER)
    assert "M84" in program.end and CONFIG_DUMP_BEGIN not in program.end
    assert policy.step_text(job, "layer", job.layer_count - 1).startswith(";LAYER_CHANGE")


def test_a_part_thinner_than_a_layer_is_a_clear_error(tmp_path: Path) -> None:
    mesh = tmp_path / "flat.stl"
    mesh.write_bytes(binary_stl(job_triangles(_job("rectangle", [10.0, 10.0], 0.2)) * [1.0, 1.0, 0.1]))
    with pytest.raises(NoLayersError, match="no layers"):
        slice_mesh(mesh, {"first_layer_height": "0.2"}, tmp_path / "flat.gcode", ["--dont-arrange"])


def test_without_prusaslicer_the_report_goes_on_and_asking_for_it_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PRUSA_SLICER", str(tmp_path / "no-such-prusa-slicer"))  # a machine without it
    # ...and without the programs other tests of this run left in the cache.
    monkeypatch.setenv("LAYERLOOP_SLICER_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "eval"
    assert main(["--policy", "expert", "--suite", "tiny-v0", "--episodes", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "report.json").read_text())["policies"]["expert"]["metrics"]
    assert "time_vs_expert" in metrics and "time_vs_slicer" not in metrics
    assert "no ratios against PrusaSlicer" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--policy", "slicer", "--suite", "tiny-v0", "--episodes", "1", "--out", str(out)])
    assert exit_info.value.code == 2 and "is not installed" in capsys.readouterr().err
