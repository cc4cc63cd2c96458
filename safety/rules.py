"""The validator's vocabulary: rule ids, forbidden commands (with why), and the commands allowed by default.

A command is judged in this order: forbidden (always blocked, no allow-list can lift it), then allowed (the
built-in list below, the printer's declared macros, the policy's ``allow_commands``), else unknown and
blocked. Codes are compared as the reader writes them: upper case, leading zeros dropped (``M0302`` is
``M302``); a subcode (``M500.1``) is judged by its base code when the base is forbidden.
"""

from __future__ import annotations

# -- rule ids (the ``rule`` field of a finding) ------------------------------------------------------------
FORBIDDEN = "forbidden-command"
UNKNOWN = "unknown-command"
OUT_OF_RANGE = "out-of-range"
NOT_HOMED = "not-homed"
COLD_EXTRUSION = "cold-extrusion"
CROSS_SECTION = "cross-section"
EXTRUDE_ONLY = "extrude-only-distance"
HEATER_RANGE = "heater-range"
HEATER_WAIT = "heater-wait"
UNKNOWN_TOOL = "unknown-tool"
FEED_RATE = "feed-rate"
ACCELERATION = "acceleration"
FACTOR_RANGE = "factor-range"
Z_INTO_BED = "z-into-bed"
GCODE_OFFSET = "gcode-offset"
HIDDEN_IN_COMMENT = "hidden-in-comment"
AMBIGUOUS_LINE = "ambiguous-line"
CHECKSUM = "checksum-mismatch"
BAD_ARGUMENT = "bad-argument"
UNREADABLE = "unreadable"
TUNING_WINDOW = "tuning-window"
NOT_TUNING = "not-tuning-command"

FORBIDDEN_REASONS: dict[str, str] = {
    # Safety interlocks.
    "M302": "allows cold extrusion (disables the min_extrude_temp interlock)",
    "M211": "switches software endstops off (moves beyond the volume are no longer refused)",
    "M121": "disables endstops",
    "M999": "clears a firmware halt without a person looking at why it halted",
    # Stored settings: a program must not change the printer beyond its own run.
    "M500": "writes settings to EEPROM",
    "M501": "loads stored settings, replacing the validated ones",
    "M502": "resets settings to factory defaults",
    "M504": "validates/writes EEPROM contents",
    "SAVE_CONFIG": "rewrites printer.cfg and restarts the firmware",
    "FIRMWARE_RESTART": "restarts the firmware mid-program",
    "RESTART": "restarts the Klipper host mid-program",
    "M997": "starts a firmware update",
    # Kinematics and motors: these invalidate every position the validator checked.
    "SET_KINEMATIC_POSITION": "declares a position without homing (defeats range checks)",
    "FORCE_MOVE": "moves a stepper with no range checks",
    "SET_STEPPER_ENABLE": "switches single steppers on or off, losing their position",
    "MANUAL_STEPPER": "moves a stepper outside the toolhead's checks",
    "M92": "changes steps per mm (every distance after it is wrong)",
    "M350": "changes microstepping",
    "M569": "changes stepper driver direction or mode",
    "M906": "changes motor current",
    "M907": "changes motor current (digipot)",
    "M908": "changes motor current (digipot)",
    "M913": "changes the TMC hybrid threshold",
    "M914": "changes the stallguard (sensorless homing) threshold",
    "SET_TMC_CURRENT": "changes motor current",
    "SET_TMC_FIELD": "writes a TMC driver register",
    "INIT_TMC": "re-initialises the TMC drivers",
    "DUMP_TMC": "diagnostic register access, not part of a print",
    "M206": "shifts the home offsets (and persists with M500)",
    "M428": "sets the home offsets from the current position",
    "M851": "changes the probe Z offset",
    "M665": "changes delta geometry",
    "M666": "changes endstop adjustments",
    # Heater control: gains and sensors are part of thermal-runaway protection.
    "M301": "changes hotend PID gains",
    "M304": "changes bed PID gains",
    "M305": "changes thermistor parameters",
    "M307": "changes heater model parameters",
    "SET_HEATER_PID": "changes heater PID gains",
    # Pins, buses and files: direct hardware or storage access.
    "M42": "drives a microcontroller pin directly (a heater pin too)",
    "M43": "pin debugging",
    "M260": "writes to the I2C bus",
    "M261": "reads from the I2C bus",
    "SET_PIN": "drives an output pin directly",
    "M3": "switches a spindle or laser on",
    "M4": "switches a spindle or laser on",
    "M5": "spindle or laser control",
    "M28": "writes a file to the SD card",
    "M29": "ends writing a file to the SD card",
    "M30": "deletes a file from the SD card",
    "M32": "starts another program from the SD card (it would run unvalidated)",
    "M23": "selects another program on the SD card (it would run unvalidated)",
    "M24": "starts or resumes an SD program (it would run unvalidated)",
    "M98": "calls a macro file (it would run unvalidated)",
    "M928": "starts SD logging",
    "SDCARD_PRINT_FILE": "starts another program (it would run unvalidated)",
    "SDCARD_RESET_FILE": "unloads the program being printed",
    "M575": "changes the serial baud rate",
    "M540": "changes the endstop-abort setting",
}
"""Always blocked: the command switches off a safety interlock, changes stored settings, kinematics, motor or
heater control, or runs something the validator has not seen."""

