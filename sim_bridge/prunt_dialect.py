"""Prunt's G-code dialect: which lines Prunt (Prunt3D) refuses, with its exact words, and what it reads
differently from Marlin without a word.

Prunt's parser is strict. The rules here are our own, written from the recorded behaviour of the real parser
(``shared/data/prunt/dialect.md``: 92 lines sent two ways, and 12 small files; Prunt's source was not read):

* a line is parameters only: a letter (either case), then a number (``-`` only first, one ``.``, digits, no
  exponent, no ``+``), a ``"string"`` or nothing; spaces between parameters are optional; ``;`` starts a
  comment. Anything else (``( )`` comments, ``*`` checksums, tabs, ``\\r``, ``_``, non-ASCII outside a
  comment) is ``Expected parameter letter``, and a letter may appear once per line. So ``N10`` is a
  parameter no command takes, and ``X1e1`` is ``X1 E1``: the ``e`` starts a new parameter;
* the command is the ``G`` (else the ``M``) parameter; an unknown code is refused, and so is every parameter
  the command does not use, but a ``G0``/``G1`` has queued its move before that check (the move runs);
* in a file the first refused line ends the file (nothing after it runs, yet ``/status/values`` still says
  finished); ``M141``/``M191`` kill the controller's G-code task (fatal).

What is not in the recordings is inferred and marked so below (the fixed-fan check of ``M107``, a space
between a letter and its number, both ``G`` and ``M`` on a line, codes never probed). :func:`check_line`
judges one line; :func:`bounds_error` and :func:`unhomed_error` give the errors that need the machine's
state (the validator and the interpreter track it). Prunt's log lines, their formats and
:func:`parse_log_error`, which reads them back, are in :mod:`sim_bridge.prunt_log` (re-exported here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sim_bridge.profiles import PrinterProfile
from sim_bridge.prunt_log import (
    BAD_LINE,
    COMMAND_CONSTRAINT_ERROR,
    CONSTRAINT_ERROR,
    OUT_OF_BOUNDS_ERROR,
    PruntLogError,
    log_text,
    parse_log_error,
    parse_log_errors,
)

__all__ = ["BAD_LINE", "COMMAND_CONSTRAINT_ERROR", "CONSTRAINT_ERROR", "OUT_OF_BOUNDS_ERROR", "PruntError",
           "PruntLimits", "PruntLogError", "bounds_error", "check_line", "first_refusal", "limits_of",
           "parse_log_error", "parse_log_errors", "reinterpretations", "unhomed_error"]

# -- recorded message texts ----------------------------------------------------------------------------------
MUST_HOME = "Must home all axes before moving. Axis {axis} is not homed."
OUT_OF_BOUNDS = "Position is out of bounds ({axis} = {value})."
ZERO_FEEDRATE = "Feedrate of zero is not allowed."
FAN_NOT_DYNAMIC = "Fan {fan} is not set to dynamic PWM kind."
NOT_IMPLEMENTED = "Command not implemented."
_EXPECTED_LETTER = "Expected parameter letter, got '{char}'."
_UNPRINTABLE = "Expected parameter letter, got unprintable character."
_TWICE = "Parameter letter '{letter}' encountered more than once on line."
_MINUS = "'-' only allowed as first character in number."
_POINTS = "Multiple decimal points in number."
_NOT_VALID = "Parameter '{letter}' not valid for command on line."
_NO_VALUE = "Parameter '{letter}' has no value in command requiring number or omission."
_MISSING = "Parameter '{letter}' missing in command requiring number."
_STRING = "Parameter '{letter}' is string where number was expected."
_HAS_VALUE = "Parameter '{letter}' not allowed to have a value here."
_UNKNOWN_CODE = "Unknown {letter} code: {number}"
_BAD_CODE = "Bad {letter} parameter format: \n(KIND => FLOAT_KIND,\n CONSUMED => TRUE,\n FLOAT_VALUE => {value})"

AXIS_NAMES = ("X_AXIS", "Y_AXIS", "Z_AXIS", "E_AXIS")
MAX_CODE = 999
"""``M1000`` is a bad M parameter, ``M999`` an unknown code: codes are 0..999 (for ``G`` inferred)."""


@dataclass(frozen=True)
class PruntError:
    """One line Prunt refuses: its exception kind and its exact message."""

    kind: str
    """:data:`BAD_LINE`, :data:`OUT_OF_BOUNDS_ERROR`, :data:`COMMAND_CONSTRAINT_ERROR` or :data:`CONSTRAINT_ERROR`."""
    message: str
    """Prunt's text after ``raised EXCEPTION :``, e.g. ``Unknown M code:  201``."""
    fatal: bool = False
    """The controller's G-code task dies: nothing runs until Prunt is restarted."""
    move_ran: bool = False
    """A ``G0``/``G1`` whose move was queued before the parameter check refused the line (it still runs)."""

    @property
    def summary(self) -> str:
        """``KIND: message``, as ``message_summary`` in ``dialect.json``."""
        return f"{self.kind}: {self.message}"

    def log_line(self, line: str, number: int | None = None, name: str = "program.gcode") -> str:
        """Prunt's log for this error (:func:`~sim_bridge.prunt_log.log_text`)."""
        return log_text(self.kind, self.message, line, number, name, self.fatal)


