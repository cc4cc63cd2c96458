"""Reading a program as Prunt (Prunt3D) reads a file: lines end at LF only, and the file ends at the first
line Prunt refuses.

The embedded simulator reads a ``firmware: prunt`` printer's programs with :class:`PruntReader`. A CRLF file
keeps its ``\\r`` (Prunt refuses its first line); a refused line stops the reading, so nothing after it runs,
except that a ``G0``/``G1`` refused for an unused parameter is passed on first (Prunt had queued its move).
The refusal is kept on the reader for the simulator to report as the print's fatal failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sim_bridge import failures as fail
from sim_bridge.gcode import MAX_LINE_BYTES, GcodeReader
from sim_bridge.prunt_dialect import PruntError, PruntLimits, check_line
from sim_bridge.report import Failure


@dataclass(frozen=True)
class PruntRefusal:
    """The line that ended a Prunt file."""

    line: int
    """Its 1-based number (LF-separated lines, as Prunt counts)."""
    text: str
    """The line as Prunt read it (a CRLF file's ``\\r`` kept)."""
    error: PruntError
    """Prunt's error for it."""

    def failure(self, layer: int = -1) -> Failure:
        """The fatal failure a print reports for it: Prunt's message, and that the rest of the file is skipped."""
        error = self.error
        mode = fail.classify_prunt_error(error.kind, error.message) or fail.INVALID_COMMAND
        tail = ("fatal: Prunt's G-code task stops" if error.fatal else "Prunt skips the rest of the file")
        return Failure(mode, f"{error.message} ({error.kind}; {tail})", self.line, layer, fatal=True)


class PruntReader(GcodeReader):
    """A :class:`~sim_bridge.gcode.GcodeReader` with Prunt's line splitting that stops at Prunt's first refusal.

    ``limits`` decides fan kinds (positions need the machine's state and are the interpreter's to check).
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | Iterable[str], *, name: str | None = None,
                 limits: PruntLimits | None = None, keep_comments: bool = True,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__(source, name=name, max_line_bytes=max_line_bytes, keep_comments=keep_comments,
                         lf_only=True)
        self.limits = limits or PruntLimits()
        self.refusal: PruntRefusal | None = None
        """The line that ended the file, or None when Prunt would run it to the end."""

    def numbered_lines(self) -> Iterator[tuple[int, str]]:
        """Each line Prunt runs, with its number, up to (and for a queued move, including) the refused one."""
        line_no = 0
        for line_no, text in self.lf_lines():
            error = check_line(text, self.limits, positions=False)
            if error is not None:
                self.refusal = PruntRefusal(line_no, text, error)
                self.lines_read = line_no
                if error.move_ran:
                    yield line_no, text
                return
            yield line_no, text
        self.lines_read = line_no

    def lf_lines(self) -> Iterator[tuple[int, str]]:
        """Every line as Prunt splits the file (at LF only), numbered, without the dialect check."""
        return super().numbered_lines()
