"""What a simulation says happened: :class:`PrintReport` and its parts (JSON-serialisable)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sim_bridge.failures import UNREADABLE
from sim_bridge.gcode import GcodeError

EMBEDDED = "embedded"
"""The name of the embedded simulator as a backend (the default source of every report field)."""
KLIPPER_BATCH = "klipper-batch"
"""Klippy's batch mode as a backend (:mod:`sim_bridge.klippy.batch`)."""
MOONRAKER = "moonraker"
"""A printer behind Moonraker as a backend (:mod:`sim_bridge.moonraker_backend`)."""
PRUNT = "prunt"
"""A Prunt (Prunt3D) motion controller as a backend (:mod:`sim_bridge.prunt_backend`)."""


@dataclass
class Failure:
    """One failure: what (``mode``, see :mod:`sim_bridge.failures`), Klipper-style ``message``, where (``line``,
    ``layer``), how often."""

    mode: str
    message: str
    line: int
    layer: int = -1
    fatal: bool = False
    count: int = 1
    """How many moves of this layer showed the same failure (reported once per layer and mode)."""
    source: str = ""
    """The backend that found it (:data:`sim_bridge.backends.BACKENDS`); empty: the report's ``backend``."""


def unreadable_failure(error: GcodeError, layer: int = -1) -> Failure:
    """The fatal failure for input the reader cannot read (its file, line and reason in the message)."""
    return Failure(UNREADABLE, f"not readable as G-code: {error}", error.line, layer, fatal=True)


@dataclass
class Notice:
    """Something the firmware would report but not fail on (e.g. ``Unknown command``); ``kind`` is one of
    :data:`sim_bridge.failures.NOTICE_KINDS`."""

    kind: str
    message: str
    line: int
    source: str = ""
    """The backend that reported it; empty: the report's ``backend``."""


@dataclass
class LayerMetrics:
    """Per-layer figures."""

    index: int
    z_mm: float
    first_line: int
    time_s: float = 0.0
    filament_mm: float = 0.0
    extruded_path_mm: float = 0.0
    deposited_area_mm2: float = 0.0
    max_flow_mm3_s: float = 0.0
    delivered_fraction: float = 1.0
    """Material delivered over material commanded (below 1 where flow exceeded melt capacity)."""
    unsupported_path_mm: float = 0.0
    failures: int = 0


