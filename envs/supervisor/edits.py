"""Edits of the reference program's layers as the supervisor env runs them: its fan setting, a layer shift.

Lines are read with :func:`sim_bridge.gcode.parse_line` and written back with its formatter
(:func:`sim_bridge.gcode.to_text`); lines an edit does not touch are kept as they were.
"""

from __future__ import annotations

from collections.abc import Callable

from sim_bridge.gcode import Command, format_command, parse_line, to_text

SHIFT_DECIMALS = 3
"""Decimals of a shifted X or Y (the slicer writes coordinates to 3)."""
FAN_CODES = ("M106", "M107")
MOVE_CODES = ("G0", "G1")


def _edit_lines(text: str, edit: Callable[[Command], str | None]) -> str:
    """``text`` with each command line for which ``edit`` returns a text replaced by it (line ends kept)."""
    out = []
    for number, raw in enumerate(text.splitlines(keepends=True), 1):
        body = raw.rstrip("\r\n")
        cmd = parse_line(body, number)
        new = edit(cmd) if cmd is not None and cmd.code else None
        out.append(raw if new is None else new + raw[len(body):])
    return "".join(out)


def override_fan(text: str, fan_pwm: int) -> str:
    """``text`` with every part-fan command replaced by ``M106 S<fan_pwm>`` (the supervisor's setting wins).

    >>> override_fan("G1 Z0.4\\nm106 s255 ; full\\nM107\\n", 100)
    'G1 Z0.4\\nM106 S100\\nM106 S100\\n'
    """
    fan = format_command("M106", {"S": fan_pwm})
    return _edit_lines(text, lambda cmd: fan if cmd.code in FAN_CODES else None)


def shift_xy(text: str, dx_mm: float, dy_mm: float) -> str:
    """``text`` with the X and Y of every G0/G1 move offset (a layer shift; absolute XY assumed).

    >>> shift_xy("G1 X10 Y5 E0.1\\nM106 S3\\nG1 Z0.4 F300\\n", 1.5, -1)
    'G1 X11.5 Y4 E0.1\\nM106 S3\\nG1 Z0.4 F300\\n'
    """
    offset = {"X": dx_mm, "Y": dy_mm}

    def shifted(cmd: Command) -> str | None:
        if cmd.code not in MOVE_CODES or not any(cmd.get(axis) is not None for axis in offset):
            return None
        for axis, delta in offset.items():
            value = cmd.get(axis)
            if value is not None:
                cmd.params[axis] = round(value + delta, SHIFT_DECIMALS)
        return to_text(cmd)

    return _edit_lines(text, shifted)
