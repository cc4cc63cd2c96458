"""The ``prunt`` simulation backend: a program run on a Prunt (Prunt3D) motion controller, or on
``prunt_simulator``, and what Prunt said mapped onto a :class:`~sim_bridge.report.PrintReport`.

It talks to Prunt only through :class:`~sim_bridge.prunt.PruntClient` and :func:`~sim_bridge.prunt.run_to_end`.
From Prunt: whether the file ran to its end, its first error (Prunt's message from its log, its mode by
:func:`~sim_bridge.failures.classify_prunt_error`, and the line number the log names), the run's time on
Prunt's clock and the final position. Prunt ends a file at its first refused line and skips the rest, yet its
status says ``<NO FILE> (finished uploads/NAME)`` as after a clean run: only the log tells them apart, so the
backend reads the log over the websocket and records the skipped lines as a notice. From the embedded
simulator, run on the lines Prunt executed: what Prunt cannot tell (layers, deposition, filament, the time
breakdown), and the fatal failures the recorded Prunt never reports
(:data:`~sim_bridge.failures.PRUNT_BLIND_MODES`: no heater or temperature checks, no extrusion limits).
``report.backend`` is ``prunt`` and ``report.sources`` names the source of each field.

This backend moves a machine: it is not one of :data:`sim_bridge.backends.OFFLINE_BACKENDS`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import replace

from sim_bridge.failures import FIRMWARE_SHUTDOWN, OTHER, PRUNT_BLIND_MODES, STOPPED, classify_prunt_error
from sim_bridge.gcode import program_path, program_source
from sim_bridge.profiles import PrinterProfile
from sim_bridge.prunt import PruntClient, PruntLogError, PruntRun, parse_log_error, run_to_end
from sim_bridge.report import EMBEDDED, PRUNT, Failure, Notice, PrintReport
from sim_bridge.simulator import Simulator

BACKEND_TIMEOUT_S = 600.0
"""How long a file may run on Prunt before the backend gives up."""
PRUNT_FIELDS = ("success", "failures", "stopped_at_line", "final_state", "print_time_s")
"""The report fields Prunt decides; the others are the embedded simulator's."""


def simulate_via_prunt(program: str | os.PathLike[str] | bytes, printer: PrinterProfile | str, url: str,
                       timeout_s: float = BACKEND_TIMEOUT_S, material: str = "PLA",
                       filename: str | None = None) -> PrintReport:
    """Run ``program`` (a path, G-code text or bytes) on the Prunt at ``url``; ``printer`` is the profile the
    embedded simulator uses for what Prunt cannot tell (it should describe that machine).

    ``print_time_s`` is the run's wall time on Prunt's own clock (its status ``Time``), from just before
    ``run-file`` to the first status that says the file finished, to :data:`~sim_bridge.prunt.POLL_INTERVAL_S`:
    Prunt reports no print time of its own, and on a Prunt board the step generator runs in real time, so
    this is the print time, dwells and heater waits included. ``prunt_simulator`` is not paced (in the
    recording its 10 mm/s move advanced 96 mm in 1.4 s of wall time): there it is only the run's duration,
    and the embedded estimate is ``final_state["embedded_print_time_s"]``.

    Prunt's refusals (an HTTP error, no answer, a busy Prunt, a dead G-code task before the run) raise
    :class:`~sim_bridge.prunt.PruntError`; a file still running after ``timeout_s`` (``M109`` on
    ``prunt_simulator`` waits forever) raises :class:`~sim_bridge.prunt.PrintTimeout`.
    """
    data, name = _program(program, filename)
    run = run_to_end(PruntClient(url), name, data, timeout_s)
    if run.followed_by != "websocket":
        warnings.warn(f"Prunt's log could not be read ({run.log_problem}): errors in the file are not seen, "
                      "and the report's verdict rests on its status alone", RuntimeWarning, stacklevel=2)
    error = _first_error(run)
    stop_line = error.line if error is not None and error.line else None
    if stop_line is None and error is not None and error.fatal and run.last_line:
        # A dead task's message names no line: the last one the handler read is the best there is.
        stop_line = run.last_line
    executed = data[:_line_offset(data, stop_line)] if stop_line is not None else data
    report = Simulator(printer, material).run(executed, name=name)
    return _merge(report, run, error, stop_line, _line_count(data))


