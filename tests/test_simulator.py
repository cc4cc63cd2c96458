"""The embedded simulator as a whole: API, persistence between runs, report, traces, CLI, plots, real files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import WILD_DIR as WILD

from sim_bridge import SimOptions, Simulator, simulate
from sim_bridge.__main__ import main
from sim_bridge.failures import STOPPED, UNREADABLE
from sim_bridge.printers import load_material, load_printer
from sim_bridge.thermal import melt_capacity_mm3_s

ROOT = Path(__file__).parent.parent
CUBE = ROOT / "sim_bridge" / "data" / "cube20_ender3.gcode"
START = "G28\nM140 S60\nM104 S210\nM190 S60\nM109 S210\nG92 E0\nM83\n"


def test_report_of_a_real_print_is_complete_and_json_serialisable() -> None:
    report = simulate(CUBE, "ender3-klipper")
    assert report.success, report.summary()
    assert report.layer_count == 100
    assert math.isclose(sum(report.time_breakdown_s.values()), report.print_time_s, rel_tol=1e-12)
    assert report.time_breakdown_s["heating"] > 60.0, "bed and hotend must take real time to heat"
    assert report.time_breakdown_s["homing"] > 0.0
    lo, hi = report.bbox_mm["min"], report.bbox_mm["max"]
    assert hi[2] == pytest.approx(20.0, abs=0.01)
    assert hi[0] - lo[0] > 20.0  # the skirt lies outside the cube
    data = json.loads(report.to_json())
    for key in ("success", "failures", "print_time_s", "time_breakdown_s", "filament_mm", "filament_mm3",
                "layer_count", "bbox_mm", "layers"):
        assert key in data
    assert data["layers"][50]["z_mm"] == pytest.approx(10.2, abs=1e-6)
    assert 0.99 <= data["layers"][50]["delivered_fraction"] <= 1.0


def test_state_persists_between_runs_like_one_program() -> None:
    layer_1 = "G1 Z0.2 X50 Y50 F3000\nG1 X70 E0.665 F1200\nG1 Y70 E0.665\n"
    layer_2 = "G1 Z0.4\nG1 Y50 E0.665 F1200\nG1 X50 E0.665\n"
    whole = simulate(START + layer_1 + layer_2)
    sim = Simulator()
    sim.run(START + layer_1)
    first = sim.report()
    assert first.layer_count == 1
    assert sim.state.pos[:2] == [70.0, 70.0]
    report = sim.run(layer_2)
    assert report.layer_count == 2
    assert report.filament_mm == pytest.approx(whole.filament_mm)
    # A run ends at rest, so two runs take a little longer than one program, never less.
    assert whole.print_time_s <= report.print_time_s < whole.print_time_s + 0.5
    assert float(sim.heightmap.heights.max()) == pytest.approx(0.4)


def test_fatal_error_stops_the_print_and_later_runs() -> None:
    sim = Simulator()
    report = sim.run("G28\nM104 S200\nG1 X10 Y10 Z0.2 F3000\nG1 X30 E1\nG1 X40 E2\n")
    assert report.stopped_at_line == 4
    assert report.failures[-1].mode == "cold_extrusion"
    assert report.filament_mm == 0.0
    again = sim.run("G1 X50\n")
    assert again.moves == report.moves
    assert any(n.kind == "stopped" for n in again.notices)


def test_heating_follows_the_thermal_model_and_traces_are_consistent() -> None:
    report = simulate("M104 S200\nM109 S200\nG4 P5000\n", traces=True, trace_interval_s=0.5)
    traces = report.traces
    assert traces is not None
    t = traces["t_s"]
    assert all(b > a for a, b in zip(t, t[1:], strict=False))
    temps = traces["hotend_c"]
    assert temps[0] < 40.0
    assert abs(temps[-1] - 200.0) < 2.0
    assert max(temps) < 215.0, "PID overshoot stays modest"
    assert 20.0 < report.time_breakdown_s["heating"] < 300.0
    assert report.time_breakdown_s["dwell"] == pytest.approx(5.0)
    assert all(len(v) == len(t) for v in traces.values())


def test_marlin_and_klipper_corners_differ_as_expected() -> None:
    zigzag = "G28\nG1 Z5 F600\n" + "".join(f"G1 X{50 + (i % 2) * 2} Y{50 + i * 0.5} F12000\n" for i in range(200))
    klipper = simulate(zigzag, "ender3-klipper", planner="klipper", deposition=False)
    marlin = simulate(zigzag, "ender3-klipper", planner="marlin", deposition=False)
    assert klipper.time_breakdown_s["motion"] != pytest.approx(marlin.time_breakdown_s["motion"], rel=0.01)
    # A 90-degree square corner at square_corner_velocity 5 mm/s: slower than a straight line of equal length.
    straight = simulate("G28\nG1 X10 Y10 F6000\nG1 X110 F6000\nG1 X210\n", deposition=False)
    corner = simulate("G28\nG1 X10 Y10 F6000\nG1 X110 F6000\nG1 Y110\n", deposition=False)
    assert corner.time_breakdown_s["motion"] > straight.time_breakdown_s["motion"] + 0.02


def test_under_extrusion_depends_on_temperature() -> None:
    fast = "G1 Z0.3 X20 Y50 F6000\nG1 X200 E16 F6000\n"
    hot = simulate(START.replace("S210", "S240") + fast, "ender3-klipper")
    cold = simulate(START.replace("S210", "S180") + fast, "ender3-klipper")
    assert hot.layers[0].delivered_fraction > cold.layers[0].delivered_fraction


@pytest.mark.parametrize("path", sorted(WILD.glob("*.gcode")), ids=lambda p: p.stem)
def test_every_wild_file_runs_to_a_clear_outcome(path: Path) -> None:
    report = simulate(path, "corexy300-klipper", resolution_mm=0.2)
    assert report.lines > 0
    json.loads(report.to_json())
    for failure in report.failures:
        assert failure.line >= 1 and failure.message


def test_cli_exit_codes_json_and_plot(tmp_path: Path) -> None:
    # Folders that do not exist yet are made (runs/ on a fresh clone).
    out_json, out_png = tmp_path / "runs" / "r.json", tmp_path / "plots" / "r.png"
    assert main(["simulate", str(CUBE), "--printer", "ender3-klipper", "--json", str(out_json),
                 "--plot", str(out_png), "--quiet"]) == 0
    assert json.loads(out_json.read_text())["layer_count"] == 100
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = ROOT / "tests" / "golden" / "must_fail" / "move_out_of_range.gcode"
    assert main(["simulate", str(bad), "--quiet"]) == 1
    assert main(["simulate", str(tmp_path / "missing.gcode"), "--quiet"]) == 2
    assert main(["simulate", str(CUBE), "--printer", "no-such-printer", "--quiet"]) == 2
    # A report that cannot be written is a usage error naming the path, not a traceback.
    assert main(["simulate", str(bad), "--json", str(out_png / "r.json"), "--quiet"]) == 2


def test_virtual_printer_reports_a_missing_extra_cfg(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sim_bridge", "virtual-printer", "--extra-cfg",
                           str(tmp_path / "deadman.cfg")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "deadman.cfg" in proc.stdout + proc.stderr


def test_cli_runs_as_a_module_and_reports_binary_input(tmp_path: Path) -> None:
    binary = tmp_path / "junk.gcode"
    binary.write_bytes(b"G28\n\x00\x01\x02binary")
    proc = subprocess.run([sys.executable, "-m", "sim_bridge", "simulate", str(binary)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "junk.gcode:2" in proc.stderr and "NUL" in proc.stderr


def test_unreadable_input_is_a_failure_in_the_report() -> None:
    missing = Simulator().run(Path("/nonexistent/part.gcode"))
    assert not missing.success and missing.failure_modes() == {UNREADABLE: 1}
    assert "no such file" in missing.failures[0].message and missing.stopped_at_line == 0
    sim = Simulator()
    binary = sim.run(START + "G1 Z5 X20 Y20 F3000\nG1 X30\x00\nG1 X40\n")
    assert binary.failure_modes() == {UNREADABLE: 1} and binary.failures[0].fatal
    assert binary.final_state["position_mm"][0] == 20.0, "the lines before the unreadable one ran"
    assert sim.run("G1 X50\n").notices[-1].kind == STOPPED


def test_options_are_plain_dataclass_fields() -> None:
    options = SimOptions(resolution_mm=0.5, deposition=False)
    report = Simulator(options=options).run(START + "G1 Z0.2 X50 Y50 F3000\nG1 X70 E0.665 F1200\n")
    assert report.success and report.layer_count == 1


def test_default_options_yaml_maps_one_to_one(tmp_path: Path) -> None:
    from sim_bridge.config import ConfigError, load_yaml

    assert load_yaml(SimOptions, ROOT / "configs" / "sim-default.yaml") == SimOptions()
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution_mm: 0\n")
    with pytest.raises(ConfigError, match=r"resolution_mm = 0.0: out of range, allowed \[0.01, 5.0\]"):
        load_yaml(SimOptions, bad)
    bad.write_text("resolution: 0.2\n")
    with pytest.raises(ConfigError, match="did you mean 'resolution_mm'"):
        load_yaml(SimOptions, bad)
    assert main(["simulate", str(CUBE), "--options", str(bad), "--quiet"]) == 2
    assert main(["simulate", str(CUBE), "--resolution", "0", "--quiet"]) == 2


def test_melt_capacity_is_one_function_for_scalars_and_arrays() -> None:
    printer = load_printer("ender3-klipper")
    pla = replace(load_material("PLA"), melt_flow_factor=1.5)
    at_ref = melt_capacity_mm3_s(printer, pla, printer.melt_reference_temp_c)
    assert isinstance(at_ref, float) and at_ref == pytest.approx(1.5 * printer.max_volumetric_flow_mm3_s)
    assert melt_capacity_mm3_s(printer, pla, printer.min_extrude_temp_c - 1.0) == 0.0
    temps = np.array([printer.min_extrude_temp_c - 1.0, printer.melt_reference_temp_c, 400.0])
    assert melt_capacity_mm3_s(printer, pla, temps).tolist() == [
        melt_capacity_mm3_s(printer, pla, float(t)) for t in temps]


@pytest.mark.parametrize("planner", ["klipper", "marlin", "prunt"])
def test_the_planner_chooses_the_corner_model_and_the_profile_the_firmware_rules(planner: str) -> None:
    # Klipper has no M201 and refuses moves before homing, whatever corner model times the moves.
    program = "M201 X500 Y500\nG28\nG1 X20 Y20 F6000\nG1 X40 Y20\nG1 X40 Y40\nM84\nG1 X50 F6000\n"
    report = simulate(program, "ender3-klipper", planner=planner, deposition=False)
    assert (report.firmware, report.planner) == ("klipper", planner)
    assert f"(klipper firmware, {planner} planner)" in report.summary()
    assert any(n.kind == "unknown_command" and n.line == 1 for n in report.notices)
    assert report.stopped_at_line == 7 and report.failures[-1].mode == "must_home_first"
    # On a Marlin printer the same program runs to the end with any corner model (M201 sets the limits).
    marlin = simulate(program, "mk3s-marlin", planner=planner, deposition=False)
    assert marlin.firmware == "marlin" and marlin.stopped_at_line is None
    assert not any(n.kind == "unknown_command" for n in marlin.notices)
