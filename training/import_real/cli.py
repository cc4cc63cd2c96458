"""The command line: ``python -m training.import_real --gcode … --out DIR`` (see :mod:`training.import_real`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim_bridge.moonraker import HISTORY_LIST
from training.import_real.dataset import run_import
from training.import_real.gcode_files import GCODE_SUFFIX
from training.import_real.records import UsageError

DESCRIPTION = "Import real prints into a ``real_world`` dataset: ``python -m training.import_real``."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.import_real", description=DESCRIPTION)
    parser.add_argument("--gcode", nargs="+", action="extend", required=True, metavar="PATH",
                        help=f"G-code files, or folders (all *{GCODE_SUFFIX} in each, sorted)")
    parser.add_argument("--moonraker-history", metavar="JSON", help=f"saved {HISTORY_LIST.http_method} {HISTORY_LIST.path} response")
    parser.add_argument("--klippy-log", nargs="+", action="extend", default=[], metavar="LOG",
                        help="klippy.log files, rotated ones oldest first")
    parser.add_argument("--feedback", metavar="CSV", help="user labels: file,outcome,failure_mode,note")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--printer", default="", metavar="NAME",
                        help="printer column for every record (default: the slicer's printer_model)")
    args = parser.parse_args(argv)
    try:
        result = run_import(args.gcode, args.out, args.moonraker_history, args.klippy_log, args.feedback,
                            args.printer)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = result.report
    q = result.quarantined
    print(f"{args.out}: {result.records} records from {report['inputs']['gcode_files']} G-code files; "
          f"quarantined: G-code {q['gcode']}, history jobs {q['history']}, feedback rows {q['feedback']} "
          f"(reasons in {Path(args.out) / 'quarantine' / 'reasons.jsonl'})")
    labelled = report["labelled"]
    unmatched = len(report["klippy_log"].get("unmatched", []))
    print(f"labels: history {labelled['history']}, klippy.log {labelled['klippy_log']}, feedback "
          f"{labelled['feedback']}; Klipper errors not matched to a file: {unmatched} (see report.json)")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
