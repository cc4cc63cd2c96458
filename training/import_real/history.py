"""Moonraker job history: a saved history response read with the line of each job, for the quarantine's
messages; the jobs themselves are checked by :mod:`sim_bridge.moonraker`."""

from __future__ import annotations

import json
import json.scanner
from pathlib import Path
from typing import Any

from sim_bridge.moonraker import HISTORY_LIST, HistoryJob, history_jobs, parse_history_job
from training.import_real.records import Quarantine, UsageError


def _json_with_lines(path: Path) -> tuple[Any, dict[int, int]]:
    """Parse a JSON file and note the line on which each object starts (by ``id``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}); expected the JSON of "
                         f"{HISTORY_LIST.http_method} {HISTORY_LIST.path}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    starts: dict[int, int] = {}
    decoder = json.JSONDecoder()
    plain = decoder.parse_object

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[Any, int]:
        obj, end = plain(s_and_end, *args)
        starts[id(obj)] = s_and_end[1] - 1
        return obj, end

    decoder.parse_object = parse_object  # type: ignore[method-assign]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        data = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply to be a Moonraker history response") from None
    lines = {key: text.count("\n", 0, offset) + 1 for key, offset in starts.items()}
    return data, lines


def read_history(path: Path, quarantine: Quarantine) -> list[HistoryJob]:
    """The jobs of a saved Moonraker history response; malformed entries go to quarantine."""
    data, lines = _json_with_lines(path)
    try:
        jobs = history_jobs(data)
    except ValueError as exc:
        raise UsageError(f"{path}:1: {exc}") from None
    out = []
    for index, job in enumerate(jobs):
        line = lines.get(id(job))
        try:
            entry = parse_history_job(job, index, line or 0)
        except ValueError as exc:
            quarantine.add_row("history", path, job, f"malformed job: {exc}", line)
            continue
        out.append(entry)
    return out