@dataclass(frozen=True)
class PruntLimits:
    """What Prunt's configuration decides about a line: position limits and the fans' kinds."""

    position_min_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Lower position limits X, Y, Z (E is unlimited)."""
    position_max_mm: tuple[float, float, float] = (220.0, 220.0, 250.0)
    """Upper position limits X, Y, Z."""
    fan_names: tuple[str, ...] = ("FAN_1", "FAN_2")
    """Fans in index order (``M106 P1`` is the second)."""
    fixed_fans: frozenset[str] = frozenset({"FAN_2"})
    """Fans not of the dynamic-PWM kind (``Always on``): ``M106`` refuses them. The defaults are the recorded
    base config (``prunt-sim``)."""


def limits_of(profile: PrinterProfile) -> PruntLimits:
    """The :class:`PruntLimits` of a printer profile (its position limits; fans as the recorded config)."""
    lo, hi = profile.position_min_mm, profile.position_max_mm
    return PruntLimits((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))


def ada_float(value: float) -> str:
    """A float as Ada's ``Long_Float'Image`` writes it (a space stands for the plus sign).

    >>> ada_float(300.0), ada_float(-5.0)
    (' 3.00000000000000E+02', '-5.00000000000000E+00')
    """
    return f"{value:.14E}" if value < 0.0 or math.copysign(1.0, value) < 0.0 else f" {value:.14E}"


def bounds_error(position_mm: Sequence[float], limits: PruntLimits) -> PruntError | None:
    """Prunt's refusal of a move to ``position_mm`` (machine X, Y, Z after offsets), first axis first."""
    for i in range(3):
        value = position_mm[i]
        if value < limits.position_min_mm[i] - 1e-9 or value > limits.position_max_mm[i] + 1e-9:
            return PruntError(OUT_OF_BOUNDS_ERROR, OUT_OF_BOUNDS.format(axis=AXIS_NAMES[i], value=ada_float(value)))
    return None


def unhomed_error(homed: Sequence[bool]) -> PruntError | None:
    """Prunt's refusal of any move while an axis is not homed (it wants all of them, not just those moving)."""
    for i, ok in enumerate(homed[:3]):
        if not ok:
            return PruntError(COMMAND_CONSTRAINT_ERROR, MUST_HOME.format(axis=AXIS_NAMES[i]))
    return None


# -- the parser ---------------------------------------------------------------------------------------------
Value = float | str | None
"""A parameter's value: a number, a quoted string, or None for a bare letter (``G28 X``)."""

_NUMBER = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_FAST_RE = re.compile(rf"(?:[ ]*[A-Za-z](?:{_NUMBER})?)*[ ]*")
"""A line of plain words (one reading only, so a long number never backtracks)."""
_FAST_WORD_RE = re.compile(rf"([A-Za-z])({_NUMBER})?")
_EXPONENT_RE = re.compile(r"[0-9.]e[-0-9.]|[0-9.]E-?[0-9]+(?![0-9.])")
"""A number followed by ``e`` (Python's ``1e-05``) or ``E`` and an integer: an exponent Prunt reads as E."""


class _Refused(Exception):
    def __init__(self, error: PruntError) -> None:
        super().__init__(error.message)
        self.error = error


def _bad(message: str) -> _Refused:
    return _Refused(PruntError(BAD_LINE, message))


def _tokenize(body: str) -> dict[str, Value]:
    """The line's parameters, or :class:`_Refused` at the first character Prunt cannot read."""
    if _FAST_RE.fullmatch(body):
        words = _FAST_WORD_RE.findall(body)
        params = {letter.upper(): float(number) if number else None for letter, number in words}
        if len(params) == len(words):
            return params
    params = {}
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == " ":
            i += 1
            continue
        if not ("A" <= ch <= "Z" or "a" <= ch <= "z"):
            raise _bad(_EXPECTED_LETTER.format(char=ch) if "!" <= ch <= "~" else _UNPRINTABLE)
        letter = ch.upper()
        if letter in params:
            raise _bad(_TWICE.format(letter=letter))
        i += 1
        if i < n and body[i] == '"':
            # Inferred: a string runs to the next quote (an unclosed one to the end of the line).
            end = body.find('"', i + 1)
            end = n if end < 0 else end
            params[letter] = body[i + 1:end]
            i = end + 1
            continue
        start = i
        points = 0
        while i < n and (body[i].isdigit() and body[i].isascii() or body[i] in ".-"):
            if body[i] == "-" and i > start:
                raise _bad(_MINUS)
            if body[i] == ".":
                points += 1
                if points > 1:
                    raise _bad(_POINTS)
            i += 1
        text = body[start:i]
        # Inferred: a lone "-" or "." holds no digit; Prunt's reading of it was not recorded (taken as 0).
        params[letter] = (float(text) if any(c.isdigit() for c in text) else 0.0) if text else None
    return params


