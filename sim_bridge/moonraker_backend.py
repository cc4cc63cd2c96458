"""The ``moonraker`` simulation backend: a program printed on a real (or virtual) Klipper printer behind
Moonraker, and what Klipper said mapped onto a :class:`~sim_bridge.report.PrintReport`.

It talks to the printer only through :class:`~sim_bridge.moonraker.MoonrakerClient` and
:func:`~sim_bridge.moonraker.follow_print`. From Klipper: whether the print completed, its error (Klipper's
message, its mode by :func:`~sim_bridge.failures.classify_klipper_message`) and the G-code line where it
stopped (``virtual_sdcard.file_position`` is the byte offset of the line Klipper refused), the print time,
the final toolhead position and heater readings, the filament Klipper counted (on a clocked MCU). From the
embedded simulator, run on the lines Klipper executed: what Moonraker cannot tell (layers, deposition,
collisions, the time breakdown). A Klippy whose MCU is a file (:mod:`sim_bridge.virtual_printer`) paces
nothing: its ``print_duration`` is the wall time of planning the file (its planned time is
``toolhead.print_time``), heaters read 0 °C and it skips the cold-extrusion check, so the embedded
simulator's heater failures (:data:`~sim_bridge.failures.FILE_MCU_BLIND_MODES`) are kept. ``report.backend`` is ``moonraker`` and
``report.sources`` names the source of each field.

Nothing here sends a program to a printer without the caller asking: the deployment gate does not use this
backend (it would print); deployment goes through :mod:`safety`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import replace
from typing import Any

from sim_bridge.failures import FILE_MCU_BLIND_MODES, OTHER, classify_klipper_message
from sim_bridge.gcode import program_path, program_source
from sim_bridge.moonraker import HALTED_KLIPPY_STATES, MoonrakerClient, MoonrakerError, follow_print
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import EMBEDDED, MOONRAKER, Failure, PrintReport
from sim_bridge.simulator import Simulator

BACKEND_TIMEOUT_S = 600.0
"""How long a print may take on the printer before the backend gives up (a file MCU takes under a second)."""


def simulate_via_moonraker(program: str | os.PathLike[str] | bytes, printer: PrinterProfile | str,
                           url: str, api_key: str | None = None, timeout_s: float = BACKEND_TIMEOUT_S,
                           material: str = "PLA", filename: str | None = None) -> PrintReport:
    """Print ``program`` (a path, G-code text or bytes) on the Moonraker at ``url``; ``printer`` is the
    profile the embedded simulator uses for what Moonraker cannot tell (it should describe that printer).
    The print time is Klipper's either way: ``print_stats.print_duration`` on a printer with a clocked MCU,
    the advance of ``toolhead.print_time`` (Klipper's planned time, as batch mode reports it) on one whose MCU
    is a file (``toolhead.estimated_print_time`` stays 0 there: nothing runs the clock).

    Moonraker's refusals (no API key, Klippy not ready, a busy printer) raise :class:`MoonrakerError`; a
    print still running after ``timeout_s`` is cancelled and raises :class:`PrintTimeout`. A Klippy that
    halts during the print (``webhooks.state`` ``shutdown`` or ``error``, e.g. M112) is a fatal failure with
    Klippy's message at the line ``virtual_sdcard.file_position`` points to.
    """
    data, name = _program(program, filename)
    client = MoonrakerClient(url, api_key=api_key)
    planned_before_s = float(client.objects_query(("toolhead",))["toolhead"].get("print_time") or 0.0)
    client.upload(name, data)
    client.print_start(name)
    try:
        status, followed_by = follow_print(client, timeout_s)
    except TimeoutError:
        # A printer that cannot cancel (Klippy halted meanwhile) must not hide the timeout.
        with contextlib.suppress(MoonrakerError):
            client.print_cancel()
        raise
    stats, sdcard = status.get("print_stats", {}), status.get("virtual_sdcard", {})
    state, message = str(stats.get("state")), str(stats.get("message") or "").strip()
    webhooks, position = status.get("webhooks", {}), int(sdcard.get("file_position") or 0)
    stop_line, executed = None, data
    halted = webhooks.get("state") in HALTED_KLIPPY_STATES
    if halted or state == "error":
        # file_position is an offset into the file Klipper ran: the stored one, which a printer with
        # enable_object_processing rewrote on upload (the line numbers are then that file's).
        data = _stored(client, name, data)
    if halted:
        # Klippy halted (M112, an MCU error): print_stats still says paused; the reason is Klippy's own, its
        # first paragraph (the rest is advice on FIRMWARE_RESTART). The halting line ran to its end, so
        # file_position is past it: the stop line is the last one before that offset.
        state = "error"
        message = str(webhooks.get("state_message") or "").strip().split("\n\n")[0] or \
            f"Klippy {webhooks.get('state')}"
        executed = data[:position]
        stop_line = data[:max(position - 1, 0)].count(b"\n") + 1
    elif state == "error":
        # A refused line never ran: file_position is its first byte.
        executed = data[:position]
        stop_line = executed.count(b"\n") + 1
    report = Simulator(printer, material).run(executed, name=name)
    return _merge(report, status, state, message, stop_line, followed_by, planned_before_s)


def _stored(client: MoonrakerClient, name: str, uploaded: bytes) -> bytes:
    """The file as Moonraker stored it, or ``uploaded`` where it cannot be read back."""
    try:
        return client.download(name)
    except MoonrakerError:
        return uploaded


def _merge(report: PrintReport, status: dict[str, Any], state: str, message: str, stop_line: int | None,
           followed_by: str, planned_before_s: float) -> PrintReport:
    sources = {name: EMBEDDED for name in report.to_dict() if name not in {"backend", "sources"}}
    sources.update(dict.fromkeys(("success", "failures", "stopped_at_line", "final_state", "print_time_s"),
                                 MOONRAKER))
    embedded_time_s = report.print_time_s
    kept = [replace(f, source=EMBEDDED) for f in report.failures if f.mode in FILE_MCU_BLIND_MODES or not f.fatal]
    if stop_line is not None:
        first_line = message.splitlines()[0] if message else "print error"
        layer = max((m.index for m in report.layers if m.first_line <= stop_line), default=-1)
        kept.insert(0, Failure(classify_klipper_message(first_line) or OTHER, first_line, stop_line, layer,
                               fatal=True, source=MOONRAKER))
    elif state != "complete":
        kept.insert(0, Failure(OTHER, f"print {state}: {message or 'no message'}", 0, fatal=True,
                               source=MOONRAKER))
    report.failures = kept
    # The embedded simulator's rule, as the klipper-batch backend has it: a print succeeds with no failure at all.
    report.success = state == "complete" and not kept
    report.stopped_at_line = stop_line if stop_line is not None else next(
        (f.line for f in kept if f.fatal), None)
    stats, toolhead = status.get("print_stats", {}), status.get("toolhead", {})
    clocked = float(toolhead.get("estimated_print_time") or 0.0) > 0
    report.print_time_s = float(stats.get("print_duration") or 0.0) if clocked else max(
        0.0, float(toolhead.get("print_time") or 0.0) - planned_before_s)
    # print_stats counts filament on a timer while printing: on a file MCU the print is over before it counts.
    if clocked and float(stats.get("filament_used") or 0.0) > 0:
        report.filament_mm, sources["filament_mm"] = float(stats["filament_used"]), MOONRAKER
    extruder, bed = status.get("extruder", {}), status.get("heater_bed", {})
    report.final_state = {
        "backend": MOONRAKER, "followed_by": followed_by, "print_state": state, "message": message,
        "mcu_clocked": clocked, "embedded_print_time_s": embedded_time_s,
        "position_mm": list(toolhead.get("position") or []), "homed_axes": toolhead.get("homed_axes", ""),
        "hotend_c": extruder.get("temperature"), "hotend_target_c": extruder.get("target"),
        "bed_c": bed.get("temperature"), "bed_target_c": bed.get("target"),
        "embedded_final_state": report.final_state,
    }
    report.backend, report.sources = MOONRAKER, sources
    return report


def _program(program: str | os.PathLike[str] | bytes, filename: str | None) -> tuple[bytes, str]:
    """The program's bytes and its upload name, by the path-or-text rule of every backend
    (:func:`sim_bridge.gcode.program_source`; a missing file is an error naming it); text is uploaded
    under a name from its hash."""
    data, name = program_source(program, filename)
    if program_path(program) is None and filename is None:
        name = f"layerloop-{hashlib.sha256(data).hexdigest()[:12]}.gcode"
    return data, name
