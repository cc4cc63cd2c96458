"""What a supervisor sees during a deployment and what it may answer: live telemetry, the plan of each layer,
and the :class:`Supervisor` protocol (the deployment calls it at each layer change; its answer goes through
:class:`safety.gate.LiveTuning`, one command at a time, never around it).

The layer the printer is on comes from Klipper's byte offset in the file (``virtual_sdcard.file_position``)
against the first line of each layer the simulator found in this very payload; the ETA from the simulator's
time of the layers still to print. Supervisors live in ``agent/`` (the rule, a trained policy); ``safety``
only defines what they are given.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Protocol

from sim_bridge.report import PrintReport

NO_CHANGE = ""


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the simulator ran it from the payload."""

    index: int
    first_line: int
    z_mm: float
    time_s: float
    filament_mm: float
    flow_mm3_s: float
    """Mean volumetric flow of the layer (filament volume over its time)."""
    delivered_fraction: float
    """Share of the commanded filament the hotend melted (below 1: melt-limited, at the job's temperature)."""


@dataclass(frozen=True)
class LiveTelemetry:
    """The printer now, as a supervisor and the watchdogs see it."""

    elapsed_s: float
    klippy_state: str
    print_state: str
    hotend_temp_c: float
    hotend_target_c: float
    bed_temp_c: float
    bed_target_c: float
    layer: int
    """Index into the plan (−1 before the first layer)."""
    line: int
    """The 1-based line of the payload Klipper reads next."""
    layer_count: int
    progress: float
    """0 … 1 of the file (Klipper's ``virtual_sdcard.progress``)."""
    eta_s: float
    speed_factor: float
    extrude_factor: float
    fan: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Supervisor(Protocol):
    """Proposes live-tuning commands (one per line) for the layer about to print, or :data:`NO_CHANGE`."""

    name: str

    def propose(self, telemetry: LiveTelemetry, next_layer: LayerPlan) -> str: ...

    def refused(self, command: str, reasons: list[str]) -> None:
        """``command`` of the last proposal was refused by the gate for ``reasons`` (a model reads it next layer)."""


def layer_plans(report: PrintReport, filament_diameter_mm: float) -> list[LayerPlan]:
    area = math.pi * (filament_diameter_mm / 2.0) ** 2
    return [LayerPlan(layer.index, layer.first_line, layer.z_mm, layer.time_s, layer.filament_mm,
                      layer.filament_mm * area / layer.time_s if layer.time_s > 0 else 0.0,
                      layer.delivered_fraction) for layer in report.layers]


class LayerTracker:
    """File byte offset → layer index, for one payload."""

    def __init__(self, payload: bytes, plans: list[LayerPlan]) -> None:
        starts = [0]
        for line in payload.splitlines(keepends=True):
            starts.append(starts[-1] + len(line))
        self.plans = plans
        self.line_starts = starts
        self.offsets = [starts[min(p.first_line - 1, len(starts) - 1)] for p in plans]

    def layer_at(self, file_position: int) -> int:
        return bisect.bisect_right(self.offsets, file_position) - 1

    def line_at(self, file_position: int) -> int:
        """The 1-based line Klipper reads next at byte ``file_position``."""
        return bisect.bisect_right(self.line_starts, file_position)

    def eta_s(self, layer: int) -> float:
        return sum(p.time_s for p in self.plans[max(layer, 0):])


def live_telemetry(status: dict[str, dict[str, Any]], tracker: LayerTracker, elapsed_s: float) -> LiveTelemetry:
    def number(obj: str, key: str, default: float = 0.0) -> float:
        value = status.get(obj, {}).get(key, default)
        return float(value) if isinstance(value, (int, float)) else default

    position = int(number("virtual_sdcard", "file_position"))
    layer = tracker.layer_at(position)
    return LiveTelemetry(
        elapsed_s=elapsed_s, klippy_state=str(status.get("webhooks", {}).get("state", "?")),
        print_state=str(status.get("print_stats", {}).get("state", "?")),
        hotend_temp_c=number("extruder", "temperature"), hotend_target_c=number("extruder", "target"),
        bed_temp_c=number("heater_bed", "temperature"), bed_target_c=number("heater_bed", "target"),
        layer=layer, line=tracker.line_at(position), layer_count=len(tracker.plans), progress=number("virtual_sdcard", "progress"),
        eta_s=tracker.eta_s(layer), speed_factor=number("gcode_move", "speed_factor", 1.0),
        extrude_factor=number("gcode_move", "extrude_factor", 1.0), fan=number("fan", "speed"))
