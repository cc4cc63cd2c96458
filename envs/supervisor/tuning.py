"""Live tuning: the windows a supervisor's commands must stay inside, and the check every action passes.

The windows are the safety layer's (:class:`safety.policy.SafetyPolicy` defaults): the environments train
against the limits deployment enforces, and refuse (and penalise) anything outside them, as deployment will.
"""

from __future__ import annotations

from dataclasses import dataclass

from safety.policy import SafetyPolicy
from safety.tuning import TuningState, validate_tuning
from sim_bridge.gcode import format_command, parse_line
from sim_bridge.profiles import PrinterProfile

_POLICY = SafetyPolicy()
FLOW_PERCENT_MIN = _POLICY.flow_percent_min
"""Lowest extrusion factor (``M221 S``), percent."""
FLOW_PERCENT_MAX = _POLICY.flow_percent_max
"""Highest extrusion factor (``M221 S``), percent."""
SPEED_PERCENT_MIN = _POLICY.speed_percent_min
"""Lowest speed factor (``M220 S``), percent."""
SPEED_PERCENT_MAX = _POLICY.speed_percent_max
"""Highest speed factor (``M220 S``), percent."""
HOTEND_TUNE_DELTA_C = _POLICY.tuning_hotend_step_c
"""``M104 S`` may move the hotend target at most this far from the job's temperature (and never above the
printer's ``max_temp``)."""
FAN_PWM_MAX = _POLICY.tuning_fan_pwm_max
"""``M106 S`` range is 0 … this."""
PRESSURE_ADVANCE_MAX_S = _POLICY.tuning_pressure_advance_max_s
"""``SET_PRESSURE_ADVANCE ADVANCE=`` range is 0 … this (seconds)."""


@dataclass
class Tuning:
    """A tuning action checked against the live-tuning windows."""

    accepted: list[str]
    """Accepted commands, one canonical line each, in order."""
    refused: list[str]
    """Why each refused line was refused (line, command, rule, limit, value)."""


def check_tuning(text: str, job_hotend_c: float, profile: PrinterProfile) -> Tuning:
    """Check ``text`` with the safety layer's live-tuning validator (:func:`safety.tuning.validate_tuning`):
    each command with no finding is accepted (in canonical form), each finding refuses its line. Blank and
    comment lines are ignored.

    >>> from sim_bridge.printers import load_printer
    >>> t = check_tuning("M221 S95\\n; note\\nM104 S260\\nG28", 210.0, load_printer("ender3-klipper"))
    >>> t.accepted
    ['M221 S95']
    >>> [r.split(":")[0] for r in t.refused]
    ['line 3', 'line 4']
    """
    verdict = validate_tuning(text, TuningState(hotend_temp_c=job_hotend_c), profile)
    refused_lines = {v.line for v in verdict.violations}
    accepted = []
    for number, raw in enumerate(text.splitlines(), 1):
        if number in refused_lines:
            continue
        cmd = parse_line(raw, number)
        if cmd is not None and cmd.code:
            accepted.append(format_command(cmd.code, cmd.params, args=cmd.args))
    return Tuning(accepted, [f"line {v.line}: {v.message}" for v in verdict.violations])
