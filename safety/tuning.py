"""Live tuning: commands a supervisor sends to a printing printer, judged against tight per-command windows.

A batch is one or more lines, one command each. Only the policy's ``tuning_commands`` pass, each inside its
window: flow (``M221 S``) and speed (``M220 S``) factors in the policy's percent windows, a hotend target
(``M104 S``) within ``tuning_hotend_step_c`` of the job's temperature and inside the heater's range, a bed
target (``M140 S``, only if the policy lists it) within ``tuning_bed_step_c``, the part fan (``M106 S``,
``M107``) and pressure advance (``SET_PRESSURE_ADVANCE ADVANCE=``). The defaults are those of
``envs.supervisor`` (the environments train against the same limits deployment enforces).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from safety.disguise import line_findings
from safety.findings import Verdict, Violation
from safety.policy import SafetyPolicy
from safety.rules import forbidden_finding
from sim_bridge import failures as fail
from sim_bridge.gcode import GcodeError, GcodeReader, parse_line
from sim_bridge.profiles import PrinterProfile


@dataclass(frozen=True)
class TuningState:
    """The print's reference settings, which the tuning windows are centred on."""

    hotend_temp_c: float
    """The job's hotend temperature: ``M104 S`` must stay within ``tuning_hotend_step_c`` of it."""
    bed_temp_c: float = 0.0
    """The job's bed temperature: ``M140 S`` must stay within ``tuning_bed_step_c`` of it."""
    flow_percent: float = 100.0
    """Extrusion factor in force (reported in messages)."""
    speed_percent: float = 100.0
    """Speed factor in force (reported in messages)."""


def _fmt(value: float) -> str:
    return f"{value:g}"


def validate_tuning(command: str, state: TuningState, profile: PrinterProfile,
                    policy: SafetyPolicy | None = None) -> Verdict:
    """Judge a batch of live-tuning commands (one per line; blank and comment lines are skipped).

    >>> from sim_bridge.profiles import load_printer
    >>> v = validate_tuning("M221 S95\\nM104 S260\\nG28", TuningState(210.0), load_printer("ender3-klipper"))
    >>> [(f.line, f.rule) for f in v.violations]
    [(2, 'tuning_window'), (3, 'not_tuning_command')]
    """
    policy = policy or SafetyPolicy()
    data = command.encode("utf-8")
    found: list[Violation] = []
    accepted = 0
    lines = 0
    reader = GcodeReader(data, name="<tuning>")
    try:
        for line_no, raw in reader.numbered_lines():
            lines = line_no
            warnings = reader.warnings
            before = len(warnings)
            cmd = parse_line(raw, line_no, "<tuning>", warnings)
            checksum_bad = any("checksum mismatch" in w.message for w in warnings[before:])
            quoted = raw.strip()[:200]
            problems = list(line_findings(raw, cmd, checksum_bad))
            if cmd is not None and cmd.code and not problems:
                if accepted >= policy.tuning_max_commands:
                    problems.append((fail.NOT_TUNING_COMMAND, f"at most {policy.tuning_max_commands} commands per batch",
                                     f"command {accepted + 1}", "too many commands in one tuning step"))
                else:
                    problem = _check(cmd.code, cmd.params, cmd.args, cmd.text, state, profile, policy)
                    if problem is None:
                        accepted += 1
                    else:
                        problems.append(problem)
            found.extend(Violation(line_no, quoted, *p) for p in problems)
    except GcodeError as exc:
        found.append(Violation(exc.line, "", fail.UNREADABLE, "printable text", "binary", exc.reason))
    return Verdict(tuple(found), lines, hashlib.sha256(data).hexdigest())


def _window(what: str, code: str, value: float | None, lo: float, hi: float, unit: str
            ) -> tuple[str, str, str, str] | None:
    limit = f"{what} in [{_fmt(lo)}, {_fmt(hi)}] {unit}"
    if value is None or not math.isfinite(value):
        return fail.INVALID_COMMAND, limit, "no value", f"{code} needs a {what} value in [{_fmt(lo)}, {_fmt(hi)}] {unit}"
    if not lo <= value <= hi:
        return (fail.TUNING_WINDOW, limit, f"{_fmt(value)} {unit}",
                f"{code}: {what} {_fmt(value)} {unit} out of the live-tuning window [{_fmt(lo)}, {_fmt(hi)}]")
    return None


def _check(code: str, params: dict[str, float], args: dict[str, str], text: str, state: TuningState,
           profile: PrinterProfile, policy: SafetyPolicy) -> tuple[str, str, str, str] | None:
    """The finding for one tuning command, or ``None`` when it is inside its window."""
    forbidden = forbidden_finding(code, "never sent to a printer")
    if forbidden is not None:
        return forbidden
    if code not in policy.tuning_commands:
        return (fail.NOT_TUNING_COMMAND, ", ".join(policy.tuning_commands), code,
                f"{code} is not a live-tuning command (allowed: {', '.join(policy.tuning_commands)})")
    if code == "SET_PRESSURE_ADVANCE":
        extra = sorted(set(args) - {"ADVANCE"})
        if extra or params:
            what = ", ".join(extra) or text
            return fail.INVALID_COMMAND, "ADVANCE= only", what, f"{code}: only ADVANCE= may be set, got {what}"
        try:
            value = float(args["ADVANCE"]) if "ADVANCE" in args else None
        except ValueError:
            value = math.nan
        return _window("pressure advance", code, value, 0.0, policy.tuning_pressure_advance_max_s, "s")
    extra = sorted(set(params) - ({"S"} if code != "M107" else set()))
    if extra or args:
        what = ", ".join(extra) or ", ".join(args)
        return fail.INVALID_COMMAND, f"{code} {'S' if code != 'M107' else 'alone'}", what, \
            f"{code}: unexpected parameter {what}"
    if code == "M107":
        return None
    value = params.get("S")
    value = None if value is None or math.isnan(value) else value
    if code == "M221":
        problem = _window("flow", code, value, policy.flow_percent_min, policy.flow_percent_max, "%")
        return _with_current(problem, f"flow now {_fmt(state.flow_percent)} %")
    if code == "M220":
        problem = _window("speed", code, value, policy.speed_percent_min, policy.speed_percent_max, "%")
        return _with_current(problem, f"speed now {_fmt(state.speed_percent)} %")
    if code == "M104":
        cap = profile.hotend.max_temp_c if policy.max_hotend_temp_c is None else min(
            policy.max_hotend_temp_c, profile.hotend.max_temp_c)
        step = policy.tuning_hotend_step_c
        return _window("hotend target", code, value, state.hotend_temp_c - step,
                       min(state.hotend_temp_c + step, cap), "C")
    if code == "M140":
        cap = profile.bed.max_temp_c if policy.max_bed_temp_c is None else min(
            policy.max_bed_temp_c, profile.bed.max_temp_c)
        step = policy.tuning_bed_step_c
        return _window("bed target", code, value, state.bed_temp_c - step, min(state.bed_temp_c + step, cap), "C")
    return _window("fan", code, value, 0.0, policy.tuning_fan_pwm_max, "PWM")


def _with_current(problem: tuple[str, str, str, str] | None, note: str) -> tuple[str, str, str, str] | None:
    if problem is None:
        return None
    rule, limit, value, message = problem
    return rule, limit, value, f"{message} ({note})"
