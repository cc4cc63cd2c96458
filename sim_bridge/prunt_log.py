"""Prunt's log lines: the exception kinds it raises for a refused line, how it logs them, and reading them back.

Prunt (Prunt3D) answers a bad ``run-command`` or ``run-file`` line with HTTP 204 all the same: the error shows
only in its log (stdout, and ``{"Log": ...}`` on the websocket), as recorded in ``shared/data/prunt``. The
dialect itself (which lines are refused, with which message) is :mod:`sim_bridge.prunt_dialect`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- Prunt's exception kinds (the last name of the Ada exception) -----------------------------------------
BAD_LINE = "BAD_LINE"
"""The parser cannot read the line, or the command does not take one of its parameters."""
OUT_OF_BOUNDS_ERROR = "OUT_OF_BOUNDS_ERROR"
"""The planner refuses a position outside the configured position limits."""
COMMAND_CONSTRAINT_ERROR = "COMMAND_CONSTRAINT_ERROR"
"""The command runner refuses the command (zero feed rate, not homed, a fan of the wrong kind)."""
CONSTRAINT_ERROR = "CONSTRAINT_ERROR"
"""Ada's own: ``Command not implemented`` (``M141``/``M191``) kills the G-code task."""

EXCEPTION_NAMES = {
    BAD_LINE: "PRUNT_SIMULATOR.MY_CONTROLLER.MY_GCODE_HANDLER.MY_GCODE_PARSER.BAD_LINE",
    OUT_OF_BOUNDS_ERROR: "PRUNT_SIMULATOR.MY_CONTROLLER.MY_PLANNER.OUT_OF_BOUNDS_ERROR",
    COMMAND_CONSTRAINT_ERROR: "PRUNT_SIMULATOR.MY_CONTROLLER.MY_GCODE_HANDLER.RUNNERTK.COMMAND_CONSTRAINT_ERROR",
    CONSTRAINT_ERROR: "CONSTRAINT_ERROR",
}
"""Full exception names as prunt_simulator logs them (a board's build has its own first name)."""

# -- Prunt's log lines (stdout, and ``{"Log": ...}`` on the websocket) ------------------------------------
FILE_ERROR_LOG = "Error {phase} line in file uploads/{name} on line {number} ({line}): raised {exception} : {message}"
"""A refused line of a file started with ``run-file``; ``number`` is Ada's ``Integer'Image`` (" 2", so the log
reads ``on line  2``)."""
MANUAL_ERROR_LOG = "Error {phase} manual command ({line}): raised {exception} : {message}"
"""A refused ``run-command`` line."""
FATAL_LOG = "raised {exception} : {message}"
"""A fatal error: the G-code task dies (``/status/values`` then answers ``{"Fatal_Error": ...}``)."""
PARSING = "parsing"
RUNNING = "running"
"""The ``phase`` word: ``running`` for the command runner's errors, ``parsing`` for the others."""


def log_text(kind: str, message: str, line: str, number: int | None = None, name: str = "program.gcode",
             fatal: bool = False) -> str:
    """The first line(s) of Prunt's log for an error (without the traceback): of a file's line ``number``, or
    of a ``run-command`` when ``number`` is None.

    >>> log_text(BAD_LINE, "Unknown G code:  2", "G2 X1", 2, "t.gcode")[:58]
    'Error parsing line in file uploads/t.gcode on line  2 (G2 '
    """
    exception = EXCEPTION_NAMES[kind]
    if fatal:
        return FATAL_LOG.format(exception=exception, message=message)
    phase = RUNNING if kind == COMMAND_CONSTRAINT_ERROR else PARSING
    if number is None:
        return MANUAL_ERROR_LOG.format(phase=phase, line=line, exception=exception, message=message)
    return FILE_ERROR_LOG.format(phase=phase, name=name, number=f" {number}", line=line, exception=exception,
                                 message=message)

_LOG_RE = re.compile(
    r"^(?:Error (parsing|running) (?:line in file uploads/(.*?) on line +(\d+)|manual command) \((.*)\): )?"
    r"raised ([A-Za-z0-9_.]+) : ", re.M)
_TRACEBACK_RE = re.compile(r"\n\[")
"""A GNAT traceback starts on a line of its own with the binary's name in brackets: the message ends there."""


# -- reading the log back -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruntLogError:
    """One error read from Prunt's log."""

    kind: str
    """The exception's last name (:data:`BAD_LINE` …)."""
    message: str
    """Prunt's text after ``raised EXCEPTION :`` up to the traceback."""
    line_number: int | None
    """The file's line (``run-file``), None for a manual command or a fatal error."""
    line: str | None
    """The refused line as Prunt quotes it, None for a fatal error."""
    file: str | None = None
    """The file under ``uploads/``, None unless from ``run-file``."""
    fatal: bool = False
    """A bare ``raised …`` (the G-code task died)."""

    @property
    def summary(self) -> str:
        """``KIND: message``, as :attr:`PruntError.summary`."""
        return f"{self.kind}: {self.message}"


def parse_log_errors(log: str) -> list[PruntLogError]:
    """Every error in a stretch of Prunt's log, in order (the traceback after each is skipped; the second
    ``raised CONSTRAINT_ERROR : Error in other task.`` of a fatal error is its controller's echo, dropped).

    >>> e = parse_log_errors("Error parsing line in file uploads/t.gcode on line  2 (G2 X1): raised "
    ...                      "A.B.BAD_LINE : Unknown G code:  2\\n[prunt_simulator]\\n0x5618d9db1052 ...")[0]
    >>> e.line_number, e.line, e.summary
    (2, 'G2 X1', 'BAD_LINE: Unknown G code:  2')
    """
    found: list[PruntLogError] = []
    matches = list(_LOG_RE.finditer(log))
    for k, match in enumerate(matches):
        phase, name, number, line, exception = match.groups()
        end = matches[k + 1].start() if k + 1 < len(matches) else len(log)
        rest = log[match.end():end]
        cut = _TRACEBACK_RE.search(rest)
        message = (rest[:cut.start()] if cut else rest).rstrip("\n")
        fatal = phase is None
        if fatal and found and found[-1].fatal and message == "Error in other task.":
            continue
        found.append(PruntLogError(exception.rsplit(".", 1)[-1], message, int(number) if number else None,
                                   line, name, fatal))
    return found


def parse_log_error(log: str) -> PruntLogError | None:
    """The first error in ``log``, or None."""
    errors = parse_log_errors(log)
    return errors[0] if errors else None
