"""The virtual MCU's peripherals: steppers, endstops, trigger syncs, outputs, ADC inputs and the heaters'
physics behind them.

Each class implements the firmware behaviour Klipper's ``docs/MCU_Commands.md`` describes for its commands
(our code, from that description): the MCU core (:mod:`sim_bridge.klippy.virtual_mcu`) decodes a command and
calls the method of the object its ``oid`` names. Time is the MCU clock (ticks, 64-bit here; 32-bit on the
wire); a timed action is a timer on the core's scheduler, run in clock order, and every value is computed
*at the action's own clock*, not at the moment the Python loop got to it, so loop latency never changes a
position, a trigger time or a temperature.

- :class:`Stepper`: the step queue. ``queue_step interval count add`` is ``count`` steps, the first
  ``interval`` ticks after the previous step and each following one ``add`` ticks later than the one
  before; the position at any clock is counted from that schedule (no per-step work).
- :class:`Endstop` and :class:`Trsync`: homing. The endstop is sampled every ``rest_ticks`` from the
  ``endstop_home`` clock; its level comes from the carriage position the steppers give (the
  :class:`Machine`), so it triggers where the carriage reaches ``position_endstop``; the trigger sync then
  stops the steppers registered with it at that clock and reports to the host.
- :class:`DigitalOut`: on/off and software-PWM outputs (``queue_digital_out`` at its clock, the
  ``max_duration`` watchdog), plus hardware PWM (``queue_pwm_out``). A heater's or fan's duty goes to the
  physics.
- :class:`AnalogIn`: periodic ADC reports (``query_analog_in``) with the firmware's range check; a wired
  thermistor reads the heater's simulated temperature.
- :class:`HeaterPhysics`: one heater on :func:`sim_bridge.thermal.temperature_after` (the embedded
  simulator's own thermal model), duty held between PWM updates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np

from sim_bridge.klippy.wiring import EndstopWiring, HeaterWiring, StepperWiring, Wiring
from sim_bridge.thermal import heater_params, temperature_after

TIMER_TOO_CLOSE = "Timer too close"
MISSED_DIGITAL_OUT = "Missed scheduling of next digital out event"
ADC_OUT_OF_RANGE = "ADC out of range"
STEPPER_ACTIVE_RESET = "Can't reset time when stepper active"
ENDSTOP_POLL_S = 0.002
"""How often a homing endstop's samples are evaluated (each sample still at its own clock)."""


class Core(Protocol):
    """What a peripheral needs from the MCU core."""

    freq: float
    late_ticks: int
    machine: Machine

    def now(self) -> int: ...
    def clock64(self, clock32: int) -> int: ...
    def schedule(self, clock: int, action: Callable[[int], int | None]) -> Timer: ...
    def send(self, name: str, **values: int | bytes) -> None: ...
    def shutdown(self, reason: str) -> None: ...


class Timer:
    """A scheduled action; ``action(clock)`` returns the clock of its next run, or None."""

    __slots__ = ("action", "active", "clock")

    def __init__(self, clock: int, action: Callable[[int], int | None]) -> None:
        self.clock = clock
        self.action = action
        self.active = True

    def cancel(self) -> None:
        self.active = False


def _cancel(timer: Timer | None) -> None:
    if timer is not None:
        timer.cancel()


class HeaterPhysics:
    """One heater's temperature on the shared thermal model; faults change what the pins do."""

    def __init__(self, wiring: HeaterWiring, ambient_c: float, start_c: float, freq: float) -> None:
        self.wiring = wiring
        self.params = heater_params(wiring.profile)
        self.ambient_c = ambient_c
        self.temp_c = start_c
        self.duty = 0.0
        self.fan = 0.0
        self.freq = freq
        self.clock: int | None = None
        self.disconnected = False
        """Fault: the heater's power has no effect (a broken wire or cartridge)."""
        self.sensor_fault: str | None = None
        """Fault: ``open`` (thermistor wire cut: reads the ADC's top) or ``shorted`` (reads 0)."""

    def advance(self, clock: int) -> None:
        if self.clock is not None and clock > self.clock:
            duty = 0.0 if self.disconnected else self.duty
            self.temp_c = float(temperature_after(self.params, self.temp_c, duty, (clock - self.clock) / self.freq,
                                                  self.ambient_c, self.fan))
        if self.clock is None or clock > self.clock:
            self.clock = clock

    def set_duty(self, clock: int, duty: float) -> None:
        self.advance(clock)
        self.duty = duty

    def set_fan(self, clock: int, fan: float) -> None:
        self.advance(clock)
        self.fan = fan

    def adc_fraction(self, clock: int) -> float:
        self.advance(clock)
        if self.sensor_fault == "open":
            return 1.0
        if self.sensor_fault == "shorted":
            return 0.0
        return self.wiring.adc_fraction(self.temp_c)

    def rebase(self, clock: int) -> None:
        """The MCU clock restarted (a reset): keep the temperature, continue from ``clock``."""
        self.clock = clock