@dataclass
class PrintReport:
    """The outcome of running one program on one printer.

    ``success`` means the print completes and holds its shape: no fatal error and no defect that spoils the
    part (:data:`~sim_bridge.failures.FATAL_MODES`, :data:`~sim_bridge.failures.DEFECT_MODES`). A defect below
    that grade (a steep overhang printed without cooling: a curled edge) is one of ``warnings`` and leaves
    ``success`` true.
    """

    success: bool
    failures: list[Failure]
    print_time_s: float
    time_breakdown_s: dict[str, float]
    filament_mm: float
    filament_mm3: float
    filament_g: float
    layer_count: int
    bbox_mm: dict[str, list[float]]
    layers: list[LayerMetrics]
    notices: list[Notice] = field(default_factory=list)
    printer: str = ""
    material: str = ""
    planner: str = ""
    """The corner model the times come from (``SimOptions.planner``, by default the firmware's)."""
    firmware: str = ""
    """Whose rules ran the program (command table, homing, heater waits): always the printer's own."""
    lines: int = 0
    commands: int = 0
    moves: int = 0
    stopped_at_line: int | None = None
    """Line of the fatal failure that ended the print early, if any."""
    final_state: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, list[float]] | None = None
    """On request: ``t_s``, ``hotend_c``, ``hotend_target_c``, ``bed_c``, ``bed_target_c``, ``fan``,
    ``flow_mm3_s``, ``x_mm``, ``y_mm``, ``z_mm``, ``e_mm`` sampled on one time base."""
    backend: str = EMBEDDED
    """The backend that made this report (``embedded``, ``klipper-batch``, ``moonraker``, ``prunt``)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Which backend produced each field, by field name (``print_time_s``, ``failures``, ``layers`` …); a
    field not listed comes from ``backend``. A report that merges two backends lists every field."""
    warnings: list[Failure] = field(default_factory=list)
    """Quality warnings: defects (modes of :data:`~sim_bridge.failures.WARNING_MODES`) below the grade that
    spoils the part; they do not make ``success`` false."""

    def source(self, name: str) -> str:
        """The backend that produced field ``name``.

        >>> PrintReport(True, [], 0.0, {}, 0.0, 0.0, 0.0, 0, {}, []).source("print_time_s")
        'embedded'
        """
        return self.sources.get(name, self.backend)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrintReport:
        """The report :meth:`to_dict` (or the JSON of :meth:`to_json`) was made from."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["failures"] = [Failure(**f) for f in data.get("failures", [])]
        values["notices"] = [Notice(**n) for n in data.get("notices", [])]
        values["warnings"] = [Failure(**w) for w in data.get("warnings", [])]
        values["layers"] = [LayerMetrics(**m) for m in data.get("layers", [])]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping with the report's keys."""
        return asdict(self)

    def to_json(self, indent: int | None = 1) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=float)

    def failure_modes(self) -> dict[str, int]:
        """Count of failures per mode."""
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure.mode] = counts.get(failure.mode, 0) + failure.count
        return counts

    def warning_modes(self) -> dict[str, int]:
        """Count of warnings per mode."""
        counts: dict[str, int] = {}
        for warning in self.warnings:
            counts[warning.mode] = counts.get(warning.mode, 0) + warning.count
        return counts

    def summary(self) -> str:
        """A few readable lines."""
        mins, secs = divmod(self.print_time_s, 60.0)
        hours, mins = divmod(mins, 60.0)
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.time_breakdown_s.items())
        lines = [
            f"{'SUCCESS' if self.success else 'FAILED'}: {self.printer} ({self.firmware or '?'} firmware, "
            f"{self.planner} planner), {self.material}"
            + ("" if self.backend == EMBEDDED else f" [backend {self.backend}]"),
            f"print time {int(hours)}h{int(mins):02d}m{secs:04.1f}s ({self.print_time_s:.1f} s: {parts})",
            f"filament {self.filament_mm:.1f} mm = {self.filament_mm3:.0f} mm3 = {self.filament_g:.2f} g; "
            f"{self.layer_count} layers; {self.moves} moves from {self.lines} lines",
        ]
        if self.bbox_mm.get("min"):
            lo, hi = self.bbox_mm["min"], self.bbox_mm["max"]
            lines.append(f"extruded bbox X {lo[0]:.2f}..{hi[0]:.2f} Y {lo[1]:.2f}..{hi[1]:.2f} "
                         f"Z {lo[2]:.2f}..{hi[2]:.2f} mm")
        if self.sources:
            by_source: dict[str, list[str]] = {}
            for name, source in sorted(self.sources.items()):
                by_source.setdefault(source, []).append(name)
            lines.append("sources: " + "; ".join(f"{src}: {', '.join(names)}" for src, names in by_source.items()))
        for f in self.failures[:20]:
            tag = "ERROR" if f.fatal else "defect"
            extra = f" (x{f.count})" if f.count > 1 else ""
            origin = f" ({f.source})" if f.source and f.source != self.backend else ""
            lines.append(f"  {tag} line {f.line}, layer {f.layer}: [{f.mode}] {f.message}{extra}{origin}")
        if len(self.failures) > 20:
            lines.append(f"  … {len(self.failures) - 20} more failures")
        for w in self.warnings[:5]:
            extra = f" (x{w.count})" if w.count > 1 else ""
            lines.append(f"  warning line {w.line}, layer {w.layer}: [{w.mode}] {w.message}{extra}")
        if len(self.warnings) > 5:
            lines.append(f"  … {len(self.warnings) - 5} more warnings")
        for n in self.notices[:5]:
            lines.append(f"  note line {n.line}: {n.message}")
        if len(self.notices) > 5:
            lines.append(f"  … {len(self.notices) - 5} more notes")
        return "\n".join(lines)
