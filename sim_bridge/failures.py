"""The failure vocabulary: one name per fact, for the simulator's failure modes, the validator's rules, the
simulator's notices and the failures seen on real printers.

A validator rule that denotes the same fact as a simulator mode has the mode's name: the simulator stops a
print with ``move_out_of_range`` where the validator blocks a program with ``move_out_of_range``. Groups:
:data:`FATAL_MODES` stop a print (as they stop Klipper), :data:`DEFECT_MODES` spoil the part,
:data:`WARNING_MODES` may also come as a quality warning that leaves ``success`` true,
:data:`REAL_WORLD_MODES` are seen only on real printers (logs, user feedback), :data:`VALIDATOR_RULES` are
the ``rule`` of a safety finding, :data:`NOTICE_KINDS` the ``kind`` of a simulator notice. Klipper's own
error messages map to modes with :func:`classify_klipper_message`, Prunt's with :func:`classify_prunt_error`.
"""

from __future__ import annotations

import re
from types import MappingProxyType

# -- fatal: the firmware stops the print (simulator modes; the validator blocks the same facts) ---------
MOVE_OUT_OF_RANGE = "move_out_of_range"
"""Klipper's "Move out of range": a move outside ``position_min/max`` (after all offsets)."""
MUST_HOME_FIRST = "must_home_first"
"""Klipper's "Must home axis first": a move (or levelling) of an axis not homed."""
COLD_EXTRUSION = "cold_extrusion"
"""Klipper's "Extrude below minimum temp"."""
EXTRUSION_TOO_LARGE = "extrusion_too_large"
"""Klipper's "Move exceeds maximum extrusion" (``max_extrude_cross_section``)."""
EXTRUDE_ONLY_TOO_LONG = "extrude_only_too_long"
"""Klipper's "Extrude only move too long" (``max_extrude_only_distance``)."""
TEMPERATURE_OUT_OF_RANGE = "temperature_out_of_range"
"""Klipper's "Requested temperature (…) out of range (…)"; for the validator also an unknown heater."""
THERMAL_RUNAWAY = "thermal_runaway"
"""Klipper's ``verify_heater``: "Heater … not heating at expected rate"."""
HEATER_TIMEOUT = "heater_timeout"
"""A wait for a temperature that does not end: the simulator's heater never reaches it in time; the
validator's ``TEMPERATURE_WAIT`` for more than the heater's target (the program would hang, heater on)."""
INVALID_COMMAND = "invalid_command"
"""A command whose words the firmware cannot execute (not a number, an arc without centre, F ≤ 0, an unknown
saved state, an axis letter the validator does not check)."""
UNREADABLE = "unreadable"
"""The input is not text G-code (NUL bytes, an over-long line, too large, no such file)."""

# -- defects: the print goes on, the part is bad ------------------------------------------------------
NOZZLE_COLLISION = "nozzle_collision"
EXTRUSION_IN_MID_AIR = "extrusion_in_mid_air"
FIRST_LAYER_TOO_HIGH = "first_layer_too_high"
FIRST_LAYER_TOO_LOW = "first_layer_too_low"
UNDER_EXTRUSION = "under_extrusion"
OVERHANG_WITHOUT_COOLING = "overhang_without_cooling"

# -- seen only on real printers (the simulator does not model them) -------------------------------------
LAYER_SHIFT = "layer_shift"
WARPING = "warping"
STRINGING = "stringing"
FILAMENT_RUNOUT = "filament_runout"
POWER_LOSS = "power_loss"
MCU_SHUTDOWN = "mcu_shutdown"
MCU_COMMUNICATION_LOST = "mcu_communication_lost"
FIRMWARE_SHUTDOWN = "firmware_shutdown"
"""A Klipper shutdown whose reason matches none of :data:`KLIPPER_ERRORS`."""
OTHER = "other"