class Stepper:
    """``config_stepper``: a step/dir pair and its queue of moves."""

    def __init__(self, core: Core, oid: int, wiring: StepperWiring | None) -> None:
        self.core = core
        self.oid = oid
        self.wiring = wiring
        self.position = 0
        """Steps taken up to :attr:`last_clock`, +1 per step with the dir pin high."""
        self.last_clock = 0
        self.next_dir = 0
        self.need_reset = False
        self.moves: deque[tuple[int, int, int, int, int, int]] = deque()
        """(base clock, interval, count, add, ±1, clock of the last step) per queued move, in order."""

    def queue_step(self, interval: int, count: int, add: int) -> None:
        if self.need_reset or count == 0:
            return  # after a trigger stop the firmware drops moves until reset_step_clock
        if self.moves:
            base = self.moves[-1][5]
        else:
            # The firmware keeps 32-bit times: the first step is (last step + interval) mod 2³², the moment
            # nearest now with those low bits (after reset_step_clock clock=0 the host counts from 0 too).
            first = self.core.clock64((self.last_clock + interval) & 0xFFFFFFFF)
            if first < self.core.now() - self.core.late_ticks:
                self.core.shutdown(TIMER_TOO_CLOSE)
                return
            base = first - interval
        end = base + count * interval + add * count * (count - 1) // 2
        self.moves.append((base, interval, count, add, 1 if self.next_dir else -1, end))

    def set_next_step_dir(self, direction: int) -> None:
        self.next_dir = direction

    def reset_step_clock(self, clock: int) -> None:
        self.advance(self.core.now())
        if self.moves:
            self.core.shutdown(STEPPER_ACTIVE_RESET)
            return
        self.last_clock = clock
        self.need_reset = False

    def advance(self, clock: int) -> None:
        """Fold the moves finished by ``clock`` into the position."""
        moves = self.moves
        while moves and moves[0][5] <= clock:
            _, _, count, _, sign, end = moves.popleft()
            self.position += sign * count
            self.last_clock = end

    def position_at(self, clock: int) -> int:
        """Steps taken by ``clock`` (at or after the last :meth:`advance`)."""
        position = self.position
        for base, interval, count, add, sign, end in self.moves:
            if end <= clock:
                position += sign * count
                continue
            if base + interval <= clock:
                lo, hi = 1, count  # the last step k with base + k·interval + add·k(k−1)/2 <= clock
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if base + mid * interval + add * mid * (mid - 1) // 2 <= clock:
                        lo = mid
                    else:
                        hi = mid - 1
                position += sign * lo
            break
        return position

    def stop(self, clock: int) -> None:
        """A trigger sync fired at ``clock``: the steps after it never happen."""
        self.position = self.position_at(clock)
        self.moves.clear()
        self.last_clock = clock
        self.need_reset = True

    def mm_at(self, clock: int) -> float:
        assert self.wiring is not None
        sign = -1.0 if self.wiring.invert_dir else 1.0
        return sign * self.position_at(clock) * self.wiring.step_dist_mm


class Machine:
    """The carriages: axis positions from the rail steppers and the kinematics."""

    def __init__(self, wiring: Wiring, start_mm: tuple[float, float, float]) -> None:
        self.wiring = wiring
        self.rails: dict[int, Stepper] = {}
        """Axis → its rail stepper (once configured)."""
        self.set_origin(start_mm)

    def set_origin(self, carriage_mm: tuple[float, float, float]) -> None:
        """Carriages at ``carriage_mm`` when every rail stepper's count is 0 (power-on, or after a reset)."""
        x, y, z = carriage_mm
        self.offset_mm = (x + y, x - y, z) if self.wiring.kinematics == "corexy" else (x, y, z)

    def hold_at_frame(self, clock: int) -> None:
        """A carriage driven past the frame stays at the frame: the steps beyond are lost (its motor skips),
        so moving back starts from the frame, as on a real machine."""
        here = self.carriages_mm(clock)
        held = tuple(min(max(at, lo), hi) for at, (lo, hi) in zip(here, self.wiring.travel_mm, strict=True))
        if held == here:
            return
        motors = [self.motor_mm(axis, clock) - self.offset_mm[axis] for axis in range(3)]
        x, y, z = held
        target = (x + y, x - y, z) if self.wiring.kinematics == "corexy" else (x, y, z)
        self.offset_mm = tuple(t - m for t, m in zip(target, motors, strict=True))

    def motor_mm(self, axis: int, clock: int) -> float:
        stepper = self.rails.get(axis)
        return self.offset_mm[axis] + (stepper.mm_at(clock) if stepper is not None else 0.0)

    def carriage_mm(self, axis: int, clock: int) -> float:
        if self.wiring.kinematics == "corexy" and axis < 2:
            a, b = self.motor_mm(0, clock), self.motor_mm(1, clock)
            return 0.5 * (a + b) if axis == 0 else 0.5 * (a - b)
        return self.motor_mm(axis, clock)

    def carriages_mm(self, clock: int) -> tuple[float, float, float]:
        return (self.carriage_mm(0, clock), self.carriage_mm(1, clock), self.carriage_mm(2, clock))