_MOVE = "X Y Z E F"
_G_PARAMS: dict[int, str] = {0: _MOVE, 1: _MOVE, 4: "", 10: "", 11: "", 21: "", 28: "X~ Y~ Z~ E~", 90: "", 91: "",
                             92: "X Y Z E"}
"""G codes Prunt runs and the parameters each takes: a letter alone is a number or omitted, ``!`` a number
that must be there, ``~`` a letter without a value, ``$`` a number or a ``"name"`` (recorded: G0 G1 G4 G10
G21 G28 G90 G91 G92, G11 in a file; E of G28 inferred; G4 takes S, else P: see :func:`_run`). Any other code is
unknown (recorded for G2 G3 G20 G29, inferred for codes never probed)."""
_M_PARAMS: dict[int, str | None] = {
    0: "", 17: "", 73: None, 82: "", 83: "", 84: "", 104: "S! T", 106: "P$ S", 107: "P$", 109: "S! T", 122: None,
    140: "S!", 190: "S!", 204: None, 205: "P~", 207: "X Y Z E F", 486: None}
"""M codes Prunt runs, as :data:`_G_PARAMS`; None: every parameter is ignored (M204 recorded with S, P R T).
Unknown: M201 M203 M220 M221 M999 recorded (``M117 Hello`` fails in the parser first). M207's X Y Z inferred."""
_FATAL_M = frozenset({141, 191})
"""Chamber heating: ``Command not implemented`` kills the G-code task (M141 recorded; M191 the same path)."""
M205_LIMITS = {"A": "acceleration (mm/s^2)", "J": "jerk (mm/s^3)", "S": "snap (mm/s^4)",
               "C": "crackle (mm/s^5)", "D": "chord error (mm)", "L": "pressure advance time (s)"}
"""Prunt's ``M205``: one of these per line (the first given, in this order; any other is not valid)."""


def _code(letter: str, value: Value) -> int:
    if not isinstance(value, float) or not 0 <= value <= MAX_CODE or value != int(value):
        # Recorded for M1000; for G, a string or a bare letter the same form is inferred.
        number = value if isinstance(value, float) else 0.0
        raise _bad(_BAD_CODE.format(letter=letter, value=ada_float(number)))
    return int(value)


def _take(params: dict[str, Value], used: set[str], spec: str) -> None:
    """Use the parameters ``spec`` names (see :data:`_G_PARAMS`), refusing values of the wrong kind."""
    for word in spec.split():
        letter, rule = word[0], word[1:]
        if letter not in params:
            if rule == "!":
                raise _bad(_MISSING.format(letter=letter))
            continue
        value = params[letter]
        used.add(letter)
        if rule == "~":
            if value is not None:
                raise _bad(_HAS_VALUE.format(letter=letter))
        elif rule == "$":
            continue
        elif isinstance(value, str):
            raise _bad(_STRING.format(letter=letter))
        elif value is None:
            # Recorded for an optional number; for a required one the same text is inferred.
            raise _bad(_NO_VALUE.format(letter=letter))


def _fan(params: dict[str, Value], limits: PruntLimits) -> None:
    which = params.get("P", 0.0)
    # is_integer, not which == int(which): P1e400 reads as infinity, which int() refuses (a fuzz finding).
    if isinstance(which, float) and which.is_integer() and 0 <= which < len(limits.fan_names):
        name = limits.fan_names[int(which)]
    elif isinstance(which, str):
        name = which
    else:
        return  # an index Prunt has no fan for: its answer was not recorded
    if name in limits.fixed_fans:
        raise _Refused(PruntError(COMMAND_CONSTRAINT_ERROR, FAN_NOT_DYNAMIC.format(fan=name)))


def _unused(params: dict[str, Value], used: set[str], move_ran: bool) -> None:
    for letter in sorted(params):
        if letter not in used:
            raise _Refused(PruntError(BAD_LINE, _NOT_VALID.format(letter=letter), move_ran=move_ran))


