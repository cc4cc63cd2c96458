"""Import real prints into a ``real_world`` dataset: ``python -m training.import_real``.

``python -m training.import_real --gcode DIR_OR_FILE … [--moonraker-history history.json]
[--klippy-log klippy.log …] [--feedback labels.csv] --out DIR [--printer NAME]``

One ``programs`` row per G-code file (a folder gives its ``*.gcode`` files, sorted by name). Each file is
read with the project's G-code reader, its line endings normalised to LF, its slicer detected from its header
comments, its layer markers counted, and the slicer's own time and filament estimates read. Outcomes come
from three sources, joined by file name (the base name, as Moonraker stores paths under its ``gcodes`` root):

* **Moonraker job history** — a saved history response (:data:`sim_bridge.moonraker.HISTORY_LIST`, over
  HTTP or JSON-RPC; parsed by :mod:`sim_bridge.moonraker`): each file's latest job (by ``end_time``) gives
  ``outcome`` and, when it completed, the measured ``print_time_s`` and ``filament_mm``; every job of the
  file is listed in ``job``.
* **Klipper logs** (``klippy.log``, rotated files oldest first) — the errors that ended an SD-card print
  ("Move out of range", "Must home axis first", "Extrude below minimum temp", heater and MCU shutdowns …),
  mapped to failure modes, with the G-code line Klipper stopped at. A log error is matched to a file by time
  (the history job running when it happened) or, failing that, by content (the file excerpt Klipper logs at
  a shutdown). Unmatched errors stay in ``report.json``.
* **User feedback** — a CSV ``file,outcome,failure_mode,note``; it wins over the automatic labels.

Nothing is silently dropped: a G-code file that cannot be read (binary data, an over-long line), is empty,
has no motion, is truncated (see :func:`truncation`) or duplicates another is copied to ``quarantine/files/``;
it, and a history or feedback row that is malformed or names a file not imported, gets a line (with the
reason, and the row itself) in ``quarantine/reasons.jsonl``. The output is checked by
:func:`training.datafmt.verify`; the same inputs give byte-identical shards. See ``docs/data.md``
("Real-world import").

The package, one module per source: :mod:`~training.import_real.gcode_files` (reading, normalising, slicer
detection, estimates), :mod:`~training.import_real.history` (Moonraker history),
:mod:`~training.import_real.klippy_log` (Klipper logs), :mod:`~training.import_real.feedback` (the feedback
CSV), then :mod:`~training.import_real.join` (attaching labels to programs),
:mod:`~training.import_real.dataset` (rows and the dataset written; :func:`run_import`) and
:mod:`~training.import_real.cli`; :mod:`~training.import_real.records` holds what they share.
"""


from training.import_real.cli import main
from training.import_real.dataset import ImportResult, part_id, program_row, run_import
from training.import_real.feedback import FEEDBACK_COLUMNS, normalise_failure_mode, read_feedback
from training.import_real.gcode_files import (
    SOURCES,
    analyse_gcode,
    detect_slicer,
    gcode_files,
    normalised_lines,
    normalised_text,
    parse_duration_s,
    truncation,
)
from training.import_real.history import read_history
from training.import_real.join import join_feedback, join_history, join_logs
from training.import_real.klippy_log import LogEvent, LogSegment, read_klippy_logs
from training.import_real.records import Feedback, Program, Quarantine, Reject, UsageError

__all__ = [
    "FEEDBACK_COLUMNS", "SOURCES", "Feedback", "ImportResult", "LogEvent", "LogSegment", "Program", "Quarantine",
    "Reject", "UsageError", "analyse_gcode", "detect_slicer", "gcode_files", "join_feedback", "join_history",
    "join_logs", "main", "normalise_failure_mode", "normalised_lines", "normalised_text", "parse_duration_s",
    "part_id", "program_row", "read_feedback", "read_history", "read_klippy_logs", "run_import", "truncation",
]
