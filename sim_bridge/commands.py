"""The command table: every G-code command layerloop knows, what the simulator does with it, and whether a
program may send it to a printer.

One :class:`CommandSpec` per code. The interpreter (:mod:`sim_bridge.interpreter`) runs a command through its
``effect``; the validator (:mod:`safety.validator`) judges it by its ``safety`` class and tracks it through
its ``check``; the evaluation's validity metric counts a command as valid when :func:`deployable` says so;
importers ask :func:`is_motion`. A code not in the table is unknown everywhere: the simulator notes Klipper's
``Unknown command``, the validator blocks it unless the printer declares it as a macro or the policy allows
it, and evaluation counts it invalid.

Where the simulator and deployment used to disagree, the table decides once, and deployment wins: a program
is valid only if it could be deployed.

* ``G20`` (inches) is run by the simulator (every distance × 25.4, as a firmware does) but is
  :data:`UNCHECKED`: the validator checks positions, feeds and extrusion in millimetres and does not convert,
  and no slicer writes inches for these printers. Blocked at deployment, invalid in evaluation.
* ``SDCARD_LOOP_BEGIN/END/DESIST`` are accepted by the simulator without effect (the loop body runs once),
  but a loop repeats lines the validator checked once, so positions and extrusion accumulate unseen:
  :data:`UNCHECKED`, blocked and invalid.
* The other codes the simulator accepts without effect but the validator cannot see into (power supply,
  SD-card file commands, chamber heater, colour mixing, ``UPDATE_DELAYED_GCODE`` …) are :data:`UNCHECKED`
  too, each with its reason; a policy's ``allow_commands`` may lift an unchecked code for one printer, never a
  :data:`FORBIDDEN` one.
* ``T1``…: a one-extruder printer has only ``T0``; other tool numbers are not in the table.

Firmware differences: ``firmware`` lists the firmwares whose model runs the command; under the other one the
simulator answers ``Unknown command`` and the validator skips its checks (the printer changes nothing).
Only differences the simulator models are recorded: Klipper has no ``M201``/``M203``/``M205`` and no
``G29``/``G80`` (a Klipper printer's ``G29`` is a user macro, declared in its profile). Klipper's extended
commands (``SET_VELOCITY_LIMIT`` …) run under the Marlin model too: programs written for either firmware
use them. The model is the profile's firmware (``SimOptions.planner`` chooses only the corner model). Differences in how a firmware
reads a command's words (Klipper's heater M-codes read only ``S``; its ``M84`` switches every motor off) are
the functions at the end of this module, used by both the interpreter and the validator.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from types import MappingProxyType

from sim_bridge.profiles import MacroProfile

IGNORED = ""
"""``effect`` of a command the simulator accepts without an effect on the print (messages, queries, labels)."""

ALLOWED = "allowed"
"""Safety class: a program may contain it (values are checked where the validator has a ``check``)."""
AUTOTUNE = "autotune"
"""Safety class: PID autotune, allowed only with a known heater and a target inside the heater's range."""
FORBIDDEN = "forbidden"
"""Safety class: always blocked, whatever the policy says (``reason`` says why)."""
UNCHECKED = "unchecked"
"""Safety class: accepted by a firmware, but the validator cannot see what it does: blocked as an unknown
command unless the policy's ``allow_commands`` lists it (``reason`` says why)."""

KLIPPER = "klipper"
MARLIN = "marlin"
BOTH = frozenset({KLIPPER, MARLIN})
_MARLIN_ONLY = frozenset({MARLIN})


@dataclass(frozen=True)
class CommandSpec:
    """What layerloop knows about one command code."""

    code: str
    """The code as the reader writes it: upper case, leading zeros dropped (``M302``, ``SET_FAN_SPEED``)."""
    effect: str | None
    """The interpreter method that runs it (``"_g28"``); :data:`IGNORED` when the simulator accepts it
    without effect; ``None`` when the simulator does not run it (it notes Klipper's ``Unknown command``)."""
    safety: str
    """:data:`ALLOWED`, :data:`AUTOTUNE`, :data:`FORBIDDEN` or :data:`UNCHECKED`."""
    reason: str = ""
    """Why a forbidden or unchecked command is blocked (completes "it …")."""
    check: str = ""
    """The validator method that tracks and checks it (``"_g28"``); empty when its class is all there is."""
    moves: bool = False
    """Its own X/Y/Z/E words move the toolhead (G0–G3)."""
    firmware: frozenset[str] = BOTH
    """Firmwares whose model runs it (see the module docstring)."""


