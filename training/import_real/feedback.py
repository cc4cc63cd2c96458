"""User feedback: a CSV ``file,outcome,failure_mode,note`` of labels people gave their prints."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sim_bridge.failures import FEEDBACK_MODES, KNOWN_MODES
from training.import_real.records import Feedback, Quarantine, UsageError

FEEDBACK_COLUMNS = ("file", "outcome", "failure_mode", "note")


def normalise_failure_mode(text: str) -> str:
    """A failure mode for feedback wording (see :data:`FEEDBACK_MODES`); ``other`` when none fits.

    >>> normalise_failure_mode("Spaghetti"), normalise_failure_mode("layer-shift"), normalise_failure_mode("??")
    ('extrusion_in_mid_air', 'layer_shift', 'other')
    """
    key = " ".join(text.lower().replace("_", " ").replace("-", " ").split())
    if key.replace(" ", "_") in KNOWN_MODES:
        return key.replace(" ", "_")
    return FEEDBACK_MODES.get(key, "other")


def read_feedback(path: Path, quarantine: Quarantine) -> list[Feedback]:
    """Rows of a feedback CSV (header ``file,outcome,failure_mode,note``); bad rows go to quarantine."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--feedback {path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as exc:
        raise UsageError(f"{path}:1: cannot read the CSV header: {exc}") from None
    unknown = [h for h in header if h not in FEEDBACK_COLUMNS]
    if not header or "file" not in header or "outcome" not in header or unknown:
        raise UsageError(f"{path}:1: header {','.join(header) or '(empty)'!s}: expected "
                         f"{','.join(FEEDBACK_COLUMNS)} (failure_mode and note may be left out)")
    rows: list[Feedback] = []
    end = 1
    while True:
        start = end + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise UsageError(f"{path}:{reader.line_num}: cannot read the CSV: {exc}") from None
        end = reader.line_num
        if row is None:
            break
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            quarantine.add_row("feedback", path, row, f"malformed row: {len(row)} fields, the header has "
                               f"{len(header)} ({','.join(header)})", start)
            continue
        values = {h: cell.strip() for h, cell in zip(header, row, strict=True)}
        outcome = values["outcome"].lower()
        if not values["file"]:
            quarantine.add_row("feedback", path, row, "malformed row: the file column is empty", start)
            continue
        if outcome not in ("success", "failure"):
            quarantine.add_row("feedback", path, row, f"outcome {values['outcome']!r}: must be success or "
                               "failure", start)
            continue
        raw_mode = values.get("failure_mode", "")
        rows.append(Feedback(file=Path(values["file"].replace("\\", "/")).name, outcome=outcome,
                             mode=normalise_failure_mode(raw_mode) if raw_mode else "", text=raw_mode,
                             note=values.get("note", ""), line=start))
    return rows
