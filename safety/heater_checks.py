"""The validator's heater checks: targets in every form against the heater's range and the policy's cap,
waits, whether the hotend was waited for (extrusion allowed), tools, PID autotune."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from safety.findings import quote
from safety.policy import SafetyPolicy
from sim_bridge import failures as fail
from sim_bridge.commands import heater_m_code_target
from sim_bridge.gcode import Command
from sim_bridge.profiles import HeaterProfile, PrinterProfile


def num(value: float) -> str:
    """A number for a finding: at most 3 decimals, no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


class HeaterChecks:
    """Mixin of the validator's checker: the heater command checks."""

    profile: PrinterProfile
    policy: SafetyPolicy
    klipper: bool
    m: Any
    """The tracked machine (``safety.validator._Machine``)."""
    add: Callable[[str, str, str, str], None]
    _arg: Callable[[Command, str], float | None]

    def _heater(self, which: str) -> tuple[HeaterProfile, float]:
        if which == "extruder":
            heater, cap = self.profile.hotend, self.policy.max_hotend_temp_c
        else:
            heater, cap = self.profile.bed, self.policy.max_bed_temp_c
        return heater, heater.max_temp_c if cap is None else min(cap, heater.max_temp_c)

    def _temp_ok(self, which: str, target: float) -> bool:
        """Klipper's heater range check (0 always means off), with the policy's cap."""
        heater, hi = self._heater(which)
        if target == 0.0 or (heater.min_temp_c <= target <= hi and math.isfinite(target)):
            return True
        self.add(fail.TEMPERATURE_OUT_OF_RANGE, f"{which} target 0 or in [{num(heater.min_temp_c)}, {num(hi)}] C",
                 f"{num(target)} C", f"Requested temperature ({target:.1f}) out of range "
                 f"({heater.min_temp_c:.1f}:{hi:.1f}) for {which}")
        return False

    def _set_target(self, which: str, target: float, wait: bool) -> None:
        m = self.m
        if not self._temp_ok(which, target):
            return  # the firmware refuses it: the old target stays
        if which != "extruder":
            m.bed_target_c = target
            return
        if target < self.profile.min_extrude_temp_c:
            # Turned down: still hot for a while (a retraction is fine), but extruding needs a new wait.
            m.hotend_hot = m.hotend_ready or m.hotend_hot
            m.hotend_ready = False
        elif wait:
            m.hotend_ready = m.hotend_hot = True
        # Without a wait, a ready hotend stays ready (it moves between printing temperatures, all above
        # min_extrude_temp) and a cold one stays unready until something waits for it.
        m.hotend_target_c = target

    def _tool_ok(self, cmd: Command) -> bool:
        tool = cmd.get("T")
        if tool is not None and tool != 0.0:
            self.add(fail.UNKNOWN_TOOL, "T0 (one extruder)", f"T{num(tool)}",
                     f"{cmd.code} T{num(tool)}: this printer has one extruder")
            return False
        return True

    def _m104_m109(self, cmd: Command) -> None:
        if not self._tool_ok(cmd):
            return
        wait = cmd.code == "M109"
        s, r = cmd.get("S"), cmd.get("R")
        for extra in (cmd.get("B"),):
            if extra is not None:
                self._temp_ok("extruder", extra)
        if r is not None and (s is not None or self.klipper):
            self._temp_ok("extruder", r)
        target, _ = heater_m_code_target(s, r, self.klipper)
        if target is not None:
            self._set_target("extruder", target, wait)

    def _m140_m190(self, cmd: Command) -> None:
        s, r = cmd.get("S"), cmd.get("R")
        if r is not None and (s is not None or self.klipper):
            self._temp_ok("heater_bed", r)
        target, _ = heater_m_code_target(s, r, self.klipper)
        if target is not None:
            self._set_target("heater_bed", target, cmd.code == "M190")

    def _set_heater_temperature(self, cmd: Command) -> None:
        heater = cmd.args.get("HEATER", "").lower()
        target = self._arg(cmd, "TARGET")
        if heater not in ("extruder", "heater_bed"):
            self.add(fail.TEMPERATURE_OUT_OF_RANGE, "HEATER=extruder or HEATER=heater_bed", f"HEATER={heater}",
                     f"SET_HEATER_TEMPERATURE: unknown heater {heater!r} on this printer")
            return
        self._set_target(heater, target or 0.0, wait=False)

    def _temperature_wait(self, cmd: Command) -> None:
        sensor = cmd.args.get("SENSOR", "").lower()
        minimum, maximum = self._arg(cmd, "MINIMUM"), self._arg(cmd, "MAXIMUM")
        if minimum is None and maximum is None:
            self.add(fail.INVALID_COMMAND, "MINIMUM= or MAXIMUM=", "none", "TEMPERATURE_WAIT needs MINIMUM or MAXIMUM")
            return
        if sensor not in ("extruder", "heater_bed"):
            return
        target = self.m.hotend_target_c if sensor == "extruder" else self.m.bed_target_c
        _, hi = self._heater(sensor)
        if minimum is not None and (minimum > max(target, 0.0) + 1e-9 or minimum > hi):
            self.add(fail.HEATER_TIMEOUT, f"MINIMUM <= the {sensor} target ({num(target)} C)",
                     f"MINIMUM={num(minimum)} C", "waits for a temperature the heater is not set to reach: "
                     "the program would hang with the heater on")
            return
        if sensor == "extruder" and minimum is not None and minimum >= self.profile.min_extrude_temp_c:
            self.m.hotend_ready = self.m.hotend_hot = True

    def _turn_off_heaters(self, cmd: Command) -> None:
        self._set_target("extruder", 0.0, False)
        self._set_target("heater_bed", 0.0, False)

    def _autotune(self, cmd: Command) -> None:
        if cmd.code == "M303":
            which = "heater_bed" if (cmd.get("E") or 0.0) < 0.0 else "extruder"
            target = cmd.get("S")
        else:
            which = cmd.args.get("HEATER", "").lower()
            target = self._arg(cmd, "TARGET")
        if which not in ("extruder", "heater_bed") or target is None or target <= 0.0:
            self.add(fail.FORBIDDEN_COMMAND, "autotune of extruder or heater_bed with a target", quote(cmd.text),
                     f"{cmd.code} without a known heater and target is forbidden")
            return
        _, hi = self._heater(which)
        if target > hi:
            self.add(fail.FORBIDDEN_COMMAND, f"autotune target <= {num(hi)} C ({which})", f"{num(target)} C",
                     f"{cmd.code}: PID autotune to {num(target)} C above the {which} limit of {num(hi)} C")