def _specs(codes: str, effect: str | None, safety: str = ALLOWED, reason: str = "", check: str = "",
           moves: bool = False, firmware: frozenset[str] = BOTH) -> list[CommandSpec]:
    return [CommandSpec(code, effect, safety, reason, check, moves, firmware) for code in codes.split()]


def _forbidden(reason: str, codes: str, effect: str | None = None) -> list[CommandSpec]:
    return _specs(codes, effect, FORBIDDEN, reason)


def _unchecked(reason: str, codes: str, effect: str | None = IGNORED) -> list[CommandSpec]:
    return _specs(codes, effect, UNCHECKED, reason)


_TABLE: list[CommandSpec] = [
    # -- motion and modes ----------------------------------------------------------------------------
    *_specs("G0 G1", "_g1", check="_move", moves=True),
    CommandSpec("G2", "_arc", ALLOWED, check="_arc", moves=True),
    CommandSpec("G3", "_arc", ALLOWED, check="_arc", moves=True),
    CommandSpec("G4", "_g4", ALLOWED),
    CommandSpec("G10", "_g10", ALLOWED, check="_retract"),
    CommandSpec("G11", "_g11", ALLOWED, check="_retract"),
    CommandSpec("G17", IGNORED, ALLOWED),  # XY plane: the only one arcs are drawn in
    CommandSpec("G21", "_g21", ALLOWED),
    CommandSpec("G28", "_g28", ALLOWED, check="_g28"),
    CommandSpec("G90", "_g90", ALLOWED, check="_set_mode"),
    CommandSpec("G91", "_g91", ALLOWED, check="_set_mode"),
    CommandSpec("G92", "_g92", ALLOWED, check="_g92"),
    CommandSpec("M82", "_m82", ALLOWED, check="_set_mode"),
    CommandSpec("M83", "_m83", ALLOWED, check="_set_mode"),
    CommandSpec("M17", IGNORED, ALLOWED),
    *_specs("M18 M84", "_m84", check="_motors_off"),
    CommandSpec("M400", "_m400", ALLOWED),
    CommandSpec("T0", "_t", ALLOWED),
    # -- levelling the printer's own mesh (homed first) ------------------------------------------------
    *_specs("G29 G80", "_leveling", check="_leveling", firmware=_MARLIN_ONLY),
    *_specs("BED_MESH_CALIBRATE Z_TILT_ADJUST QUAD_GANTRY_LEVEL", "_leveling", check="_leveling"),
    *_specs("M420 BED_MESH_PROFILE BED_MESH_CLEAR", IGNORED),
    # -- heaters, fans, factors (values checked) -------------------------------------------------------
    CommandSpec("M104", "_m104", ALLOWED, check="_m104_m109"),
    CommandSpec("M109", "_m109", ALLOWED, check="_m104_m109"),
    CommandSpec("M140", "_m140", ALLOWED, check="_m140_m190"),
    CommandSpec("M190", "_m190", ALLOWED, check="_m140_m190"),
    CommandSpec("SET_HEATER_TEMPERATURE", "_set_heater_temperature", ALLOWED, check="_set_heater_temperature"),
    CommandSpec("TEMPERATURE_WAIT", "_temperature_wait", ALLOWED, check="_temperature_wait"),
    CommandSpec("TURN_OFF_HEATERS", "_turn_off_heaters", ALLOWED, check="_turn_off_heaters"),
    CommandSpec("M106", "_m106", ALLOWED),
    CommandSpec("M107", "_m107", ALLOWED),
    CommandSpec("SET_FAN_SPEED", "_set_fan_speed", ALLOWED),
    CommandSpec("M220", "_m220", ALLOWED, check="_factor"),
    CommandSpec("M221", "_m221", ALLOWED, check="_factor"),
    # PID autotune heats in cycles for minutes; the simulator does not model it.
    *_specs("M303 PID_CALIBRATE", IGNORED, AUTOTUNE, check="_autotune"),
    # -- motion limits (values checked against the profile) --------------------------------------------
    *_specs("M201", "_m201", check="_per_axis", firmware=_MARLIN_ONLY),
    *_specs("M203", "_m203", check="_per_axis", firmware=_MARLIN_ONLY),
    *_specs("M205", "_m205", check="_per_axis", firmware=_MARLIN_ONLY),
    CommandSpec("M204", "_m204", ALLOWED, check="_m204"),
    CommandSpec("SET_VELOCITY_LIMIT", "_set_velocity_limit", ALLOWED, check="_velocity_limit"),
    # -- extruder tuning and firmware retraction settings ----------------------------------------------
    *_specs("M900 M572 SET_PRESSURE_ADVANCE M207 M208 M209 SET_RETRACTION M593 SET_INPUT_SHAPER", IGNORED),
    # -- G-code state the validator and the simulator track --------------------------------------------
    CommandSpec("SET_GCODE_OFFSET", "_set_gcode_offset", ALLOWED, check="_gcode_offset"),
    CommandSpec("SAVE_GCODE_STATE", "_save_gcode_state", ALLOWED, check="_save_state"),
    CommandSpec("RESTORE_GCODE_STATE", "_restore_gcode_state", ALLOWED, check="_restore_state"),
    # -- messages, queries, progress, object labels, pauses for the user -------------------------------
    *_specs("M0 M1 M73 M105 M108 M110 M112 M114 M115 M117 M118 M119 M155 M300 M31 M75 M76 M77 M486 M412 "
            "M862.1 M862.3 M862.5 M862.6 EXCLUDE_OBJECT_DEFINE EXCLUDE_OBJECT_START EXCLUDE_OBJECT_END "
            "EXCLUDE_OBJECT SET_PRINT_STATS_INFO GET_POSITION STATUS RESPOND SET_DISPLAY_TEXT "
            "TIMELAPSE_TAKE_FRAME SET_IDLE_TIMEOUT SET_FILAMENT_SENSOR QUERY_ENDSTOPS SET_LED", IGNORED),
    # -- accepted by a firmware, but the validator cannot see what they do -----------------------------
    *_unchecked("switches to inches, and the validator checks distances in millimetres", "G20", effect="_g20"),
    *_unchecked("repeats lines the validator checked once (positions and extrusion accumulate unseen)",
                "SDCARD_LOOP_BEGIN SDCARD_LOOP_END SDCARD_LOOP_DESIST"),
    *_unchecked("switches the printer's power supply", "M80 M81"),
    *_unchecked("changes the firmware's debug output", "M111"),
    *_unchecked("controls the SD card or the print from it", "M20 M21 M22 M25 M27"),
    *_unchecked("drives a chamber heater the validator has no limits for", "M141 M191"),
    *_unchecked("changes colour mixing the validator does not model", "M142 M163 M164"),
    *_unchecked("runs G-code later, outside the program's order", "UPDATE_DELAYED_GCODE"),
    *_unchecked("is a console command, not part of a print", "HELP ACCEPT"),
    # -- safety interlocks --------------------------------------------------------------------------
    *_forbidden("allows cold extrusion (disables the min_extrude_temp interlock)", "M302"),
    *_forbidden("switches software endstops off (moves beyond the volume are no longer refused)", "M211"),
    *_forbidden("disables endstops", "M121"),
    *_forbidden("clears a firmware halt without a person looking at why it halted", "M999"),
    # -- stored settings: a program must not change the printer beyond its own run ----------------------
    *_forbidden("writes settings to EEPROM", "M500"),
    *_forbidden("loads stored settings, replacing the validated ones", "M501"),
    *_forbidden("resets settings to factory defaults", "M502"),
    *_forbidden("validates/writes EEPROM contents", "M504"),
    *_forbidden("rewrites printer.cfg and restarts the firmware", "SAVE_CONFIG"),
    *_forbidden("restarts the firmware mid-program", "FIRMWARE_RESTART"),
    *_forbidden("restarts the Klipper host mid-program", "RESTART"),
    *_forbidden("starts a firmware update", "M997"),
    # -- kinematics and motors: these invalidate every position the validator checked --------------------
    *_forbidden("declares a position without homing (defeats range checks)", "SET_KINEMATIC_POSITION"),
    *_forbidden("moves a stepper with no range checks", "FORCE_MOVE"),
    *_forbidden("switches single steppers on or off, losing their position", "SET_STEPPER_ENABLE"),
    *_forbidden("moves a stepper outside the toolhead's checks", "MANUAL_STEPPER"),
    *_forbidden("changes steps per mm (every distance after it is wrong)", "M92"),
    *_forbidden("changes microstepping", "M350"),
    *_forbidden("changes stepper driver direction or mode", "M569"),
    *_forbidden("changes motor current", "M906 SET_TMC_CURRENT"),
    *_forbidden("changes motor current (digipot)", "M907 M908"),
    *_forbidden("changes the TMC hybrid threshold", "M913"),
    *_forbidden("changes the stallguard (sensorless homing) threshold", "M914"),
    *_forbidden("writes a TMC driver register", "SET_TMC_FIELD"),
    *_forbidden("re-initialises the TMC drivers", "INIT_TMC"),
    *_forbidden("diagnostic register access, not part of a print", "DUMP_TMC"),
    *_forbidden("shifts the home offsets (and persists with M500)", "M206"),
    *_forbidden("sets the home offsets from the current position", "M428"),
    *_forbidden("changes the probe Z offset", "M851"),
    *_forbidden("changes delta geometry", "M665"),
    *_forbidden("changes endstop adjustments", "M666"),
    # -- heater control: gains and sensors are part of thermal-runaway protection ------------------------
    *_forbidden("changes hotend PID gains", "M301"),
    *_forbidden("changes bed PID gains", "M304"),
    *_forbidden("changes thermistor parameters", "M305"),
    *_forbidden("changes heater model parameters", "M307"),
    *_forbidden("changes heater PID gains", "SET_HEATER_PID"),
    # -- pins, buses and files: direct hardware or storage access --------------------------------------
    *_forbidden("drives a microcontroller pin directly (a heater pin too)", "M42"),
    *_forbidden("pin debugging", "M43"),
    *_forbidden("writes to the I2C bus", "M260"),
    *_forbidden("reads from the I2C bus", "M261"),
    *_forbidden("drives an output pin directly", "SET_PIN"),
    *_forbidden("switches a spindle or laser on", "M3 M4"),
    *_forbidden("spindle or laser control", "M5"),
    *_forbidden("writes a file to the SD card", "M28"),
    *_forbidden("ends writing a file to the SD card", "M29"),
    *_forbidden("deletes a file from the SD card", "M30", effect=IGNORED),
    *_forbidden("starts another program from the SD card (it would run unvalidated)", "M32", effect=IGNORED),
    *_forbidden("selects another program on the SD card (it would run unvalidated)", "M23", effect=IGNORED),
    *_forbidden("starts or resumes an SD program (it would run unvalidated)", "M24", effect=IGNORED),
    *_forbidden("calls a macro file (it would run unvalidated)", "M98"),
    *_forbidden("starts SD logging", "M928"),
    *_forbidden("starts another program (it would run unvalidated)", "SDCARD_PRINT_FILE"),
    *_forbidden("unloads the program being printed", "SDCARD_RESET_FILE"),
    *_forbidden("changes the serial baud rate", "M575"),
    *_forbidden("changes the endstop-abort setting", "M540"),
]