def _first_error(run: PruntRun) -> PruntLogError | None:
    """The first error of this file (or the fatal one) in Prunt's log, or from a dead task's status."""
    error = next((e for e in run.errors if e.file == run.name or e.fatal), None)
    if error is None and run.status.fatal_error:
        error = parse_log_error(run.status.fatal_error) or PruntLogError(
            run.status.fatal_error.split("\n", 1)[0], run.status.fatal_error.split("\n", 1)[0], "", fatal=True)
    return error


def _merge(report: PrintReport, run: PruntRun, error: PruntLogError | None, stop_line: int | None,
           lines: int) -> PrintReport:
    sources = {name: EMBEDDED for name in report.to_dict() if name not in {"backend", "sources"}}
    sources.update(dict.fromkeys(PRUNT_FIELDS, PRUNT))
    embedded_time_s = report.print_time_s
    kept = [replace(f, source=EMBEDDED) for f in report.failures if f.mode in PRUNT_BLIND_MODES or not f.fatal]
    if error is not None:
        mode = classify_prunt_error(error.exception, error.error) or (FIRMWARE_SHUTDOWN if error.fatal else OTHER)
        line = stop_line or 0
        layer = max((m.index for m in report.layers if m.first_line <= line), default=-1)
        kept.insert(0, Failure(mode, error.message, line, layer, fatal=True, source=PRUNT))
        if stop_line is not None and stop_line < lines and not error.fatal:
            skipped = f"line {lines}" if stop_line + 1 == lines else f"lines {stop_line + 1}-{lines}"
            report.notices.append(Notice(
                STOPPED, f"Prunt skipped {skipped} after the error on line {stop_line}, although its status "
                f"says {run.status.file_name!r}", stop_line, source=PRUNT))
    report.failures = kept
    # As in the other backends: a print succeeds with no failure at all.
    report.success = error is None and not kept
    report.stopped_at_line = stop_line if stop_line is not None else next((f.line for f in kept if f.fatal), None)
    report.print_time_s = run.wall_time_s
    status = run.status
    report.final_state = {
        "backend": PRUNT, "followed_by": run.followed_by, "file": f"uploads/{run.name}",
        "file_status": status.file_name, "file_line": status.file_line,
        "position_mm": list(status.position_mm), "paused": status.paused,
        "temperatures_c": dict(status.temperatures_c), "heater_powers": dict(status.heater_powers),
        "fatal_error": status.fatal_error, "log_errors": [e.message for e in run.errors],
        "log_problem": run.log_problem, "wall_time_s": run.wall_time_s,
        "embedded_print_time_s": embedded_time_s, "embedded_final_state": report.final_state,
    }
    report.backend, report.sources = PRUNT, sources
    return report


def _line_offset(data: bytes, line: int) -> int:
    """The byte offset where 1-based ``line`` starts (Prunt counts ``\\n``-separated lines)."""
    offset = 0
    for _ in range(line - 1):
        offset = data.find(b"\n", offset) + 1
        if offset == 0:
            return len(data)
    return offset


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def _program(program: str | os.PathLike[str] | bytes, filename: str | None) -> tuple[bytes, str]:
    """The program's bytes and its upload name, by the path-or-text rule of every backend
    (:func:`sim_bridge.gcode.program_source`); text is uploaded under a name from its hash."""
    data, name = program_source(program, filename)
    if program_path(program) is None and filename is None:
        name = f"layerloop-{hashlib.sha256(data).hexdigest()[:12]}.gcode"
    return data, name