# -- validator rules of their own (a program is blocked; no simulator mode says the same) ---------------
FORBIDDEN_COMMAND = "forbidden_command"
UNKNOWN_COMMAND = "unknown_command"
"""Not in the command table, the printer's macros or the policy's allow-list (also the simulator's notice
of Klipper's ``Unknown command``)."""
UNKNOWN_TOOL = "unknown_tool"
"""A tool number other than 0 on a one-extruder printer (also the simulator's notice)."""
FEED_RATE = "feed_rate"
ACCELERATION = "acceleration"
FACTOR_RANGE = "factor_range"
Z_INTO_BED = "z_into_bed"
GCODE_OFFSET = "gcode_offset"
HIDDEN_IN_COMMENT = "hidden_in_comment"
AMBIGUOUS_LINE = "ambiguous_line"
CHECKSUM_MISMATCH = "checksum_mismatch"
TUNING_WINDOW = "tuning_window"
NOT_TUNING_COMMAND = "not_tuning_command"

# -- notices of the simulator (the print goes on) -------------------------------------------------------
INVALID_M204 = "invalid_m204"
"""Klipper's "Invalid M204 command" (it changes nothing and goes on)."""
READER_WARNING = "reader"
"""The reader kept a line it had doubts about (a checksum mismatch …)."""
STOPPED = "stopped"
"""A run asked of a simulator whose print an earlier error stopped."""

FATAL_MODES = frozenset({
    MOVE_OUT_OF_RANGE, MUST_HOME_FIRST, COLD_EXTRUSION, EXTRUSION_TOO_LARGE, EXTRUDE_ONLY_TOO_LONG,
    TEMPERATURE_OUT_OF_RANGE, THERMAL_RUNAWAY, HEATER_TIMEOUT, INVALID_COMMAND, UNREADABLE,
})
"""Failure modes that stop the print, as they stop Klipper (a command error aborts the job)."""
DEFECT_MODES = frozenset({
    NOZZLE_COLLISION, EXTRUSION_IN_MID_AIR, FIRST_LAYER_TOO_HIGH, FIRST_LAYER_TOO_LOW, UNDER_EXTRUSION,
    OVERHANG_WITHOUT_COOLING,
})
"""Failure modes of print quality: the print goes on but the part is bad."""
WARNING_MODES = frozenset({OVERHANG_WITHOUT_COOLING})
"""Defect modes the simulator also reports, below the grade that spoils a part, as quality warnings
(``PrintReport.warnings``; ``success`` stays true): an uncooled steep overhang curls its edge, while an uncooled
bridge or cantilever sags (the failure)."""
REAL_WORLD_MODES = frozenset({
    LAYER_SHIFT, WARPING, STRINGING, FILAMENT_RUNOUT, POWER_LOSS, MCU_SHUTDOWN, MCU_COMMUNICATION_LOST,
    FIRMWARE_SHUTDOWN, OTHER,
})
"""Failure modes seen only on real printers (the simulator does not model them)."""
KNOWN_MODES = FATAL_MODES | DEFECT_MODES | REAL_WORLD_MODES
"""Every outcome label a dataset row may carry."""
VALIDATOR_RULES = frozenset({
    FORBIDDEN_COMMAND, UNKNOWN_COMMAND, MOVE_OUT_OF_RANGE, MUST_HOME_FIRST, COLD_EXTRUSION, EXTRUSION_TOO_LARGE,
    EXTRUDE_ONLY_TOO_LONG, TEMPERATURE_OUT_OF_RANGE, HEATER_TIMEOUT, UNKNOWN_TOOL, FEED_RATE, ACCELERATION,
    FACTOR_RANGE, Z_INTO_BED, GCODE_OFFSET, HIDDEN_IN_COMMENT, AMBIGUOUS_LINE, CHECKSUM_MISMATCH,
    INVALID_COMMAND, UNREADABLE, TUNING_WINDOW, NOT_TUNING_COMMAND,
})
"""The ``rule`` of a safety finding (see docs/safety.md)."""
TUNING_ONLY_RULES = frozenset({TUNING_WINDOW, NOT_TUNING_COMMAND})
"""Rules only live tuning (not a program) can break."""
REINTERPRETED = "reinterpreted"
"""A validator warning (it does not block): the firmware accepts the line but reads it otherwise than written
or than other firmwares do (Prunt's ``M205 S`` is snap, ``X1e1`` is ``X1 E1``, ``M204`` is ignored)."""
VALIDATOR_WARNINGS = frozenset({REINTERPRETED})
"""The ``rule`` of a validator warning (:attr:`safety.findings.Verdict.warnings`)."""
NOTICE_KINDS = frozenset({UNKNOWN_COMMAND, UNKNOWN_TOOL, INVALID_M204, READER_WARNING, STOPPED})
"""The ``kind`` of a simulator notice."""