COMMANDS: MappingProxyType[str, CommandSpec] = MappingProxyType({spec.code: spec for spec in _TABLE})
"""Code → :class:`CommandSpec`, read-only."""
assert len(COMMANDS) == len(_TABLE), "a code is listed twice in the command table"

FORBIDDEN_COMMANDS: frozenset[str] = frozenset(c for c, s in COMMANDS.items() if s.safety == FORBIDDEN)
"""Always blocked: the command switches off a safety interlock, changes stored settings, kinematics, motor or
heater control, or runs something the validator has not seen."""
DEPLOYABLE_COMMANDS: frozenset[str] = frozenset(c for c, s in COMMANDS.items() if s.safety in (ALLOWED, AUTOTUNE))
"""What a program may contain without a per-printer allow-list: what slicers write for Klipper and Marlin
printers (autotune with its target checked)."""
MOTION_COMMANDS: frozenset[str] = frozenset(c for c, s in COMMANDS.items() if s.moves)
"""Commands whose words move the toolhead (G0–G3)."""


def spec(code: str) -> CommandSpec | None:
    """The table's entry for ``code`` (as the reader writes it), or ``None`` for an unknown code."""
    return COMMANDS.get(code)


def forbidden_reason(code: str) -> str | None:
    """Why ``code`` is forbidden (also for a subcode of a forbidden base, ``M500.1``), else ``None``."""
    entry = COMMANDS.get(code)
    if entry is None and "." in code:
        entry = COMMANDS.get(code.split(".", 1)[0])
    return entry.reason if entry is not None and entry.safety == FORBIDDEN else None


