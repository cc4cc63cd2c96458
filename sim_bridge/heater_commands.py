"""The interpreter's heater and fan commands: targets (with Klipper's range check), waits, the part fan.

``M104``/``M109``/``M140``/``M190`` (words read as :func:`sim_bridge.commands.heater_m_code_target` says),
``SET_HEATER_TEMPERATURE``, ``TEMPERATURE_WAIT``, ``TURN_OFF_HEATERS``, ``M106``/``M107`` and
``SET_FAN_SPEED``. Targets and waits become timeline events; the heaters themselves run later
(:mod:`sim_bridge.thermal`).
"""

from __future__ import annotations

from collections.abc import Callable

from sim_bridge import failures as fail
from sim_bridge.commands import heater_m_code_target
from sim_bridge.events import (
    EV_BED_TARGET,
    EV_FAN,
    EV_HOTEND_TARGET,
    EV_WAIT_BED,
    EV_WAIT_HOTEND,
    EV_WAIT_HOTEND_BOTH,
)
from sim_bridge.gcode import Command
from sim_bridge.machine import MachineState
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile


class HeaterCommands:
    """Mixin of :class:`~sim_bridge.interpreter.Interpreter`: the heater and fan command handlers."""

    state: MachineState
    profile: PrinterProfile
    options: SimOptions
    klipper: bool
    _stop_pending: bool
    _fail: Callable[[str, str, int], None]
    _notice: Callable[[str, str, int], None]
    _event: Callable[..., None]
    _arg_float: Callable[..., float | None]

    def _check_temp(self, which: str, target: float, line: int) -> None:
        heater = self.profile.hotend if which == "extruder" else self.profile.bed
        if target != 0.0 and (target < heater.min_temp_c or target > heater.max_temp_c):
            self._fail(fail.TEMPERATURE_OUT_OF_RANGE,
                       f"Requested temperature ({target:.1f}) out of range "
                       f"({heater.min_temp_c:.1f}:{heater.max_temp_c:.1f})", line)

    def _set_hotend(self, target: float, line: int, wait: bool, both: bool = False) -> None:
        self._check_temp("extruder", target, line)
        self.state.hotend_target_c = target
        self._event(EV_HOTEND_TARGET, target, line)
        if wait and target > 0.0:
            if not self.options.klipper_batch_mode:
                self._stop_pending = True
            self._event(EV_WAIT_HOTEND_BOTH if both else EV_WAIT_HOTEND, target, line)

    def _set_bed(self, target: float, line: int, wait: bool) -> None:
        self._check_temp("heater_bed", target, line)
        self.state.bed_target_c = target
        self._event(EV_BED_TARGET, target, line)
        if wait and target > 0.0:
            if not self.options.klipper_batch_mode:
                self._stop_pending = True
            self._event(EV_WAIT_BED, target, line)

    def _tool_ok(self, cmd: Command) -> bool:
        tool = cmd.get("T")
        if tool is not None and tool != 0:
            self._notice(fail.UNKNOWN_TOOL, f"T{tool:g}: this printer has one extruder; command ignored", cmd.line)
            return False
        return True

    def _m104(self, cmd: Command) -> None:
        if self._tool_ok(cmd):
            target, _ = heater_m_code_target(cmd.get("S"), cmd.get("R"), self.klipper)
            if target is not None:
                self._set_hotend(target, cmd.line, wait=False)

    def _m109(self, cmd: Command) -> None:
        if self._tool_ok(cmd):
            target, both = heater_m_code_target(cmd.get("S"), cmd.get("R"), self.klipper)
            if target is not None:
                self._set_hotend(target, cmd.line, wait=True, both=both)

    def _m140(self, cmd: Command) -> None:
        target, _ = heater_m_code_target(cmd.get("S"), cmd.get("R"), self.klipper)
        if target is not None:
            self._set_bed(target, cmd.line, wait=False)

    def _m190(self, cmd: Command) -> None:
        target, _ = heater_m_code_target(cmd.get("S"), cmd.get("R"), self.klipper)
        if target is not None:
            self._set_bed(target, cmd.line, wait=True)

    def _m106(self, cmd: Command) -> None:
        if (cmd.get("P", 0.0) or 0.0) != 0.0:
            return
        value = cmd.get("S", 255.0)
        self.state.fan = min(1.0, max(0.0, (255.0 if value is None else value) / 255.0))
        self._event(EV_FAN, self.state.fan * self.profile.part_fan_max_rpm_fraction, cmd.line)

    def _m107(self, cmd: Command) -> None:
        if (cmd.get("P", 0.0) or 0.0) != 0.0:
            return
        self.state.fan = 0.0
        self._event(EV_FAN, 0.0, cmd.line)

    def _set_fan_speed(self, cmd: Command) -> None:
        try:
            speed = float(cmd.args.get("SPEED", "0"))
        except ValueError:
            self._fail(fail.INVALID_COMMAND, f"SET_FAN_SPEED SPEED={cmd.args.get('SPEED')!r}: not a number", cmd.line)
        self.state.fan = min(1.0, max(0.0, speed))
        self._event(EV_FAN, self.state.fan * self.profile.part_fan_max_rpm_fraction, cmd.line)

    def _set_heater_temperature(self, cmd: Command) -> None:
        heater = cmd.args.get("HEATER", "").lower()
        target = self._arg_float(cmd, "TARGET", 0.0) or 0.0
        if heater == "extruder":
            self._set_hotend(target, cmd.line, wait=False)
        elif heater == "heater_bed":
            self._set_bed(target, cmd.line, wait=False)
        else:
            self._fail(fail.INVALID_COMMAND, f"SET_HEATER_TEMPERATURE: unknown heater {heater!r} "
                       "(this printer has 'extruder' and 'heater_bed')", cmd.line)

    def _temperature_wait(self, cmd: Command) -> None:
        sensor = cmd.args.get("SENSOR", "").lower()
        minimum = self._arg_float(cmd, "MINIMUM")
        if minimum is None:
            return
        if not self.options.klipper_batch_mode:
            self._stop_pending = True
        if sensor == "extruder":
            self._event(EV_WAIT_HOTEND, minimum, cmd.line)
        elif sensor == "heater_bed":
            self._event(EV_WAIT_BED, minimum, cmd.line)

    def _turn_off_heaters(self, cmd: Command) -> None:
        self._set_hotend(0.0, cmd.line, wait=False)
        self._set_bed(0.0, cmd.line, wait=False)