FORBIDDEN_COMMANDS: frozenset[str] = frozenset(FORBIDDEN_REASONS)

AUTOTUNE_COMMANDS = frozenset({"M303", "PID_CALIBRATE"})
"""PID autotune: allowed only with a target inside the heater's range (the policy may lower it)."""

MOTION = frozenset({"G0", "G1", "G2", "G3"})
HEATER_COMMANDS = frozenset({"M104", "M109", "M140", "M190", "SET_HEATER_TEMPERATURE", "TEMPERATURE_WAIT"})

ALLOWED_COMMANDS: frozenset[str] = frozenset({
    # Motion and modes.
    "G0", "G1", "G2", "G3", "G4", "G10", "G11", "G17", "G21", "G28", "G90", "G91", "G92", "M82", "M83",
    "M17", "M18", "M84", "M400", "T0",
    # Levelling and probing the printer's own mesh (homed first).
    "G29", "G80", "M420", "BED_MESH_CALIBRATE", "BED_MESH_PROFILE", "BED_MESH_CLEAR", "Z_TILT_ADJUST",
    "QUAD_GANTRY_LEVEL",
    # Heaters, fans, flow and speed factors (values are checked).
    "M104", "M109", "M140", "M190", "SET_HEATER_TEMPERATURE", "TEMPERATURE_WAIT", "TURN_OFF_HEATERS",
    "M106", "M107", "SET_FAN_SPEED", "M220", "M221", "M303", "PID_CALIBRATE",
    # Motion limits (values are checked against the profile).
    "M201", "M203", "M204", "M205", "SET_VELOCITY_LIMIT",
    # Extruder tuning and firmware retraction settings.
    "M900", "M572", "SET_PRESSURE_ADVANCE", "M207", "M208", "M209", "SET_RETRACTION", "M593",
    "SET_INPUT_SHAPER",
    # State and offsets the validator tracks.
    "SET_GCODE_OFFSET", "SAVE_GCODE_STATE", "RESTORE_GCODE_STATE",
    # Messages, queries, progress, object labels, pauses for the user.
    "M0", "M1", "M73", "M105", "M108", "M110", "M112", "M114", "M115", "M117", "M118", "M119", "M155",
    "M300", "M31", "M75", "M76", "M77", "M486", "M412", "M862.1", "M862.3", "M862.5", "M862.6",
    "EXCLUDE_OBJECT_DEFINE", "EXCLUDE_OBJECT_START", "EXCLUDE_OBJECT_END", "EXCLUDE_OBJECT",
    "SET_PRINT_STATS_INFO", "GET_POSITION", "STATUS", "RESPOND", "SET_DISPLAY_TEXT",
    "TIMELAPSE_TAKE_FRAME", "SET_IDLE_TIMEOUT", "SET_FILAMENT_SENSOR", "QUERY_ENDSTOPS", "SET_LED",
})
"""What a program may contain without a per-printer allow-list: what slicers write for Klipper and Marlin
printers. Loops (``SDCARD_LOOP_BEGIN``, ``M808``), vendor codes (Bambu ``M620``…) and macros not declared in
the printer profile are not here: the validator cannot see what they do."""


def forbidden_reason(code: str) -> str | None:
    """Why ``code`` is forbidden (also for a subcode of a forbidden base, ``M500.1``), else ``None``."""
    reason = FORBIDDEN_REASONS.get(code)
    if reason is None and "." in code:
        reason = FORBIDDEN_REASONS.get(code.split(".", 1)[0])
    return reason
