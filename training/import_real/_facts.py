"""The firmware and failure facts the importer reads with, kept in one file of the package: Klipper's error
messages and the failure modes they mean, the failure modes seen only on real printers, user-feedback wording,
slicer layer markers and the motion commands.

These belong in the project's own vocabularies in ``sim_bridge`` (failure names, layer markers, the command
table); until those exist, the importer reads them from here and nowhere else.
"""

from __future__ import annotations

import re

from sim_bridge.failures import DEFECT_MODES, FATAL_MODES

REAL_WORLD_MODES = frozenset({
    "layer_shift", "warping", "stringing", "filament_runout", "power_loss", "mcu_shutdown",
    "mcu_communication_lost", "firmware_shutdown", "other",
})
"""Failure modes seen only on real printers (the simulator does not model them)."""
KNOWN_MODES = FATAL_MODES | DEFECT_MODES | REAL_WORLD_MODES

FEEDBACK_MODES: dict[str, str] = {
    "spaghetti": "extrusion_in_mid_air", "mid air extrusion": "extrusion_in_mid_air",
    "printing in mid air": "extrusion_in_mid_air", "air printing": "extrusion_in_mid_air",
    "birds nest": "extrusion_in_mid_air", "bird's nest": "extrusion_in_mid_air",
    "layer shift": "layer_shift", "layer shifting": "layer_shift", "shifted layers": "layer_shift",
    "clog": "under_extrusion", "clogged": "under_extrusion", "clogged nozzle": "under_extrusion",
    "under extrusion": "under_extrusion", "underextrusion": "under_extrusion", "gaps": "under_extrusion",
    "not sticking": "first_layer_too_high", "poor adhesion": "first_layer_too_high",
    "bed adhesion": "first_layer_too_high", "adhesion": "first_layer_too_high",
    "detached": "first_layer_too_high", "came loose": "first_layer_too_high",
    "elephant foot": "first_layer_too_low", "nozzle too close": "first_layer_too_low",
    "squished first layer": "first_layer_too_low",
    "warping": "warping", "warped": "warping", "lifting corners": "warping",
    "stringing": "stringing", "oozing": "stringing",
    "crash": "nozzle_collision", "nozzle crash": "nozzle_collision", "collision": "nozzle_collision",
    "knocked over": "nozzle_collision", "nozzle hit": "nozzle_collision",
    "curling": "overhang_without_cooling", "overhang": "overhang_without_cooling",
    "drooping overhang": "overhang_without_cooling", "sagging overhang": "overhang_without_cooling",
    "thermal runaway": "thermal_runaway", "cold extrusion": "cold_extrusion",
    "filament runout": "filament_runout", "runout": "filament_runout",
    "ran out of filament": "filament_runout", "power loss": "power_loss", "power failure": "power_loss",
}
"""Feedback wording → failure mode (after lower-casing and turning ``_``/``-`` into spaces). A mode name
itself (``layer_shift``) is accepted too; anything else becomes ``other`` with the text in the message.
"Not sticking" counts as ``first_layer_too_high`` (a nozzle too far from the bed is its usual cause), while
warping keeps a mode of its own: it is thermal, and the simulator has no model of it."""

KLIPPER_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), m) for p, m in (
    (r"^Move out of range: ", "move_out_of_range"),
    (r"^Must home axis first", "must_home_first"),
    (r"^Extrude below minimum temp", "cold_extrusion"),
    (r"^Extrude only move too long", "extrude_only_too_long"),
    (r"^Move exceeds maximum extrusion", "extrusion_too_large"),
    (r"^Requested temperature \(.*\) out of range", "temperature_out_of_range"),
    (r"^Heater \S+ not heating at expected rate", "thermal_runaway"),
    (r"^MCU '[^']*' shutdown: \S", "mcu_shutdown"),
    (r"^MCU shutdown$", "mcu_shutdown"),
    (r"^Timer too close", "mcu_shutdown"),
    (r"^Lost communication with MCU", "mcu_communication_lost"),
))
"""Klipper's error messages (klippy/toolhead.py, kinematics/extruder.py, extras/heaters.py,
extras/verify_heater.py, mcu.py) → failure modes. A shutdown reason that matches none is
``firmware_shutdown``. ``MCU 'mcu' shutdown:`` with no reason is the dump after another shutdown, not one."""

_SHUTDOWN_RE = re.compile(r"^Transition to shutdown state: (.*)$")

MOTION_CODES = frozenset({"G0", "G1", "G2", "G3"})
"""G-code moves (linear and arcs)."""

LAYER_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((n, re.compile(p)) for n, p in (
    ("layer_change", r"^;LAYER_CHANGE\s*$"),
    ("cura", r"^;LAYER:(-?\d+)\s*$"),
    ("bambu", r"^;\s*CHANGE_LAYER\s*$"),
    ("icesl", r"^;\s*<layer>\s*$"),
    ("skeinforge", r"^\(<layer>"),
))
"""Layer markers: PrusaSlicer/SuperSlicer/Orca/Creality Print ``;LAYER_CHANGE``, Cura/ideaMaker ``;LAYER:n``
(each number counted once), Bambu ``; CHANGE_LAYER``, IceSL ``; <layer>``, Skeinforge ``(<layer> z )``.
The family with the most markers in a file counts its layers."""


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
    return "firmware_shutdown" if shutdown else None


def klipper_error_text(message: str) -> tuple[str, bool]:
    """The error text of a log line (a shutdown's reason without "Transition to shutdown state: "), and
    whether it was a shutdown."""
    message = message.removeprefix("!! ").strip()
    shutdown = _SHUTDOWN_RE.match(message)
    return (shutdown.group(1).strip(), True) if shutdown else (message, False)
