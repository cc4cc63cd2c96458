"""What ``success`` means for overhangs: a part that keeps its shape passes, one that sags fails.

Real slicer output (the Stanford bunny, PrusaSlicer 2.5 stock settings, fan off on the first layers) must
succeed on both planners; an uncooled steep wall is a quality warning; an uncooled bridge or cantilever is
the ``overhang_without_cooling`` failure (see docs/simulator.md §6 and §7).
"""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from sim_bridge import simulate
from sim_bridge.failures import DEFECT_MODES, OVERHANG_WITHOUT_COOLING, WARNING_MODES
from sim_bridge.report import PrintReport

BUNNY = FIXTURES / "prusaslicer" / "stock_bunny35.gcode"
LAYER_MM = 0.2
E_PER_MM = 0.45 * LAYER_MM / 2.405
"""Filament per mm of a 0.45 × 0.2 mm bead (1.75 mm filament: 2.405 mm² cross-section)."""
START = "G28\nM190 S60\nM109 S210\nM83\n"


def _line(x0: float, y0: float, x1: float, y1: float, z: float) -> str:
    length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
    return f"G1 X{x0:.3f} Y{y0:.3f} Z{z:.2f} F6000\nG1 X{x1:.3f} Y{y1:.3f} E{length * E_PER_MM:.5f} F1200\n"


def _pad(x: float, y: float, z: float, size_mm: float = 2.0) -> str:
    # Lines 0.45 mm apart fill a square pad of one layer.
    rows = int(size_mm / 0.45) + 1
    return "".join(_line(x, y + 0.45 * r, x + size_mm, y + 0.45 * r, z) for r in range(rows))


def _bridge(fan: str, span_mm: float = 12.0, layers: int = 8) -> str:
    """Two pillars ``layers`` high and one bead across the gap between them on the next layer."""
    body = [START, "M107\n"]
    for k in range(layers):
        z = LAYER_MM * (k + 1)
        body += [_pad(50.0, 50.0, z), _pad(52.0 + span_mm, 50.0, z)]
    top = LAYER_MM * (layers + 1)
    body += [fan, _line(51.0, 51.0, 53.0 + span_mm, 51.0, top)]
    return "".join(body)


def _wall(step_mm: float, layers: int = 10) -> str:
    """A 20 mm single-bead wall on a pad, leaning out ``step_mm`` per layer, fan off throughout."""
    body = [START, "M107\n", _pad(50.0, 49.0, LAYER_MM, 20.0)]
    for k in range(1, layers):
        y = 50.0 + step_mm * k
        body.append(_line(50.0, y, 70.0, y, LAYER_MM * (k + 1)))
    return "".join(body)


@pytest.mark.parametrize("planner", ["klipper", "marlin"])
def test_prusaslicer_bunny_prints(planner: str) -> None:
    # Stock PrusaSlicer leaves the fan off on the first 3 layers; the bunny's layer-1 "Overhang perimeter"
    # leans 0.2 mm past the first layer's edge. Before the adrift rule this reported a failure.
    report = simulate(BUNNY, "ender3-klipper", planner=planner)
    assert report.success, report.summary()
    assert report.failures == []
    assert report.layer_count == 125
    assert {w.mode for w in report.warnings} == {OVERHANG_WITHOUT_COOLING}
    assert [w.layer for w in report.warnings] == [1]
    # Real overhang figures: a few mm of steep path per layer at most, a tiny fraction of all of it.
    path = sum(layer.extruded_path_mm for layer in report.layers)
    steep = sum(layer.unsupported_path_mm for layer in report.layers)
    assert 0.0 < steep < 0.01 * path
    assert max(layer.unsupported_path_mm for layer in report.layers) < 25.0
    assert report.layers[1].unsupported_path_mm == pytest.approx(4.2, abs=1.0)


def test_uncooled_bridge_fails_and_cooled_bridge_prints() -> None:
    uncooled = simulate(_bridge("M107\n"))
    assert uncooled.failure_modes() == {OVERHANG_WITHOUT_COOLING: 1}, uncooled.summary()
    assert uncooled.failures[0].layer == 8
    cooled = simulate(_bridge("M106 S255\n"))
    assert cooled.success, cooled.summary()
    assert cooled.warnings == []


def test_short_uncooled_span_prints() -> None:
    # A 2 mm gap (an infill cell the first solid layer crosses) holds without the fan.
    assert simulate(_bridge("M107\n", span_mm=2.0)).success


def test_uncooled_steep_wall_is_a_warning_not_a_failure() -> None:
    # Each bead 0.6 mm out from the one below: its edge 0.375 mm past theirs, beyond PLA's reach at 0.2 mm
    # layers (0.24 mm) but within a bead width of it.
    steep = simulate(_wall(0.6))
    assert steep.success, steep.summary()
    assert steep.warning_modes().get(OVERHANG_WITHOUT_COOLING, 0) > 0
    assert sum(layer.unsupported_path_mm for layer in steep.layers) > 20.0
    ledge = simulate(_wall(1.2))  # each bead clear of the one below by more than a width: a ledge in the air
    assert OVERHANG_WITHOUT_COOLING in ledge.failure_modes(), ledge.summary()


def test_warnings_round_trip_and_vocabulary() -> None:
    report = simulate(_wall(0.6))
    again = PrintReport.from_dict(report.to_dict())
    assert again.warnings == report.warnings
    assert "warning line" in report.summary()
    assert WARNING_MODES <= DEFECT_MODES