def deployable(code: str) -> bool:
    """Whether a program may contain ``code`` on any printer (no macro, no allow-list needed)."""
    return code in DEPLOYABLE_COMMANDS


def is_motion(code: str) -> bool:
    """Whether ``code`` is a move command (its X/Y/Z/E words move the toolhead)."""
    return code in MOTION_COMMANDS


def runs_on(code: str, firmware: str) -> bool:
    """Whether the ``firmware`` model (``klipper``/``marlin``) runs ``code`` (unknown codes: no)."""
    entry = COMMANDS.get(code)
    return entry is not None and firmware in entry.firmware


# -- how firmwares read a command's words ------------------------------------------------------------------
def heater_m_code_target(s: float | None, r: float | None, klipper: bool) -> tuple[float | None, bool]:
    """The target an ``M104``/``M109``/``M140``/``M190`` sets, and whether its wait also waits for cooling.

    Klipper reads only ``S`` (a missing ``S`` is 0: ``M109 R215`` switches the heater off). Marlin reads
    ``S`` (wait for heating only) and else ``R`` (wait for heating or cooling); with neither the target stays
    (``None``).

    >>> heater_m_code_target(None, 215.0, klipper=True), heater_m_code_target(None, 215.0, klipper=False)
    ((0.0, False), (215.0, True))
    """
    if klipper:
        return (s or 0.0), False
    if s is not None:
        return s, False
    if r is not None:
        return r, True
    return None, False


def motors_off_axes(letters: Collection[str], klipper: bool) -> list[int]:
    """Axes (0=X, 1=Y, 2=Z) an ``M84``/``M18`` with these words switches off, losing their homing.

    Klipper's ``M84`` always switches every motor off. Marlin's switches off the named axes, nothing when only
    ``E`` or ``S`` (an idle timeout) is given, and every axis when nothing is named.
    """
    named = [i for i, letter in enumerate("XYZ") if letter in letters]
    if klipper or not (named or "E" in letters or "S" in letters):
        return [0, 1, 2]
    return named


def macro_temperatures_c(args: dict[str, str], macro: MacroProfile) -> tuple[float, float]:
    """(hotend, bed) targets a call of a declared macro sets: the first of its temperature parameters given
    as a finite number (``PRINT_START EXTRUDER=210``), else the macro's defaults; 0 is 0 (off)."""

    def first(names: list[str], default: float) -> float:
        for name in names:
            text = args.get(name.upper())
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
        return default

    return (first(macro.hotend_temp_params, macro.default_hotend_temp_c),
            first(macro.bed_temp_params, macro.default_bed_temp_c))
