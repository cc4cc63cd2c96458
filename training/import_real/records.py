"""What the importer's sources share: the program record, user labels, the quarantine and the errors."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim_bridge.moonraker import HistoryJob


class UsageError(ValueError):
    """A command line that cannot run: a missing input, or a history/CSV file that cannot be read at all."""


@dataclass
class Feedback:
    """One user label: ``outcome`` is ``success`` or ``failure``; ``mode`` the normalised failure mode."""

    file: str
    outcome: str
    mode: str
    text: str
    note: str
    line: int


@dataclass
class Program:
    """One imported G-code file and what is known about it (the text is read again when written)."""

    path: Path
    raw_sha256: str
    source: str
    layer_lines: list[int]
    facts: dict[str, Any]
    estimate_time_s: float | None
    estimate_filament_mm: float | None
    notes: list[str] = field(default_factory=list)
    jobs: list[HistoryJob] = field(default_factory=list)
    log_failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log_notes: dict[str, list[str]] = field(default_factory=dict)
    feedback: Feedback | None = None

    @property
    def record_id(self) -> str:
        return self.raw_sha256[:16]

    @property
    def name(self) -> str:
        return self.path.name

    def layer_of(self, line: int) -> int:
        """Index of the layer holding ``line`` (−1 before the first marker or when unknown)."""
        return bisect.bisect_right(self.layer_lines, line) - 1 if line > 0 else -1


@dataclass
class Quarantine:
    """Rejected inputs: copies of files under ``quarantine/files/`` and one reason per line."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    """Copy (relative to the dataset folder) → the input it copies; copied when the dataset is written."""

    def add_file(self, path: Path, sha256: str | None, reason: str, line: int | None) -> None:
        """A rejected G-code file (``sha256`` ``None`` when it could not even be read, so is not copied)."""
        copy = None
        if sha256 is not None:
            copy = f"quarantine/files/{sha256[:16]}_{path.name}"
            self.files[copy] = path
        self.entries.append({"kind": "gcode", "input": str(path), "copy": copy, "reason": reason, "line": line})

    def add_row(self, kind: str, source: Path, row: Any, reason: str, line: int | None) -> None:
        self.entries.append({"kind": kind, "input": row, "file": str(source), "reason": reason, "line": line})

    def count(self, kind: str) -> int:
        return sum(1 for e in self.entries if e["kind"] == kind)


class Reject(Exception):
    """A G-code file that cannot be imported: the reason, and the line of the evidence when there is one."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