class Trsync:
    """``config_trsync``: ends a homing move on the first trigger (endstop, host request, timeout)."""

    def __init__(self, core: Core, oid: int) -> None:
        self.core = core
        self.oid = oid
        self.can_trigger = False
        self.trigger_reason = 0
        self.expire_reason = 0
        self.report_ticks = 0
        self.steppers: list[Stepper] = []
        self.report_timer: Timer | None = None
        self.expire_timer: Timer | None = None

    def start(self, report_clock: int, report_ticks: int, expire_reason: int) -> None:
        self._cancel()
        self.can_trigger = True
        self.trigger_reason = 0
        self.expire_reason = expire_reason
        self.report_ticks = report_ticks
        self.steppers = []
        if report_ticks:
            self.report_timer = self.core.schedule(report_clock, self._report_event)

    def set_timeout(self, clock: int) -> None:
        _cancel(self.expire_timer)
        self.expire_timer = None
        if self.can_trigger:
            self.expire_timer = self.core.schedule(clock, self._expire)

    def _expire(self, clock: int) -> None:
        self.trigger(self.expire_reason, clock)

    def _report_event(self, clock: int) -> int | None:
        if not self.can_trigger:
            return None
        self.report(clock)
        return clock + self.report_ticks

    def trigger(self, reason: int, clock: int, report: bool = True) -> None:
        if not self.can_trigger:
            return
        self.can_trigger = False
        self.trigger_reason = reason
        for stepper in self.steppers:
            stepper.stop(clock)
        self._cancel()
        if report:
            self.report(clock)

    def report(self, clock: int) -> None:
        self.core.send("trsync_state", oid=self.oid, can_trigger=int(self.can_trigger),
                       trigger_reason=self.trigger_reason, clock=clock & 0xFFFFFFFF)

    def _cancel(self) -> None:
        _cancel(self.report_timer)
        _cancel(self.expire_timer)
        self.report_timer = self.expire_timer = None


class Endstop:
    """``config_endstop``: a switch closed when its carriage reaches ``position_endstop``."""

    def __init__(self, core: Core, oid: int, wiring: EndstopWiring | None) -> None:
        self.core = core
        self.oid = oid
        self.wiring = wiring
        self.stuck = False
        """Fault: the switch never closes (a broken switch or cable)."""
        self.homing = False
        self.next_clock = 0
        self.rest_ticks = 0
        self.pin_value = 0
        self.trsync: Trsync | None = None
        self.reason = 0
        self.timer: Timer | None = None

    def level(self, clock: int) -> int:
        """The pin's level at ``clock``."""
        if self.wiring is None:
            return 0
        triggered = False
        if not self.stuck:
            at = self.core.machine.carriage_mm(self.wiring.axis, clock)
            limit = self.wiring.position_endstop_mm
            triggered = at >= limit if self.wiring.homing_positive else at <= limit
        return int(triggered) ^ int(self.wiring.invert)

    def home(self, clock: int, rest_ticks: int, sample_count: int, pin_value: int, trsync: Trsync | None,
             reason: int) -> None:
        _cancel(self.timer)
        self.timer = None
        if not sample_count or trsync is None:
            self.homing = False
            return
        self.homing = True
        self.next_clock = clock
        self.rest_ticks = max(1, rest_ticks)
        self.pin_value = pin_value
        self.trsync = trsync
        self.reason = reason
        self.timer = self.core.schedule(clock, self._check)

    def _check(self, clock: int) -> int | None:
        """Evaluate every sample due by now; trigger on the first that reads ``pin_value``."""
        if not self.homing or self.trsync is None:
            return None
        now = max(clock, self.core.now())
        due = (now - self.next_clock) // self.rest_ticks + 1
        last = self.next_clock + (due - 1) * self.rest_ticks
        if self.level(last) != self.pin_value:
            self.next_clock = last + self.rest_ticks
            return max(self.next_clock, now + int(ENDSTOP_POLL_S * self.core.freq))
        lo, hi = 0, due - 1  # the first sample that reads triggered (the carriage moves one way)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.level(self.next_clock + mid * self.rest_ticks) == self.pin_value:
                hi = mid
            else:
                lo = mid + 1
        at = self.next_clock + lo * self.rest_ticks
        self.homing = False
        self.next_clock = at + self.rest_ticks  # the host reads the trigger time as next_clock − rest_ticks
        self.trsync.trigger(self.reason, at)
        return None

    def query(self) -> None:
        now = self.core.now()
        self.core.send("endstop_state", oid=self.oid, homing=int(self.homing),
                       next_clock=self.next_clock & 0xFFFFFFFF, pin_value=self.level(now))


