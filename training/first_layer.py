"""What the first layer shows: the telemetry of a program's first layer as predictor input.

The deployment gate prints a program's first layer before the whole (the ``first-layer`` stage,
:mod:`safety.gate`), and a person looks at it. A predictor that also reads the first layer's telemetry
answers the question that stage asks: *after the first layer, will the rest print?* Here the telemetry is
the embedded simulator's for that layer (the same :class:`~sim_bridge.report.LayerMetrics` a live print's
first layer is compared against): its time, filament and extruded path, deposited area, peak flow, the
share of the commanded filament delivered, the unsupported path, and the failures and defects the layer
itself showed. Failures after the first layer are not read: they are what is predicted.
"""

from __future__ import annotations

import math

import numpy as np

from sim_bridge.backends import EMBEDDED, simulate
from sim_bridge.profiles import PrinterProfile

FIRST_LAYER_FEATURES = ("fl_time_s", "fl_filament_mm", "fl_extruded_path_mm", "fl_deposited_area_mm2",
                        "fl_max_flow_mm3_s", "fl_delivered_fraction", "fl_unsupported_path_mm", "fl_fatal",
                        "fl_defects", "fl_has_layer")
"""What :func:`first_layer_telemetry` measures, in its order."""


def first_layer_telemetry(gcode: str, profile: PrinterProfile, material: str = "PLA") -> np.ndarray:
    """The first layer's telemetry (:data:`FIRST_LAYER_FEATURES`): its metrics, and the fatal failures and
    defects reported before the second layer's first line (all zero, ``fl_has_layer`` 0, when the program
    lays no layer)."""
    report = simulate(gcode, profile, backend=EMBEDDED, material=material)
    end_line = report.layers[1].first_line if len(report.layers) > 1 else math.inf
    early = [f for f in report.failures if f.line < end_line]
    first = report.layers[0] if report.layers else None
    metrics = [0.0] * 7 if first is None else [
        first.time_s, first.filament_mm, first.extruded_path_mm, first.deposited_area_mm2, first.max_flow_mm3_s,
        first.delivered_fraction, first.unsupported_path_mm]
    fatal = sum(f.fatal for f in early)
    values = [*metrics, float(fatal), float(len(early) - fatal), float(first is not None)]
    return np.array([v if math.isfinite(v) else 0.0 for v in values], dtype=float)