FEEDBACK_MODES: MappingProxyType[str, str] = MappingProxyType({
    "spaghetti": EXTRUSION_IN_MID_AIR, "mid air extrusion": EXTRUSION_IN_MID_AIR,
    "printing in mid air": EXTRUSION_IN_MID_AIR, "air printing": EXTRUSION_IN_MID_AIR,
    "birds nest": EXTRUSION_IN_MID_AIR, "bird's nest": EXTRUSION_IN_MID_AIR,
    "layer shift": LAYER_SHIFT, "layer shifting": LAYER_SHIFT, "shifted layers": LAYER_SHIFT,
    "clog": UNDER_EXTRUSION, "clogged": UNDER_EXTRUSION, "clogged nozzle": UNDER_EXTRUSION,
    "under extrusion": UNDER_EXTRUSION, "underextrusion": UNDER_EXTRUSION, "gaps": UNDER_EXTRUSION,
    "not sticking": FIRST_LAYER_TOO_HIGH, "poor adhesion": FIRST_LAYER_TOO_HIGH,
    "bed adhesion": FIRST_LAYER_TOO_HIGH, "adhesion": FIRST_LAYER_TOO_HIGH,
    "detached": FIRST_LAYER_TOO_HIGH, "came loose": FIRST_LAYER_TOO_HIGH,
    "elephant foot": FIRST_LAYER_TOO_LOW, "nozzle too close": FIRST_LAYER_TOO_LOW,
    "squished first layer": FIRST_LAYER_TOO_LOW,
    "warping": WARPING, "warped": WARPING, "lifting corners": WARPING,
    "stringing": STRINGING, "oozing": STRINGING,
    "crash": NOZZLE_COLLISION, "nozzle crash": NOZZLE_COLLISION, "collision": NOZZLE_COLLISION,
    "knocked over": NOZZLE_COLLISION, "nozzle hit": NOZZLE_COLLISION,
    "curling": OVERHANG_WITHOUT_COOLING, "overhang": OVERHANG_WITHOUT_COOLING,
    "drooping overhang": OVERHANG_WITHOUT_COOLING, "sagging overhang": OVERHANG_WITHOUT_COOLING,
    "thermal runaway": THERMAL_RUNAWAY, "cold extrusion": COLD_EXTRUSION,
    "filament runout": FILAMENT_RUNOUT, "runout": FILAMENT_RUNOUT,
    "ran out of filament": FILAMENT_RUNOUT, "power loss": POWER_LOSS, "power failure": POWER_LOSS,
})
"""User feedback wording → failure mode (after lower-casing and turning ``_``/``-`` into spaces). A mode name
itself (``layer_shift``) is accepted too; anything else becomes ``other`` with the text in the message.
"Not sticking" counts as ``first_layer_too_high`` (a nozzle too far from the bed is its usual cause), while
warping keeps a mode of its own: it is thermal, and the simulator has no model of it."""

FILE_MCU_BLIND_MODES: frozenset[str] = frozenset({COLD_EXTRUSION, THERMAL_RUNAWAY, HEATER_TIMEOUT})
"""Fatal failures a Klippy whose MCU is a file (batch mode, the virtual printer) cannot see: it reads every
heater at 0 °C, returns from heater waits at once and skips the cold-extrusion check. The ``klipper-batch``
and ``moonraker`` backends take these from the embedded simulator."""