def _run(params: dict[str, Value], limits: PruntLimits | None, positions: bool) -> None:
    """Prunt's command lookup and parameter checks, in its order; raises :class:`_Refused`."""
    used: set[str] = set()
    if "G" in params:
        used.add("G")
        code = _code("G", params["G"])
        rules = _G_PARAMS.get(code)
        if rules is None:
            raise _bad(_UNKNOWN_CODE.format(letter="G", number=f" {code}"))
        if code == 4:
            # "G4" alone asks for P: so S is looked for first, and P is the one required.
            _take(params, used, "S" if "S" in params else "P!")
        _take(params, used, rules)
        if code in (0, 1):
            if params.get("F") == 0.0:
                raise _Refused(PruntError(COMMAND_CONSTRAINT_ERROR, ZERO_FEEDRATE))
            if limits is not None and positions:
                target = [params.get(a) for a in "XYZ"]
                found = bounds_error([v if isinstance(v, float) else limits.position_min_mm[i]
                                      for i, v in enumerate(target)], limits)
                if found is not None:
                    raise _Refused(found)
            _unused(params, used, move_ran=True)
            return
    elif "M" in params:
        used.add("M")
        code = _code("M", params["M"])
        if code in _FATAL_M:
            raise _Refused(PruntError(CONSTRAINT_ERROR, NOT_IMPLEMENTED, fatal=True))
        if code not in _M_PARAMS:
            raise _bad(_UNKNOWN_CODE.format(letter="M", number=f" {code}"))
        rules = _M_PARAMS[code]
        if rules is None:
            return
        _take(params, used, rules)
        if code == 205:
            limit = next((a for a in M205_LIMITS if a in params), None)
            if limit is not None:
                _take(params, used, limit)
        elif code in (106, 107) and limits is not None:
            _fan(params, limits)  # inferred for M107: only M106 on a fixed fan was recorded
    _unused(params, used, move_ran=False)


def check_line(raw: str, limits: PruntLimits | None = None, warnings: list[str] | None = None, *,
               positions: bool = True) -> PruntError | None:
    """Prunt's refusal of one line (without its line ending), or ``None`` when Prunt accepts it.

    With ``limits``, ``M106``'s fan kind is checked, and (unless ``positions`` is false: a caller that tracks
    G91, G92 and homing checks positions itself) a ``G0``/``G1``'s X/Y/Z as absolute machine coordinates.
    ``warnings`` collects what Prunt accepts but reads otherwise than Marlin would.

    >>> check_line("M201 X1000").summary
    'BAD_LINE: Unknown M code:  201'
    >>> check_line("G1 X5 Y5 Q1").move_ran, check_line("G1X5Y5 ; comment") is None
    (True, True)
    >>> notes = []; check_line("M205 S0", warnings=notes); notes[0][:30]
    "M205 S sets Prunt's snap limit"
    """
    semi = raw.find(";")
    body = raw if semi < 0 else raw[:semi]
    try:
        params = _tokenize(body)
        if params:
            _run(params, limits, positions)
    except _Refused as refused:
        return refused.error
    if warnings is not None and params:
        warnings.extend(reinterpretations(body, params))
    return None


def reinterpretations(body: str, params: dict[str, Value]) -> list[str]:
    """What Prunt does with an accepted line that a Marlin or Klipper reader would do otherwise."""
    notes: list[str] = []
    code = params.get("G")
    if code is not None and _EXPONENT_RE.search(body):
        notes.append("Prunt reads no exponents: the 'e' starts an E parameter (X1e1 is X1 E1, which extrudes)")
    if code == 0.0:
        notes.append("G0 runs as G1 (Prunt's 'Replace G0 with G1'), at the current feed rate")
    elif code is None and params.get("M") == 204.0:
        notes.append("Prunt ignores M204: the acceleration stays at its configured limit (M205 A sets it)")
    elif code is None and params.get("M") == 205.0:
        given = next((a for a in M205_LIMITS if a in params), None)
        if given == "S":
            notes.append("M205 S sets Prunt's snap limit (mm/s^4), not Marlin's minimum feed rate"
                         + ("; snap 0 stalls the planner: nothing after this line runs" if params["S"] == 0.0
                            else ""))
        elif given == "J":
            notes.append("M205 J sets Prunt's jerk limit (mm/s^3), not Marlin's junction deviation (mm)")
    return notes


def first_refusal(lines: Sequence[str], limits: PruntLimits | None = None) -> tuple[int, PruntError] | None:
    """The 1-based number and error of the first line Prunt refuses in a file's lines (split on LF only, so a
    CRLF file's lines keep their ``\\r``): Prunt runs the file up to it and skips the rest."""
    for number, line in enumerate(lines, start=1):
        error = check_line(line, limits)
        if error is not None:
            return number, error
    return None
