"""The import itself: every source read and joined, then the ``real_world`` dataset written (the ``programs``
rows, the quarantine, ``report.json``, the card and the manifest)."""

from __future__ import annotations

import hashlib
import json
import json.scanner
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim_bridge.failures import FATAL_MODES
from sim_bridge.moonraker import HISTORY_STATUSES, HistoryJob
from training import datafmt
from training.import_real.feedback import read_feedback
from training.import_real.gcode_files import analyse_gcode, gcode_files, normalised_text
from training.import_real.history import read_history
from training.import_real.join import join_feedback, join_history, join_logs
from training.import_real.klippy_log import read_klippy_logs
from training.import_real.records import Program, Quarantine, Reject, UsageError

RECORDS_PER_SHARD = 200
"""Programs per table shard (the G-code text is read again, shard by shard, when the table is written)."""


def program_row(program: Program, text: str, printer: str) -> dict[str, Any]:
    """The ``programs`` row of one imported file (labels: feedback > history > Klipper log)."""
    notes = list(program.notes)
    outcome, success = "unknown", None
    latest = program.jobs[-1] if program.jobs else None
    failures: list[dict[str, Any]] = []
    print_time_s, filament_mm = program.estimate_time_s, program.estimate_filament_mm
    measured = False
    if latest is not None:
        outcome, success = HISTORY_STATUSES[latest.status]
        failures = list(program.log_failures.get(latest.job_id, []))
        notes.append(f"history: job {latest.job_id} {latest.status}"
                     + (f" (latest of {len(program.jobs)} jobs)" if len(program.jobs) > 1 else ""))
        notes.extend(program.log_notes.get(latest.job_id, []))
        if latest.status == "completed" and latest.print_duration is not None:
            print_time_s, measured = latest.print_duration, True
            if latest.filament_used is not None:
                filament_mm = latest.filament_used
    elif program.log_failures.get(""):
        failures = list(program.log_failures[""])
        outcome, success = "error", False
        notes.extend(program.log_notes[""])
    if measured:
        notes.append(f"print_time_s, filament_mm: Moonraker job {latest.job_id if latest else ''}")
    elif print_time_s is not None or filament_mm is not None:
        notes.append("print_time_s, filament_mm: slicer estimate comments")
    if program.feedback is not None:
        fb = program.feedback
        fb_success = fb.outcome == "success"
        if success is not None and success != fb_success:
            notes.append(f"feedback overrides automatic label (success={success})")
        success = fb_success
        if fb.mode:
            message = fb.text if not fb.note else f"{fb.text}: {fb.note}"
            failures.insert(0, {"mode": fb.mode, "message": f"user feedback: {message}", "line": -1,
                                "layer": -1, "fatal": fb.mode in FATAL_MODES, "count": 1})
        notes.append(f"feedback: {fb.outcome}" + (f" ({fb.mode})" if fb.mode else "") + f", line {fb.line}")
    if program.layer_lines:
        layer_count: int | None = len(program.layer_lines)
    else:
        layer_count = None
        notes.append("layer_count: no layer markers")
    job = dict(program.facts)
    if program.jobs:
        job["history"] = [{**j.as_dict(), "failures": [f["mode"] for f in program.log_failures.get(j.job_id, [])]}
                          for j in program.jobs]
    if program.feedback is not None:
        job["feedback"] = {"outcome": program.feedback.outcome, "failure_mode": program.feedback.text,
                           "note": program.feedback.note}
    return {
        "record_id": program.record_id, "job_id": program.record_id, "part_id": part_id(program.path),
        "source": program.source, "defect": "", "gcode": text,
        "job": json.dumps(job, sort_keys=True, separators=(",", ":")), "printer": printer,
        "success": success, "failures": failures, "print_time_s": print_time_s, "motion_s": None,
        "heating_s": None, "filament_mm": filament_mm, "layer_count": layer_count, "image": "",
        "outcome": outcome, "note": "; ".join(notes),
    }