class DigitalOut:
    """``config_digital_out`` / ``config_pwm_out``: an output, its schedule and its watchdog."""

    def __init__(self, core: Core, oid: int, pin: int, value: float, default_value: float, max_duration: int,
                 on_change: Callable[[int, float], None] | None, pwm_max: float = 0.0) -> None:
        self.core = core
        self.oid = oid
        self.pin = pin
        self.duty = value
        self.default_duty = default_value
        self.max_duration = max_duration
        self.cycle_ticks = 0
        self.pwm_max = pwm_max
        """Hardware PWM's full scale (``PWM_MAX``); 0 for a digital/software-PWM pin."""
        self.on_change = on_change
        self.pending: deque[tuple[int, float]] = deque()
        self.timer: Timer | None = None
        self.watchdog: Timer | None = None

    def duty_of(self, on_ticks: int) -> float:
        if self.pwm_max:
            return min(1.0, on_ticks / self.pwm_max)
        if not self.cycle_ticks:
            return 1.0 if on_ticks else 0.0
        return min(1.0, on_ticks / self.cycle_ticks)

    def queue(self, clock: int, on_ticks: int) -> None:
        if clock < self.core.now() - self.core.late_ticks:
            self.core.shutdown(TIMER_TOO_CLOSE)
            return
        self.pending.append((clock, self.duty_of(on_ticks)))
        if len(self.pending) == 1:
            self.timer = self.core.schedule(clock, self._apply)

    def _apply(self, clock: int) -> int | None:
        _, duty = self.pending.popleft()
        self.set(clock, duty)
        return self.pending[0][0] if self.pending else None

    def set(self, clock: int, duty: float) -> None:
        self.duty = duty
        if self.on_change is not None:
            self.on_change(clock, duty)
        _cancel(self.watchdog)
        self.watchdog = None
        if self.max_duration and duty != self.default_duty:
            self.watchdog = self.core.schedule(clock + self.max_duration, self._missed)

    def _missed(self, clock: int) -> None:
        if self.pending and self.pending[0][0] <= clock:
            return  # an update is due at the same moment: not missed
        self.core.shutdown(MISSED_DIGITAL_OUT)

    def halt(self, clock: int) -> None:
        """Shutdown: the default value, nothing pending."""
        _cancel(self.timer)
        _cancel(self.watchdog)
        self.pending.clear()
        self.max_duration = 0
        self.set(clock, self.default_duty)


class AnalogIn:
    """``config_analog_in``: periodic sums of ADC samples, checked against the host's range."""

    def __init__(self, core: Core, oid: int, heater: HeaterPhysics | None, adc_max: int) -> None:
        self.core = core
        self.oid = oid
        self.heater = heater
        self.adc_max = adc_max
        self.sample_count = 0
        self.rest_ticks = 0
        self.min_value = 0
        self.max_value = 0
        self.range_check_count = 0
        self.invalid = 0
        self.timer: Timer | None = None

    def query(self, clock: int, sample_count: int, rest_ticks: int, min_value: int, max_value: int,
              range_check_count: int) -> None:
        _cancel(self.timer)
        self.timer = None
        self.sample_count = sample_count
        if not sample_count:
            return
        self.rest_ticks = max(1, rest_ticks)
        self.min_value, self.max_value = min_value, max_value
        self.range_check_count = range_check_count
        self.invalid = 0
        self.timer = self.core.schedule(clock, self._sample)

    def _sample(self, clock: int) -> int | None:
        fraction = self.heater.adc_fraction(clock) if self.heater is not None else 0.5
        one = int(np.clip(round(fraction * self.adc_max), 0, self.adc_max))
        value = one * self.sample_count
        if self.range_check_count and not self.min_value <= value <= self.max_value:
            self.invalid += 1
            if self.invalid >= self.range_check_count:
                self.core.shutdown(ADC_OUT_OF_RANGE)
                return None
        else:
            self.invalid = 0
        self.core.send("analog_in_state", oid=self.oid, next_clock=(clock + self.rest_ticks) & 0xFFFFFFFF,
                       value=value)
        return clock + self.rest_ticks

    def halt(self) -> None:
        _cancel(self.timer)
        self.timer = None
