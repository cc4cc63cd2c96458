"""The ``moonraker`` backend: run a program on a Klipper printer behind Moonraker, report as the simulator does.

:func:`simulate_via_moonraker` uploads the program, starts it, follows ``print_stats``, ``virtual_sdcard``,
``toolhead`` and the heaters (:func:`sim_bridge.moonraker.follow_print`) until the print is complete, in
error or cancelled, and maps what Klipper said onto a :class:`~sim_bridge.report.PrintReport`:

* from **Klipper** (via Moonraker): whether the print completed; its error (Klipper's own message, its
  failure mode by :func:`sim_bridge.failures.classify_klipper_message`) and the G-code **line** where it
  stopped (``virtual_sdcard.file_position`` is the byte offset of the line Klipper refused); the final
  toolhead position and heater readings; the filament Klipper counted (``print_stats.filament_used``,
  from its own extruder positions) and, on a paced printer, the print time (``print_duration``);
* from the **embedded simulator**, run on the lines Klipper executed (up to the one it refused): what
  Moonraker cannot tell — layers, deposition, collisions, the time breakdown — and the print time of an
  unpaced printer (``paced=False``). A Klippy whose MCU is a file (the virtual printer) paces nothing: its
  ``print_duration`` is the wall time of planning the file, heaters read 0 °C and the cold-extrusion check
  is off; the embedded simulator's heater failures (:data:`EMBEDDED_ONLY_MODES`) are kept for that reason.

Which source gave each figure is in ``report.final_state["sources"]`` (field → ``"klipper"`` or
``"embedded"``); :class:`PrintReport` has no per-field source of its own in this tree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sim_bridge.failures import (
    COLD_EXTRUSION,
    HEATER_TIMEOUT,
    OTHER,
    THERMAL_RUNAWAY,
    classify_klipper_message,
)
from sim_bridge.moonraker import MoonrakerClient, follow_print
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import Failure, PrintReport
from sim_bridge.simulator import Simulator

DEFAULT_TIMEOUT_S = 600.0
"""How long a print may take on the printer before the backend gives up (a file MCU takes under a second)."""
EMBEDDED_ONLY_MODES = frozenset({COLD_EXTRUSION, THERMAL_RUNAWAY, HEATER_TIMEOUT})
"""Failures a Klippy with a file MCU cannot see (it reads every heater at 0 °C and skips the cold-extrusion
check): taken from the embedded simulator."""
GCODE_SUFFIXES = (".gcode", ".gco", ".g")
"""File name endings that make a one-line string a path."""
KLIPPER = "klipper"
EMBEDDED = "embedded"


def simulate_via_moonraker(program: str | os.PathLike[str] | bytes, printer: PrinterProfile | str,
                           url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                           material: str = "PLA", filename: str | None = None, paced: bool = True) -> PrintReport:
    """Print ``program`` (a path, G-code text or bytes) on the Moonraker at ``url``; ``printer`` is the
    profile the embedded simulator uses for what Moonraker cannot tell (it should describe that printer).
    ``paced=False`` says the printer's MCU is a file (the virtual printer): its ``print_duration`` is then
    the wall time of an unpaced run, not a print time, and the embedded simulator's is reported instead.

    Moonraker's refusals (no API key, Klippy not ready, a busy printer) raise
    :class:`sim_bridge.moonraker.MoonrakerError`; a print still running after ``timeout_s`` raises
    :class:`sim_bridge.moonraker.PrintTimeout` (the print is cancelled first).
    """
    data = _program_bytes(program)
    name = filename or (Path(program).name if _is_path(program) else
                        f"layerloop-{hashlib.sha256(data).hexdigest()[:12]}.gcode")
    client = MoonrakerClient(url, api_key=api_key)
    client.upload(name, data)
    client.print_start(name)
    try:
        status, followed_by = follow_print(client, timeout_s)
    except TimeoutError:
        client.print_cancel()
        raise
    stats, sdcard = status.get("print_stats", {}), status.get("virtual_sdcard", {})
    state, message = str(stats.get("state")), str(stats.get("message") or "").strip()
    stop_line = None
    executed = data
    if state == "error":
        offset = int(sdcard.get("file_position") or 0)
        stop_line = data[:offset].count(b"\n") + 1
        executed = data[:offset]
    report = Simulator(printer, material).run(executed, name=name)
    return _merge(report, status, state, message, stop_line, followed_by, paced)


def _merge(report: PrintReport, status: dict[str, Any], state: str, message: str, stop_line: int | None,
           followed_by: str, paced: bool) -> PrintReport:
    sources = {"success": KLIPPER, "failures": KLIPPER, "stopped_at_line": KLIPPER, "final_state": KLIPPER,
               "print_time_s": EMBEDDED, "filament_mm": EMBEDDED, "layers": EMBEDDED, "bbox_mm": EMBEDDED,
               "time_breakdown_s": EMBEDDED}
    kept = [f for f in report.failures if f.mode in EMBEDDED_ONLY_MODES or not f.fatal]
    if stop_line is not None:
        first_line = message.splitlines()[0] if message else "print error"
        layer = max((m.index for m in report.layers if m.first_line <= stop_line), default=-1)
        kept.insert(0, Failure(classify_klipper_message(first_line) or OTHER, first_line, stop_line, layer,
                               fatal=True))
    elif state != "complete":
        kept.insert(0, Failure(OTHER, f"print {state}: {message or 'no message'}", 0, fatal=True))
    report.failures = kept
    report.success = state == "complete" and not any(f.fatal for f in kept)
    report.stopped_at_line = stop_line if stop_line is not None else next(
        (f.line for f in kept if f.fatal), None)
    stats = status.get("print_stats", {})
    if paced and float(stats.get("print_duration") or 0.0) > 0:
        report.print_time_s, sources["print_time_s"] = float(stats["print_duration"]), KLIPPER
    if float(stats.get("filament_used") or 0.0) > 0:
        report.filament_mm, sources["filament_mm"] = float(stats["filament_used"]), KLIPPER
    toolhead, extruder, bed = (status.get(k, {}) for k in ("toolhead", "extruder", "heater_bed"))
    report.final_state = {
        "backend": "moonraker", "followed_by": followed_by, "print_state": state, "message": message,
        "position_mm": list(toolhead.get("position") or []), "homed_axes": toolhead.get("homed_axes", ""),
        "hotend_c": extruder.get("temperature"), "hotend_target_c": extruder.get("target"),
        "bed_c": bed.get("temperature"), "bed_target_c": bed.get("target"),
        "embedded_final_state": report.final_state, "sources": sources,
    }
    return report


def _is_path(program: object) -> bool:
    """A path object, or one line of text naming a file or ending in a G-code suffix (so that a missing file
    is an error naming it, not a one-line program)."""
    if isinstance(program, os.PathLike):
        return True
    if not isinstance(program, str) or "\n" in program or len(program) >= 4096:
        return False
    return Path(program).suffix.lower() in GCODE_SUFFIXES or Path(program).is_file()


def _program_bytes(program: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(program, bytes):
        return program
    if _is_path(program):
        return Path(program).read_bytes()
    return str(program).encode("utf-8")