KLIPPER_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), m) for p, m in (
    (r"^Move out of range: ", MOVE_OUT_OF_RANGE),
    (r"^Must home axis first", MUST_HOME_FIRST),
    (r"^Extrude below minimum temp", COLD_EXTRUSION),
    (r"^Extrude only move too long", EXTRUDE_ONLY_TOO_LONG),
    (r"^Move exceeds maximum extrusion", EXTRUSION_TOO_LARGE),
    (r"^Requested temperature \(.*\) out of range", TEMPERATURE_OUT_OF_RANGE),
    (r"^Heater \S+ not heating at expected rate", THERMAL_RUNAWAY),
    (r"^MCU '[^']*' shutdown: \S", MCU_SHUTDOWN),
    (r"^MCU shutdown$", MCU_SHUTDOWN),
    (r"^Timer too close", MCU_SHUTDOWN),
    (r"^Lost communication with MCU", MCU_COMMUNICATION_LOST),
))
"""Klipper's error messages (klippy/toolhead.py, kinematics/extruder.py, extras/heaters.py,
extras/verify_heater.py, mcu.py) → failure modes. A shutdown reason that matches none is
``firmware_shutdown``. ``MCU 'mcu' shutdown:`` with no reason is the dump after another shutdown, not one."""

_SHUTDOWN_RE = re.compile(r"^Transition to shutdown state: (.*)$")


def classify_klipper_message(message: str) -> str | None:
    """The failure mode of a Klipper log line, or ``None`` when it is not an error that ends a print.

    >>> classify_klipper_message("Move out of range: 240.000 46.000 5.000 [0.000]")
    'move_out_of_range'
    >>> classify_klipper_message("Transition to shutdown state: Lost communication with MCU 'mcu'")
    'mcu_communication_lost'
    >>> classify_klipper_message("MCU 'mcu' shutdown: ") is None
    True
    """
    text, shutdown = klipper_error_text(message)
    for pattern, mode in KLIPPER_ERRORS:
        if pattern.match(text):
            return mode
    return FIRMWARE_SHUTDOWN if shutdown else None


def klipper_error_text(message: str) -> tuple[str, bool]:
    """The error text of a log line (a shutdown's reason without "Transition to shutdown state: "), and
    whether it was a shutdown."""
    message = message.removeprefix("!! ").strip()
    shutdown = _SHUTDOWN_RE.match(message)
    return (shutdown.group(1).strip(), True) if shutdown else (message, False)


PRUNT_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), m) for p, m in (
    (r"^Must home all axes before moving", MUST_HOME_FIRST),
    (r"^Position is out of bounds", MOVE_OUT_OF_RANGE),
    (r"^Command not implemented", INVALID_COMMAND),
))
"""Prunt's error texts (the part after ``raised EXCEPTION :`` in its log, as recorded in
``shared/data/prunt/dialect.json``) → failure modes; :data:`PRUNT_COMMAND_EXCEPTIONS` name the rest."""
PRUNT_COMMAND_EXCEPTIONS = frozenset({"BAD_LINE", "COMMAND_CONSTRAINT_ERROR"})
"""Prunt exceptions of a line it cannot run (a parse error, an unknown G or M code, a zero feed rate, a fan of
the wrong kind): ``invalid_command``. (Ada's own ``CONSTRAINT_ERROR`` is not one: it counts only with the
text ``Command not implemented``.)"""
PRUNT_BLIND_MODES: frozenset[str] = frozenset({
    COLD_EXTRUSION, THERMAL_RUNAWAY, HEATER_TIMEOUT, TEMPERATURE_OUT_OF_RANGE, EXTRUSION_TOO_LARGE,
    EXTRUDE_ONLY_TOO_LONG,
})
"""Fatal failures the recorded Prunt never reports (its simulator has no heaters and no temperature checks,
and no extrusion limits showed in the dialect probe): the ``prunt`` backend takes these from the embedded
simulator."""


def classify_prunt_error(exception: str, text: str) -> str | None:
    """The failure mode of a Prunt error (``exception``'s last name and its text), or ``None`` if unknown.

    >>> classify_prunt_error("OUT_OF_BOUNDS_ERROR", "Position is out of bounds (X_AXIS = -5.0E+00).")
    'move_out_of_range'
    >>> classify_prunt_error("BAD_LINE", "Unknown G code:  2")
    'invalid_command'
    """
    for pattern, mode in PRUNT_ERRORS:
        if pattern.match(text):
            return mode
    return INVALID_COMMAND if exception in PRUNT_COMMAND_EXCEPTIONS else None