def part_id(path: Path) -> str:
    """The file's stem, lower case, runs of other characters than letters and digits turned into ``_``.

    >>> part_id(Path("19_PrusaSlicer 2.6-minicube.gcode"))
    '19_prusaslicer_2_6_minicube'
    """
    return re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "part"


# ---------------------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did: records written, quarantined inputs by kind, the report written to disk."""

    records: int
    quarantined: dict[str, int]
    report: dict[str, Any]


def _check_out(out: Path) -> bool:
    """Whether ``out`` holds an earlier real-world import to replace; refuses any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    try:
        manifest = datafmt.read_manifest(out)
    except datafmt.DatasetError:
        raise UsageError(f"--out {out}: the folder is not empty and holds no layerloop dataset; "
                         "choose a new or empty folder") from None
    if manifest.kind != "real_world":
        raise UsageError(f"--out {out}: holds a '{manifest.kind}' dataset; choose another folder "
                         "(only a real_world dataset is replaced)")
    return True


def _clear_out(out: Path) -> None:
    for sub in ("tables", "images", "gcode", "quarantine"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("manifest.json", "README.md", "report.json"):
        (out / name).unlink(missing_ok=True)


def _input_entry(path: Path, role: str, sha256: str | None = None) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        digest = sha256 or datafmt.sha256_file(path)
    except OSError as exc:
        return {"role": role, "path": str(path), "sha256": None, "bytes": None, "error": exc.strerror}
    return {"role": role, "path": str(path), "sha256": digest, "bytes": size}


def run_import(gcode: Sequence[str | Path], out: str | Path, history: str | Path | None = None,
               klippy_logs: Sequence[str | Path] = (), feedback: str | Path | None = None,
               printer: str = "") -> ImportResult:
    """Import G-code files with their outcomes into the dataset folder ``out`` (see the module docstring).

    Raises :class:`UsageError` for a missing input or a history/CSV file that cannot be read at all.
    """
    out = Path(out)
    files = gcode_files(gcode)
    for role, item in (("moonraker-history", history), ("feedback", feedback),
                       *(("klippy-log", log) for log in klippy_logs)):
        if item is not None and not Path(item).is_file():
            raise UsageError(f"--{role} {item}: no such file")
    replace = _check_out(out)
    quarantine = Quarantine()
    programs: list[Program] = []
    seen: dict[str, Program] = {}
    digests: dict[Path, str] = {}
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            quarantine.add_file(path, None, f"unreadable: {exc.strerror}", None)
            continue
        digest = digests[path] = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            quarantine.add_file(path, digest, f"duplicate: same bytes as {seen[digest].path} "
                                f"(record {digest[:16]})", None)
            continue
        try:
            program = analyse_gcode(path, raw)
        except Reject as exc:
            quarantine.add_file(path, digest, exc.reason, exc.line)
            continue
        seen[digest] = program
        programs.append(program)
    jobs: list[HistoryJob] = []
    history_rows = 0
    warnings: list[str] = []
    if history is not None:
        jobs = read_history(Path(history), quarantine)
        history_rows = len(jobs) + quarantine.count("history")
        join_history(jobs, programs, quarantine, Path(history))
    log_report: dict[str, Any] = {}
    if klippy_logs:
        segments, outside, log_warnings = read_klippy_logs([Path(p) for p in klippy_logs])
        warnings.extend(log_warnings)
        log_report = join_logs(segments, outside, programs, jobs, quarantine)
    feedback_rows = 0
    if feedback is not None:
        rows_read = read_feedback(Path(feedback), quarantine)
        feedback_rows = len(rows_read) + quarantine.count("feedback")
        warnings.extend(join_feedback(rows_read, programs, quarantine, Path(feedback)))

    if replace:
        _clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    datafmt.remove_partial_files(out)
    rows_sources: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    labelled = {"history": 0, "klippy_log": 0, "feedback": 0}
    for shard, start in enumerate(range(0, max(len(programs), 1), RECORDS_PER_SHARD)):
        rows = []
        for program in programs[start:start + RECORDS_PER_SHARD]:
            raw = program.path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != program.raw_sha256:
                raise UsageError(f"{program.path}: changed while it was being imported; run the import again")
            text = normalised_text(raw, str(program.path))
            row = program_row(program, text, printer or str(program.facts.get("printer_model", "")))
            rows.append(row)
            rows_sources[row["source"]] = rows_sources.get(row["source"], 0) + 1
            outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
            labelled["history"] += bool(program.jobs)
            labelled["klippy_log"] += any(program.log_failures.values())
            labelled["feedback"] += program.feedback is not None
        datafmt.write_table(out, "programs", shard, rows)
    for copy, source in sorted(quarantine.files.items()):
        datafmt.write_bytes(out / copy, source.read_bytes())
    reasons = "".join(json.dumps(e, sort_keys=True) + "\n" for e in quarantine.entries)
    datafmt.write_bytes(out / "quarantine" / "reasons.jsonl", reasons.encode())
    quarantined = {kind: quarantine.count(kind) for kind in ("gcode", "history", "feedback")}
    report = {
        "inputs": {"gcode_files": len(files), "history_jobs": history_rows, "feedback_rows": feedback_rows,
                   "klippy_logs": len(klippy_logs)},
        "records": len(programs), "quarantined": quarantined, "sources": dict(sorted(rows_sources.items())),
        "outcomes": dict(sorted(outcomes.items())), "labelled": labelled, "klippy_log": log_report,
        "warnings": warnings,
    }
    datafmt.write_bytes(out / "report.json", (json.dumps(report, indent=1, sort_keys=True) + "\n").encode())
    inputs = [_input_entry(p, "gcode", digests.get(p)) for p in files]
    if history is not None:
        inputs.append(_input_entry(Path(history), "moonraker-history"))
    inputs.extend(_input_entry(Path(p), "klippy-log") for p in klippy_logs)
    if feedback is not None:
        inputs.append(_input_entry(Path(feedback), "feedback"))
    generator = {"tool": "training.import_real", "printer": printer, "inputs": inputs}
    _write_card(out, report)
    datafmt.write_manifest(out, out.resolve().name, "real_world", generator, None)
    return ImportResult(records=len(programs), quarantined=quarantined, report=report)


def _write_card(out: Path, report: dict[str, Any]) -> None:
    quarantined = report["quarantined"]
    log = report["klippy_log"]
    datafmt.write_card(out, f"Real-world prints: {out.resolve().name}", [
        "Real G-code files with outcomes from Moonraker job history, Klipper logs and user feedback, made by "
        "`python -m training.import_real` (the inputs and their SHA-256 are in `manifest.json`).",
        "",
        f"- records (`programs` table): {report['records']} of {report['inputs']['gcode_files']} G-code files",
        f"- slicers: {', '.join(f'{k} {v}' for k, v in report['sources'].items()) or 'none'}",
        f"- outcomes: {', '.join(f'{k} {v}' for k, v in report['outcomes'].items()) or 'none'}",
        f"- labelled by history {report['labelled']['history']}, by Klipper log "
        f"{report['labelled']['klippy_log']}, by user feedback {report['labelled']['feedback']}",
        f"- quarantined (see `quarantine/reasons.jsonl`): G-code files {quarantined['gcode']}, history jobs "
        f"{quarantined['history']}, feedback rows {quarantined['feedback']}",
        f"- Klipper log errors not matched to a file: {len(log.get('unmatched', []))} (see `report.json`)",
        "",
        "Labels: user feedback wins over Moonraker history, which wins over the Klipper log; each record's "
        "`note` says which sources labelled it. `success` is null where nothing is known.",
        "",
        "Licence: user data. The G-code files keep their authors' rights and the history, logs and feedback "
        "belong to the person who printed them; do not publish this dataset without their consent.",
    ])
