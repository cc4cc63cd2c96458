"""Klipper logs (``klippy.log``): print runs from "Starting SD card print" to "Exiting SD card print", the
errors that ended them with their times, and the file excerpt Klipper logs at a shutdown."""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim_bridge.failures import classify_klipper_message, klipper_error_text
from training.import_real.records import UsageError

_START_RE = re.compile(r"^Start printer at .*\((\d+(?:\.\d*)?) (\d+(?:\.\d*)?)\)\s*$")
_STATS_RE = re.compile(r"^Stats (\d+(?:\.\d*)?):")
_TIMEOUT_RE = re.compile(r"^Timeout with MCU '[^']*' \(eventtime=(\d+(?:\.\d*)?)\)")
_SD_START_RE = re.compile(r"^Starting SD card print \(position (\d+)\)")
_SD_EXIT_RE = re.compile(r"^Exiting SD card print \(position (\d+)\)")
_SD_FINISHED = "Finished SD card print"
_DUMP_RE = re.compile(r"^Virtual sdcard \((\d+)\): (.*)$")
_UPCOMING_RE = re.compile(r"^Upcoming \((\d+)\): (.*)$")


@dataclass
class LogEvent:
    """A Klipper error: its failure mode, message and where in which log; unix time when known."""

    mode: str
    message: str
    log: str
    line: int
    time_unix: float | None


@dataclass
class LogSegment:
    """One SD-card print run in a log: from "Starting SD card print" to "Exiting SD card print"."""

    log: str
    start_line: int
    exit_position: int | None = None
    finished: bool = False
    events: list[LogEvent] = field(default_factory=list)
    dump: tuple[int, bytes, int, bytes] | None = None

    @property
    def time_unix(self) -> float | None:
        return next((e.time_unix for e in self.events if e.time_unix is not None), None)


def _repr_bytes(text: str) -> bytes | None:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return value if isinstance(value, bytes) else None


def read_klippy_logs(paths: Sequence[Path]) -> tuple[list[LogSegment], list[LogEvent], list[str]]:
    """Print runs with their errors, errors outside any print, and warnings, from logs given oldest first.

    Times come from "Start printer at DATE (UNIX MONOTONIC)" and the monotonic times of the ``Stats`` and
    ``Timeout`` lines of the same print run (the last one before the error, else the next one). The time base and an open print run carry over into the next file: a rotated log
    continues the same Klipper run.
    """
    segments: list[LogSegment] = []
    outside: list[LogEvent] = []
    warnings: list[str] = []
    base: tuple[float, float] | None = None
    eventtime: float | None = None
    current: LogSegment | None = None
    last: LogSegment | None = None
    untimed: list[LogEvent] = []

    def unix_time() -> float | None:
        if base is None or eventtime is None:
            return None
        return round(base[0] + eventtime - base[1], 3)

    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise UsageError(f"--klippy-log {path}: cannot read: {exc.strerror}") from None
        recognised = 0
        pending_dump: tuple[int, bytes] | None = None
        for no, line in enumerate(text.split("\n"), 1):
            line = line.rstrip()
            if match := _START_RE.match(line):
                base, eventtime, recognised = (float(match.group(1)), float(match.group(2))), None, recognised + 1
                current = last = None
                untimed.clear()
            elif match := _STATS_RE.match(line) or _TIMEOUT_RE.match(line):
                eventtime = float(match.group(1))
                recognised += 1
                for event in untimed:
                    event.time_unix = unix_time()
                untimed.clear()
            elif match := _SD_START_RE.match(line):
                current = LogSegment(str(path), no)
                segments.append(current)
                recognised += 1
                eventtime = None  # an idle printer logs no Stats: the last one may be hours old
                untimed.clear()
            elif line == _SD_FINISHED and current is not None:
                current.finished = True
            elif match := _SD_EXIT_RE.match(line):
                if current is not None:
                    current.exit_position = int(match.group(1))
                last, current = current, None
                recognised += 1
            elif match := _DUMP_RE.match(line):
                data = _repr_bytes(match.group(2))
                pending_dump = (int(match.group(1)), data) if data is not None else None
                if data is None:
                    warnings.append(f"{path}:{no}: virtual sdcard excerpt is not a Python string literal; "
                                    "not used to match a file")
            elif (match := _UPCOMING_RE.match(line)) and pending_dump is not None:
                data = _repr_bytes(match.group(2))
                owner = current or last
                if data is not None and owner is not None and owner.dump is None:
                    owner.dump = (pending_dump[0], pending_dump[1], int(match.group(1)), data)
                pending_dump = None
            else:
                mode = classify_klipper_message(line)
                if mode is None:
                    continue
                event = LogEvent(mode, klipper_error_text(line)[0], str(path), no, unix_time())
                if event.time_unix is None and base is not None:
                    untimed.append(event)  # timed by the next Stats line of this run (a second later at most)
                (current.events if current is not None else outside).append(event)
        if not recognised:
            warnings.append(f"{path}: no Klipper log lines found (no 'Start printer at', 'Stats', or "
                            "'SD card print' lines); is this a klippy.log?")
    return segments, outside, warnings
