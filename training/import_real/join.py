"""Joining the sources: history jobs, Klipper-log print runs and feedback rows attached to the imported
program they name (by base name), or matched by time or content; what matches nothing goes to quarantine
or the log report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim_bridge.moonraker import HistoryJob
from training.import_real.gcode_files import line_at
from training.import_real.klippy_log import LogEvent, LogSegment
from training.import_real.records import Feedback, Program, Quarantine

LOG_TIME_SLACK_S = 5.0
"""Slack when a log error's time is matched to a history job: Klipper logs ``Stats`` once a second and
Moonraker stamps ``end_time`` after Klipper reports the end."""
DUMP_MIN_BYTES = 32
"""Shortest file excerpt from a Klipper shutdown dump that may identify a file by content."""


def _by_name(programs: Sequence[Program]) -> dict[str, list[Program]]:
    names: dict[str, list[Program]] = {}
    for program in programs:
        names.setdefault(program.name, []).append(program)
    return names


def _quarantined_names(quarantine: Quarantine) -> dict[str, str]:
    return {Path(e["input"]).name: e["reason"] for e in quarantine.entries if e["kind"] == "gcode"}


def _missing_reason(name: str, rejected: dict[str, str]) -> str:
    if name in rejected:
        return f"names '{name}', whose G-code file was quarantined ({rejected[name]})"
    return f"names '{name}', which is not among the imported G-code files"


def join_history(jobs: Sequence[HistoryJob], programs: Sequence[Program], quarantine: Quarantine,
                 history_path: Path) -> None:
    """Attach each job to the program of the same base name; others go to quarantine."""
    names = _by_name(programs)
    rejected = _quarantined_names(quarantine)
    for job in jobs:
        name = Path(job.filename.replace("\\", "/")).name
        matches = names.get(name, [])
        if len(matches) == 1:
            matches[0].jobs.append(job)
            continue
        reason = (f"ambiguous: {len(matches)} imported files are named '{name}'" if matches
                  else _missing_reason(name, rejected))
        quarantine.add_row("history", history_path, job.as_dict(), reason, job.line)
    for program in programs:
        program.jobs.sort(key=lambda j: j.sort_key)


def _job_at(jobs: Sequence[HistoryJob], time_unix: float) -> HistoryJob | None:
    """The job running at ``time_unix`` (the latest started, when slack lets two overlap)."""
    ordered = sorted(jobs, key=lambda j: (j.start_time, j.job_id))
    best = None
    for index, job in enumerate(ordered):
        end = job.end_time
        if end is None:
            end = ordered[index + 1].start_time if index + 1 < len(ordered) else math.inf
        if job.start_time - LOG_TIME_SLACK_S <= time_unix <= end + LOG_TIME_SLACK_S:
            best = job
    return best


def _content_matches(segment: LogSegment, programs: Sequence[Program]) -> list[Program]:
    if segment.dump is None:
        return []
    read_at, before, position, upcoming = segment.dump
    if len(before) + len(upcoming) < DUMP_MIN_BYTES:
        return []
    found = []
    for program in programs:
        try:
            with program.path.open("rb") as fh:
                fh.seek(read_at)
                head = fh.read(len(before))
                fh.seek(position)
                tail = fh.read(len(upcoming))
        except OSError:
            continue
        if head == before and tail == upcoming:
            found.append(program)
    return found


def join_logs(segments: Sequence[LogSegment], outside: Sequence[LogEvent], programs: Sequence[Program],
              history: Sequence[HistoryJob], quarantine: Quarantine) -> dict[str, Any]:
    """Attach the errors of each print run to a program (by time, else by content); returns the log report."""
    names = _by_name(programs)
    rejected = _quarantined_names(quarantine)
    unmatched: list[dict[str, Any]] = []
    matched = 0
    for segment in segments:
        if not segment.events:
            continue
        target: Program | None = None
        job_id = ""
        how = ""
        reason = ""
        when = segment.time_unix
        job = _job_at(history, when) if history and when is not None else None
        if job is not None:
            name = Path(job.filename.replace("\\", "/")).name
            candidates = names.get(name, [])
            if len(candidates) == 1:
                target, job_id, how = candidates[0], job.job_id, f"time, history job {job.job_id}"
            else:
                reason = f"during history job {job.job_id}, which " + _missing_reason(name, rejected)
        if target is None and not reason:
            by_content = _content_matches(segment, programs)
            if len(by_content) == 1 and not by_content[0].jobs:
                target, how = by_content[0], "content of the shutdown excerpt"
            elif len(by_content) == 1:
                reason = (f"its excerpt matches '{by_content[0].name}', but no history job of that file "
                          f"covers the time {when}")
            elif by_content:
                reason = f"its excerpt matches {len(by_content)} files: {', '.join(p.name for p in by_content)}"
            elif segment.dump is None:
                reason = ("no Moonraker history to match its time, and the log holds no file excerpt"
                          if not history else "no history job covers its time, and the log holds no file excerpt"
                          if when is not None else "no time base ('Start printer at' line), and no file excerpt")
            else:
                reason = "its file excerpt matches no imported file"
        events = [{"mode": e.mode, "message": e.message, "log": e.log, "line": e.line, "time_unix": e.time_unix}
                  for e in segment.events]
        if target is None:
            unmatched.append({"events": events, "reason": reason})
            continue
        raw = target.path.read_bytes()
        failures = _merged_failures(segment, target, raw)
        target.log_failures.setdefault(job_id, []).extend(failures)
        where = ", ".join(f"{Path(e.log).name}:{e.line}" for e in segment.events[:2])
        target.log_notes.setdefault(job_id, []).append(
            f"klippy.log: {', '.join(f['mode'] for f in failures)} ({where}; matched by {how})")
        matched += 1
    return {
        "print_runs": len(segments),
        "finished": sum(1 for s in segments if s.finished),
        "with_errors": sum(1 for s in segments if s.events),
        "matched": matched,
        "unmatched": unmatched,
        "outside_prints": [{"mode": e.mode, "message": e.message, "log": e.log, "line": e.line,
                            "time_unix": e.time_unix} for e in outside],
    }


def join_feedback(rows: Sequence[Feedback], programs: Sequence[Program], quarantine: Quarantine,
                  feedback_path: Path) -> list[str]:
    """Attach each feedback row to its program (a later row for the same file wins); returns warnings."""
    names = _by_name(programs)
    rejected = _quarantined_names(quarantine)
    warnings = []
    for row in rows:
        matches = names.get(row.file, [])
        raw_row = {"file": row.file, "outcome": row.outcome, "failure_mode": row.text, "note": row.note}
        if len(matches) != 1:
            reason = (f"ambiguous: {len(matches)} imported files are named '{row.file}'" if matches
                      else _missing_reason(row.file, rejected))
            quarantine.add_row("feedback", feedback_path, raw_row, reason, row.line)
            continue
        program = matches[0]
        if program.feedback is not None:
            old = program.feedback
            quarantine.add_row("feedback", feedback_path, {"file": old.file, "outcome": old.outcome,
                                                           "failure_mode": old.text, "note": old.note},
                               f"superseded by line {row.line} for the same file", old.line)
        if row.mode == "other":
            warnings.append(f"{feedback_path}:{row.line}: failure_mode {row.text!r} is not in the documented "
                            "list; kept as mode 'other' with the text as message")
        program.feedback = row
    return warnings


def _merged_failures(segment: LogSegment, program: Program, raw: bytes | None) -> list[dict[str, Any]]:
    """One fatal failure per mode per print run, with the most detailed message and Klipper's stop line."""
    line = -1
    if raw is not None and segment.exit_position is not None and segment.exit_position <= len(raw):
        line = line_at(raw, segment.exit_position)
    merged: dict[str, dict[str, Any]] = {}
    for event in segment.events:
        known = merged.get(event.mode)
        if known is None:
            merged[event.mode] = {"mode": event.mode, "message": event.message, "line": line,
                                  "layer": program.layer_of(line), "fatal": True, "count": 1}
        elif len(event.message) > len(known["message"]):
            known["message"] = event.message
    return list(merged.values())
