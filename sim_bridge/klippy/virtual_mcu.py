"""A Klipper micro-controller emulated in Python, on a pseudo-terminal: real, unmodified Klippy connects to
it as to any board (``[mcu] serial:`` names the terminal), and the embedded simulator's physics is behind
its pins.

What it does, as firmware does it (Klipper's ``docs/Protocol.md`` and ``docs/MCU_Commands.md``; our code):

- **Transport** (:mod:`sim_bridge.klippy.protocol`): message blocks with CRC and sequence numbers; a block
  with the expected number is run and acknowledged, any other is answered with the expected number (a nak),
  so the host retransmits; garbage is skipped up to the next sync byte.
- **Identify**: the data dictionary (the one :mod:`sim_bridge.klippy.dictionary` derives from the installed
  host, plus the ``static_string_id`` names of the shutdown reasons below), zlib-compressed, served in the
  chunks ``identify`` asks for.
- **Clock**: ``CLOCK_FREQ`` ticks per second of the process's monotonic clock; ``get_uptime`` and
  ``get_clock`` answered at once, so Klippy's clock sync stays tight. Timed commands run from a priority
  queue at their clock; one that arrives later than its clock (beyond ``late_limit_s``) shuts the MCU down
  with ``Timer too close``, as firmware does.
- **Config**: ``allocate_oids``, the ``config_*`` commands of a cartesian and a CoreXY printer.cfg,
  ``finalize_config`` (kept CRC), ``get_config`` (``move_count``), ``emergency_stop``, ``clear_shutdown``,
  ``reset`` (all state cleared, the clock restarted; the carriages and heaters keep their physical state)
  and ``config_reset``. A command this MCU has no model for shuts it down naming it.
- **Peripherals** (:mod:`sim_bridge.klippy.mcu_devices`): steppers, endstops and homing, outputs, ADC.

**Faults** are injected through a control socket (:mod:`sim_bridge.klippy.mcu_control`); each one changes
the hardware, and the reaction is Klippy's own.

Run: ``python -m sim_bridge.klippy mcu --printer-cfg printer.cfg --dictionary dict.json --serial PATH
[--control SOCKET] [--profile NAME] [--start-temp extruder=150]``.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import signal
import time
import tty
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim_bridge.klippy import mcu_devices as dev
from sim_bridge.klippy.mcu_control import ControlServer
from sim_bridge.klippy.protocol import BlockReader, Codec, ProtocolError, frame
from sim_bridge.klippy.wiring import Wiring

MOVE_COUNT = 1024
"""Moves the MCU can queue (``get_config``'s ``move_count``; a Linux-process MCU's queue is as deep)."""
LATE_LIMIT_S = 0.5
"""How late a timed command may arrive or run before ``Timer too close``: what a busy machine's scheduling
jitter may cost (Klippy schedules 0.1–0.3 s ahead, so a healthy MCU is never this late)."""
STATS_PERIOD_S = 5.0
"""Period of the ``stats`` report (the firmware's)."""
HOUSEKEEPING_S = 0.05
"""How often finished moves are folded into the steppers' positions."""
HISTORY_S = 0.1
"""How far back position queries may look (moves younger than this are kept)."""
COMMAND_REQUEST = "Command request"
UNSUPPORTED = "Command not supported by the virtual MCU"
SHUTDOWN_CLEARED = "Shutdown cleared when not shutdown"
STATIC_STRINGS = (dev.TIMER_TOO_CLOSE, dev.MISSED_DIGITAL_OUT, dev.ADC_OUT_OF_RANGE, dev.STEPPER_ACTIVE_RESET,
                  COMMAND_REQUEST, UNSUPPORTED, SHUTDOWN_CLEARED, "Rescheduled timer in the past")
"""Every shutdown reason this MCU sends (the ``static_string_id`` enumeration it declares)."""
IN_SHUTDOWN = frozenset({"identify", "get_uptime", "get_clock", "get_config", "emergency_stop", "clear_shutdown",
                         "reset", "config_reset", "stepper_get_position", "endstop_query_state", "trsync_trigger",
                         "allocate_oids", "finalize_config"})
"""Commands a shut-down MCU still runs; any other is answered ``is_shutdown``."""
IGNORED = frozenset({"debug_read", "debug_write", "debug_ping", "debug_nop", "set_digital_out",
                     "get_canbus_id", "get_canbus_status"})
"""Commands accepted and ignored (probes and config-time pin sets with nothing behind them)."""


def mcu_dictionary(host_dictionary: dict[str, Any]) -> dict[str, Any]:
    """The host-derived dictionary as this MCU serves it: its shutdown reasons and its name added."""
    data = json.loads(json.dumps(host_dictionary))
    data.setdefault("enumerations", {})["static_string_id"] = {text: i + 1 for i, text in enumerate(STATIC_STRINGS)}
    data["app"] = "layerloop-virtual-mcu"
    data["version"] = f"virtual-mcu ({host_dictionary.get('version', '?')})"
    return data


class VirtualMcu:
    """One emulated MCU on a pseudo-terminal linked at ``serial_path``."""

    def __init__(self, dictionary: dict[str, Any], wiring: Wiring, serial_path: Path,
                 control_path: Path | None = None, start_temps_c: dict[str, float] | None = None,
                 late_limit_s: float = LATE_LIMIT_S) -> None:
        self.dictionary = mcu_dictionary(dictionary)
        self.codec = Codec(self.dictionary)
        config = self.dictionary.get("config", {})
        self.freq = float(config["CLOCK_FREQ"])
        self.adc_max = int(config.get("ADC_MAX", 4095))
        self.pwm_max = float(config.get("PWM_MAX", 32768))
        self.sumsq_base = int(config.get("STATS_SUMSQ_BASE", 256))
        self.strings = self.dictionary["enumerations"]["static_string_id"]
        self.identify_data = zlib.compress(json.dumps(self.dictionary).encode())
        self.wiring = wiring
        self.serial_path = Path(serial_path)
        self.late_ticks = int(late_limit_s * self.freq)
        self.control = ControlServer(control_path, self) if control_path is not None else None
        self.machine = dev.Machine(wiring, wiring.start_mm)
        start_temps_c = start_temps_c or {}
        self.heaters = {h.name: dev.HeaterPhysics(h, wiring.ambient_c, start_temps_c.get(h.name, wiring.ambient_c),
                                                  self.freq) for h in wiring.heaters.values()}
        self.stuck_axes: set[int] = set()
        self.master = self.slave = -1
        self.stopping = False
        self.stall_until = 0.0
        self.busy_s = 0.0
        self._loops = 0
        self._stats_busy_ticks = 0
        self._stats_sumsq = 0
        self._reset_state(first=True)

    # --- clock and scheduler ------------------------------------------------------------------------------
    def now(self) -> int:
        return int((time.monotonic() - self.t0) * self.freq)

    def clock64(self, clock32: int) -> int:
        now = self.now()
        delta = (clock32 - now) & 0xFFFFFFFF
        return now + (delta - (1 << 32) if delta & 0x80000000 else delta)

    def schedule(self, clock: int, action: Callable[[int], int | None]) -> dev.Timer:
        timer = dev.Timer(clock, action)
        self._seq += 1
        heapq.heappush(self.timers, (clock, self._seq, timer))
        return timer

    def _run_timers(self) -> None:
        now = self.now()
        while self.timers and self.timers[0][0] <= now:
            clock, _, timer = heapq.heappop(self.timers)
            if not timer.active:
                continue
            if clock < now - self.late_ticks:
                self.shutdown(dev.TIMER_TOO_CLOSE)  # firmware that fell this far behind its timers
                continue
            following = timer.action(clock)
            if following is not None and timer.active:
                timer.clock = following
                self._seq += 1
                heapq.heappush(self.timers, (following, self._seq, timer))
            now = self.now()

    # --- state ---------------------------------------------------------------------------------------------
    def _reset_state(self, first: bool = False, restart_clock: bool = True) -> None:
        """Power-on state (after ``reset``; ``config_reset`` keeps the clock and the link): no config, the
        carriages and heaters where they physically are."""
        if not first:
            clock = self.now()
            here = self.machine.carriages_mm(clock)
            for heater in self.heaters.values():
                heater.advance(clock)
        if restart_clock:
            self.t0 = time.monotonic()
        self.timers: list[tuple[int, int, dev.Timer]] = []
        self._seq = 0
        self.oids: list[object | None] = []
        self.is_config = False
        self.config_crc = 0
        self.shutdown_reason: str | None = None
        if restart_clock:
            self.next_sequence = 0
            self.reader = BlockReader()
            self.out = bytearray()
        self.outputs: list[dev.DigitalOut] = []
        self.inputs: list[dev.AnalogIn] = []
        self.steppers: list[dev.Stepper] = []
        self.endstops: list[dev.Endstop] = []
        self.machine.rails.clear()
        if not first:
            self.machine.set_origin(here)
        for heater in self.heaters.values():
            heater.duty = 0.0
            heater.fan = 0.0
            heater.rebase(self.now())
        self.last_housekeeping = self.last_stats = self.last_iteration = time.monotonic()

    def note(self, message: str) -> None:
        """One line on the MCU's output (``mcu.out`` in the virtual printer's folder): what a serial console shows."""
        print(f"{time.monotonic() - self.t0:10.3f} {message}", flush=True)

    def shutdown(self, reason: str) -> None:
        if self.shutdown_reason is not None:
            return
        self.note(f"shutdown: {reason}")
        self.shutdown_reason = reason
        clock = self.now()
        for output in self.outputs:
            output.halt(clock)
        for analog in self.inputs:
            analog.halt()
        for stepper in self.steppers:
            stepper.stop(clock)
        for endstop in self.endstops:
            endstop.home(0, 0, 0, 0, None, 0)
        for item in self.oids:
            if isinstance(item, dev.Trsync):
                item.can_trigger = False
        self.send("shutdown", clock=clock & 0xFFFFFFFF, static_string_id=self.strings.get(reason, 0))

    # --- transport -----------------------------------------------------------------------------------------
    def open_serial(self) -> None:
        """A new pseudo-terminal (raw, like a USB serial port), linked at :attr:`serial_path`."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        tmp = self.serial_path.with_name(self.serial_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.serial_path)

    def close_serial(self) -> None:
        """The cable pulled: the terminal closed, its link removed."""
        if self.master >= 0:
            self.note("serial link closed")
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1
        self.out.clear()
        self.serial_path.unlink(missing_ok=True)

    def replug(self) -> None:
        """The cable plugged back in: a USB-powered board restarts, on a new terminal at the same link."""
        self.note("serial link restored (the board restarts)")
        self._reset_state()
        self.open_serial()

    def send(self, name: str, **values: int | bytes) -> None:
        self.out += frame(self.next_sequence, self.codec.encode(name, **values))

    def _receive(self, data: bytes) -> None:
        for sequence, payload in self.reader.feed(data):
            if sequence != self.next_sequence:
                self.out += frame(self.next_sequence)  # a nak: "I expect this one"
                continue
            self.next_sequence = (sequence + 1) & 0x0F
            try:
                messages = list(self.codec.decode(payload))
            except ProtocolError:
                messages = []
            reported = False
            for name, params in messages:
                if self.shutdown_reason is not None and name not in IN_SHUTDOWN:
                    if not reported:
                        self.send("is_shutdown", clock=self.now() & 0xFFFFFFFF,
                                  static_string_id=self.strings.get(self.shutdown_reason, 0))
                        reported = True
                    continue
                self._dispatch(name, params)
            self.out += frame(self.next_sequence)  # the ack

    def _flush(self) -> None:
        if not self.out or self.master < 0:
            return
        try:
            written = os.write(self.master, self.out)
        except BlockingIOError:
            return
        except OSError:
            self.out.clear()
            return
        del self.out[:written]

    # --- commands ------------------------------------------------------------------------------------------
    def _oid(self, params: dict[str, Any], kind: type) -> Any:
        oid = int(params["oid"])
        item = self.oids[oid] if oid < len(self.oids) else None
        if not isinstance(item, kind):
            raise ProtocolError(f"oid {oid} is not a {kind.__name__}")
        return item

    def _set_oid(self, params: dict[str, Any], item: object) -> None:
        oid = int(params["oid"])
        if oid >= len(self.oids):
            self.oids.extend([None] * (oid + 1 - len(self.oids)))
        self.oids[oid] = item

    def _dispatch(self, name: str, p: dict[str, Any]) -> None:
        handler = getattr(self, "cmd_" + name, None)
        if handler is None:
            if name not in IGNORED:
                self.shutdown(UNSUPPORTED)
            return
        try:
            handler(p)
        except (ProtocolError, KeyError, IndexError):
            self.shutdown(UNSUPPORTED)

    def cmd_identify(self, p: dict[str, Any]) -> None:
        offset, count = int(p["offset"]), int(p["count"])
        self.send("identify_response", offset=offset, data=self.identify_data[offset:offset + count])

    def cmd_get_uptime(self, p: dict[str, Any]) -> None:
        now = self.now()
        self.send("uptime", high=now >> 32, clock=now & 0xFFFFFFFF)

    def cmd_get_clock(self, p: dict[str, Any]) -> None:
        now = self.now()
        self.send("clock", clock=now & 0xFFFFFFFF, high=now >> 32)

    def cmd_get_config(self, p: dict[str, Any]) -> None:
        self.send("config", is_config=int(self.is_config), crc=self.config_crc,
                  is_shutdown=int(self.shutdown_reason is not None), move_count=MOVE_COUNT)

    def cmd_allocate_oids(self, p: dict[str, Any]) -> None:
        self.oids = [None] * int(p["count"])

    def cmd_finalize_config(self, p: dict[str, Any]) -> None:
        self.note(f"configured ({len(self.oids)} oids, crc {int(p['crc'])})")
        self.is_config = True
        self.config_crc = int(p["crc"])

    def cmd_emergency_stop(self, p: dict[str, Any]) -> None:
        self.shutdown(COMMAND_REQUEST)

    def cmd_clear_shutdown(self, p: dict[str, Any]) -> None:
        self.note("clear_shutdown")
        self.shutdown_reason = None

    def cmd_reset(self, p: dict[str, Any]) -> None:
        self.note("reset")
        self._reset_state()

    def cmd_config_reset(self, p: dict[str, Any]) -> None:
        if self.shutdown_reason is None:
            return  # the firmware allows it only once shut down
        self.note("config_reset")
        self._reset_state(restart_clock=False)

    def cmd_config_stepper(self, p: dict[str, Any]) -> None:
        wiring = self.wiring.steppers.get(int(p["step_pin"]))
        stepper = dev.Stepper(self, int(p["oid"]), wiring)
        self._set_oid(p, stepper)
        self.steppers.append(stepper)
        if wiring is not None and wiring.name in self.wiring.rails:
            self.machine.rails[self.wiring.rails[wiring.name]] = stepper

    def cmd_queue_step(self, p: dict[str, Any]) -> None:
        add = int(p["add"])
        self._oid(p, dev.Stepper).queue_step(int(p["interval"]), int(p["count"]), add - (1 << 32) if add >> 31 else add)

    def cmd_set_next_step_dir(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.Stepper).set_next_step_dir(int(p["dir"]))

    def cmd_reset_step_clock(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.Stepper).reset_step_clock(self.clock64(int(p["clock"])))

    def cmd_stepper_get_position(self, p: dict[str, Any]) -> None:
        stepper = self._oid(p, dev.Stepper)
        self.send("stepper_position", oid=stepper.oid, pos=stepper.position_at(self.now()))

    def cmd_stepper_stop_on_trigger(self, p: dict[str, Any]) -> None:
        trsync = self.oids[int(p["trsync_oid"])]
        if isinstance(trsync, dev.Trsync):
            trsync.steppers.append(self._oid(p, dev.Stepper))

    def cmd_config_endstop(self, p: dict[str, Any]) -> None:
        wiring = self.wiring.endstops.get(int(p["pin"]))
        endstop = dev.Endstop(self, int(p["oid"]), wiring)
        endstop.stuck = wiring is not None and wiring.axis in self.stuck_axes
        self._set_oid(p, endstop)
        self.endstops.append(endstop)

    def cmd_endstop_home(self, p: dict[str, Any]) -> None:
        endstop = self._oid(p, dev.Endstop)
        trsync = self.oids[int(p["trsync_oid"])] if int(p["sample_count"]) else None
        endstop.home(self.clock64(int(p["clock"])), int(p["rest_ticks"]), int(p["sample_count"]),
                     int(p["pin_value"]), trsync if isinstance(trsync, dev.Trsync) else None,
                     int(p["trigger_reason"]))

    def cmd_endstop_query_state(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.Endstop).query()

    def cmd_config_trsync(self, p: dict[str, Any]) -> None:
        self._set_oid(p, dev.Trsync(self, int(p["oid"])))

    def cmd_trsync_start(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.Trsync).start(self.clock64(int(p["report_clock"])), int(p["report_ticks"]),
                                       int(p["expire_reason"]))

    def cmd_trsync_set_timeout(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.Trsync).set_timeout(self.clock64(int(p["clock"])))

    def cmd_trsync_trigger(self, p: dict[str, Any]) -> None:
        trsync = self._oid(p, dev.Trsync)
        now = self.now()
        trsync.trigger(int(p["reason"]), now, report=False)
        trsync.report(now)

    def _on_change(self, pin: int) -> Callable[[int, float], None] | None:
        heater = self.wiring.heaters.get(pin)
        if heater is not None:
            return self.heaters[heater.name].set_duty
        if pin in self.wiring.fan_pins and "extruder" in self.heaters:
            return self.heaters["extruder"].set_fan
        return None

    def cmd_config_digital_out(self, p: dict[str, Any]) -> None:
        pin = int(p["pin"])
        output = dev.DigitalOut(self, int(p["oid"]), pin, float(bool(p["value"])), float(bool(p["default_value"])),
                                int(p["max_duration"]), self._on_change(pin))
        self._set_oid(p, output)
        self.outputs.append(output)

    def cmd_config_pwm_out(self, p: dict[str, Any]) -> None:
        pin = int(p["pin"])
        output = dev.DigitalOut(self, int(p["oid"]), pin, int(p["value"]) / self.pwm_max,
                                int(p["default_value"]) / self.pwm_max, int(p["max_duration"]),
                                self._on_change(pin), pwm_max=self.pwm_max)
        self._set_oid(p, output)
        self.outputs.append(output)

    def cmd_set_digital_out_pwm_cycle(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.DigitalOut).cycle_ticks = int(p["cycle_ticks"])

    def cmd_queue_digital_out(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.DigitalOut).queue(self.clock64(int(p["clock"])), int(p["on_ticks"]))

    def cmd_queue_pwm_out(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.DigitalOut).queue(self.clock64(int(p["clock"])), int(p["value"]))

    def cmd_update_digital_out(self, p: dict[str, Any]) -> None:
        output = self._oid(p, dev.DigitalOut)
        output.set(self.now(), float(bool(p["value"])))

    def cmd_config_analog_in(self, p: dict[str, Any]) -> None:
        sensor = self.wiring.sensors.get(int(p["pin"]))
        analog = dev.AnalogIn(self, int(p["oid"]), self.heaters[sensor.name] if sensor else None, self.adc_max)
        self._set_oid(p, analog)
        self.inputs.append(analog)

    def cmd_query_analog_in(self, p: dict[str, Any]) -> None:
        self._oid(p, dev.AnalogIn).query(self.clock64(int(p["clock"])), int(p["sample_count"]),
                                         int(p["rest_ticks"]), int(p["min_value"]), int(p["max_value"]),
                                         int(p["range_check_count"]))

    # --- faults (the control socket calls these) ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        clock = self.now()
        return {"clock": clock, "uptime_s": clock / self.freq, "configured": self.is_config,
                "shutdown": self.shutdown_reason, "connected": self.master >= 0,
                "carriages_mm": list(self.machine.carriages_mm(clock)),
                "heaters": {name: {"temp_c": round(h.temp_c, 3), "duty": h.duty, "disconnected": h.disconnected,
                                   "sensor_fault": h.sensor_fault} for name, h in self.heaters.items()},
                "stuck_axes": sorted("xyz"[a] for a in self.stuck_axes), "busy_s": round(self.busy_s, 4),
                "cpu_s": round(time.process_time(), 4)}

    def stall(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds

    def set_stuck(self, axis: int, stuck: bool) -> None:
        (self.stuck_axes.add if stuck else self.stuck_axes.discard)(axis)
        for endstop in self.endstops:
            if endstop.wiring is not None and endstop.wiring.axis == axis:
                endstop.stuck = stuck

    # --- main loop -----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (the terminal opened first if :meth:`open_serial` was not called)."""
        if self.master < 0:
            self.open_serial()
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        try:
            while not self.stopping:
                self._iterate()
        finally:
            self.close_serial()
            if self.control is not None:
                self.control.close()

    def _late_steps(self) -> bool:
        """Whether a stepper had steps due more than the late limit ago (after the loop did not run)."""
        limit = self.now() - self.late_ticks
        return any(s.moves and s.moves[0][0] + s.moves[0][1] < limit for s in self.steppers)

    def _iterate(self) -> None:
        if self.stall_until:
            time.sleep(max(0.0, self.stall_until - time.monotonic()))
            self.stall_until = 0.0
        if time.monotonic() - self.last_iteration > self.late_ticks / self.freq and self._late_steps():
            self.shutdown(dev.TIMER_TOO_CLOSE)
        timeout = HOUSEKEEPING_S
        if self.timers:
            timeout = max(0.0, min(timeout, (self.timers[0][0] - self.now()) / self.freq))
        readers = [fd for fd in (self.master, *(self.control.fds() if self.control else ())) if fd >= 0]
        writers = [self.master] if self.out and self.master >= 0 else []
        try:
            readable, _, _ = select.select(readers, writers, [], timeout)
        except InterruptedError:
            return
        started = time.monotonic()
        if self.master in readable:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, InterruptedError):
                data = b""
            except OSError:
                data = b""  # no host on the terminal
            if data:
                self._receive(data)
        if self.control is not None:
            self.control.serve([fd for fd in readable if fd != self.master])
        self._run_timers()
        if started - self.last_housekeeping >= HOUSEKEEPING_S:
            self.last_housekeeping = started
            keep = self.now() - int(HISTORY_S * self.freq)
            for stepper in self.steppers:
                stepper.advance(keep)
            self.machine.hold_at_frame(keep)
        if started - self.last_stats >= STATS_PERIOD_S:
            self.last_stats = started
            if self.is_config:
                self.send("stats", count=self._loops, sum=self._stats_busy_ticks & 0xFFFFFFFF,
                          sumsq=self._stats_sumsq & 0xFFFFFFFF)
            self._loops = self._stats_busy_ticks = self._stats_sumsq = 0
        self._flush()
        self.last_iteration = time.monotonic()
        busy = self.last_iteration - started
        self.busy_s += busy
        ticks = int(busy * self.freq)
        self._loops += 1
        self._stats_busy_ticks += ticks
        self._stats_sumsq += ticks * ticks // self.sumsq_base
