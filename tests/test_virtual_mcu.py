"""The virtual MCU: unit checks against the host's own code, then real Klippy + real Moonraker driving it.

Never skipped: the Klippy host and Moonraker come from ``scripts/setup.sh``. The unit tier cross-checks the
wire codec and the thermistor inversion against the installed host's own ``msgproto`` and ``thermistor``
modules (run in the host's interpreter). The integration tier runs one printer for the module (``ender3``
with a small, fast-heating hotend, so a heat-up takes ~35 s, not ~110 s) through homing, heating, a
~40 s print, pause/resume/cancel and every fault; the other bundled printers identify, configure and home.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

from sim_bridge.config import ConfigError
from sim_bridge.klippy import dictionary, host, mcu_control, printer_cfg, protocol, wiring
from sim_bridge.klippy.mcu_devices import Stepper
from sim_bridge.moonraker import MoonrakerError, follow_print
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile
from sim_bridge.simulator import simulate
from sim_bridge.virtual_printer import VirtualPrinter

PRINT_FILE = FIXTURES / "virtual_mcu" / "square6.gcode"
"""Six layers of a 40 mm square, two perimeters each, ending with M400 (~43 s of motion; the hotend stays on)."""
HOMED_PREFIX = "M104 S200\nG28\nG1 X5 Y5 Z5 F3000\n"
"""How the embedded run reaches the virtual printer's state after G28 (at 5, 5, 5, hot)."""


def fast_hotend(name: str = "ender3-klipper") -> PrinterProfile:
    """A bundled printer with a small, well-tuned hotend (60 W, 4 J/K) and a 5 s ``check_gain_time``."""
    profile = load_printer(name)
    hotend = dataclasses.replace(profile.hotend, power_w=60.0, heat_capacity_j_per_k=4.0, loss_w_per_k=0.1,
                                 pid_kp=15.0, pid_ki=4.0, pid_kd=30.0, check_gain_time_s=5.0)
    return dataclasses.replace(profile, hotend=hotend)


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except MoonrakerError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s:.0f} s")
        time.sleep(0.1)


def klippy_state(vp: VirtualPrinter) -> tuple[str, str]:
    info = vp.client.printer_info()
    return str(info.get("state")), str(info.get("state_message", "")).split("\n")[0]


def host_python(script: str, payload: object) -> Any:
    """Run ``script`` in the Klippy host's interpreter (its package importable), JSON in and out."""
    found = host.find_host()
    result = subprocess.run([str(found.python), "-c", script], input=json.dumps(payload), text=True,
                            capture_output=True, timeout=60, cwd=found.source_dir.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- unit tier: the codec and the thermistors against the host's own code -------------------------------------

HOST_CODEC = """
import json, sys
from klippy import msgproto
request = json.load(sys.stdin)
parser = msgproto.MessageParser()
parser.process_identify(json.dumps(request["dictionary"]).encode(), decompress=False)
out = {"commands": [], "responses": []}
for text in request["commands"]:
    out["commands"].append(list(parser.create_command(text)))
for raw in request["responses"]:
    params = parser.parse(bytes(raw))
    values = {k: list(v) if isinstance(v, bytes) else v for k, v in params.items() if not k.startswith("#")}
    out["responses"].append(values | {"name": params["#name"]})
print(json.dumps(out))
"""


def test_codec_agrees_with_the_hosts_msgproto() -> None:
    data = json.loads(dictionary.dictionary_path().read_text())
    codec = protocol.Codec(data)
    commands = ["queue_step oid=3 interval=123456 count=200 add=-7", "set_next_step_dir oid=3 dir=1",
                "reset_step_clock oid=3 clock=4294967295", "identify offset=0 count=40",
                "queue_digital_out oid=9 clock=1000 on_ticks=0", "trsync_trigger oid=2 reason=4"]
    responses = [codec.encode("stepper_position", oid=3, pos=-12345),
                 codec.encode("clock", clock=0xFFFFFFF0, high=1),
                 codec.encode("analog_in_state", oid=7, next_clock=99, value=32000),
                 codec.encode("identify_response", offset=40, data=b"\x00\x7e\xff" * 10)]
    result = host_python(HOST_CODEC, {"dictionary": data, "commands": commands,
                                      "responses": [list(protocol.frame(0, r)) for r in responses]})
    for text, encoded in zip(commands, result["commands"], strict=True):
        (name, params), = codec.decode(bytes(encoded))
        expected = dict(pair.split("=") for pair in text.split()[1:])
        assert name == text.split()[0]
        assert {k: protocol.to_signed32(v) if k == "add" else v for k, v in params.items()} == \
            {k: int(v) for k, v in expected.items()}
    decoded = result["responses"]
    assert decoded[0] == {"name": "stepper_position", "oid": 3, "pos": -12345}
    assert decoded[1]["clock"] == 0xFFFFFFF0
    assert decoded[2] == {"name": "analog_in_state", "oid": 7, "next_clock": 99, "value": 32000}
    assert decoded[3] == {"name": "identify_response", "offset": 40, "data": list(b"\x00\x7e\xff" * 10)}


def test_blocks_resync_after_garbage_and_bad_crc() -> None:
    good = protocol.frame(3, b"\x05\x06")
    corrupt = bytearray(protocol.frame(4, b"\x07"))
    corrupt[2] ^= 0xFF
    reader = protocol.BlockReader()
    # The stk500v2 probe Klippy sends before connecting, a corrupt block, then a good one.
    blocks = list(reader.feed(b"\x1b\x01\x00\x01\x0e\x11\x04" + bytes(corrupt) + good))
    assert blocks == [(3, b"\x05\x06")]
    assert reader.bytes_invalid > 0
    for value in (0, 1, 95, 96, -32, -33, 2**31 - 1, -(2**31), 0xFFFFFFFF, 12345678):
        out = bytearray()
        protocol.encode_vlq(value, out)
        assert protocol.decode_vlq(bytes(out), 0) == (value & 0xFFFFFFFF, len(out))


HOST_THERMISTOR = """
import json, sys
from klippy.extras import thermistor
request = json.load(sys.stdin)
out = {}
for name, (params, temps) in request.items():
    t = thermistor.Thermistor(4700.0, 0.0)
    if "beta" in params:
        t.setup_coefficients_beta(*params["beta"])
    else:
        t.setup_coefficients(*[v for point in params["points"] for v in point])
    out[name] = [t.calc_adc(temp) for temp in temps]
print(json.dumps(out))
"""


def test_thermistor_adc_matches_klippys_conversion() -> None:
    temps = [0.0, 25.0, 60.0, 120.0, 200.0, 250.0, 280.0]
    request: dict[str, Any] = {}
    for name, points in wiring.THERMISTOR_POINTS.items():
        request[name] = ({"points": points}, temps)
    for name, beta in wiring.THERMISTOR_BETA.items():
        request[name] = ({"beta": beta}, temps)
    klippy_adc = host_python(HOST_THERMISTOR, request)
    for name, (params, _) in request.items():
        ours = (wiring.Thermistor.from_beta(*params["beta"]) if "beta" in params
                else wiring.Thermistor.from_points(params["points"]))
        for temp, adc in zip(temps, klippy_adc[name], strict=True):
            r = ours.resistance_ohm(temp)
            assert r / (r + 4700.0) == pytest.approx(adc, rel=1e-6), (name, temp)
            assert ours.temperature_c(r) == pytest.approx(temp, abs=1e-6)


def test_step_schedule_positions_match_stepping_one_by_one() -> None:
    class Clock:
        freq = 50e6
        late_ticks = 10**9
        machine = None
        at = 0

        def now(self) -> int:
            return self.at

        def clock64(self, clock32: int) -> int:
            delta = (clock32 - self.at) & 0xFFFFFFFF
            return self.at + (delta - (1 << 32) if delta & 0x80000000 else delta)

        def shutdown(self, reason: str) -> None:
            raise AssertionError(reason)

    # After reset_step_clock clock=0 the host counts a far first step from 0: 32-bit arithmetic, near now.
    late = Clock()
    late.at = 2_200_000_000  # 44 s at 50 MHz: past 2**31 ticks
    far = Stepper(late, 1, None)  # type: ignore[arg-type]
    far.reset_step_clock(late.clock64(0))
    far.set_next_step_dir(1)
    far.queue_step(late.at + 1000, 1, 0)
    assert far.position_at(late.at + 999) == 0 and far.position_at(late.at + 1000) == 1

    rng = random.Random(7)
    stepper = Stepper(Clock(), 0, None)  # type: ignore[arg-type]
    steps: list[tuple[int, int]] = []  # (clock, ±1) of every step, stepped one by one
    clock = 0
    for _ in range(40):
        interval, count, add = rng.randint(200, 5000), rng.randint(1, 60), rng.randint(-3, 30)
        direction = rng.randint(0, 1)
        stepper.set_next_step_dir(direction)
        stepper.queue_step(interval, count, add)
        for _ in range(count):
            clock += interval
            interval += add
            steps.append((clock, 1 if direction else -1))
    for probe in sorted(rng.randint(0, clock + 1000) for _ in range(300)):
        expected = sum(sign for at, sign in steps if at <= probe)
        assert stepper.position_at(probe) == expected, probe
        stepper.advance(probe)


@pytest.mark.parametrize("name", ["ender3-klipper", "corexy300-klipper", "mk3s-marlin"])
def test_wiring_of_the_bundled_printers(name: str, tmp_path: Path) -> None:
    cfg = tmp_path / "printer.cfg"
    profile = load_printer(name)
    printer_cfg.write_printer_cfg(profile, cfg)
    wired = wiring.read_wiring(cfg, profile)
    assert wired.kinematics == profile.kinematics
    assert {s.name for s in wired.steppers.values()} == {"stepper_x", "stepper_y", "stepper_z", "extruder"}
    assert sorted(e.axis for e in wired.endstops.values()) == [0, 1, 2]
    assert {h.name for h in wired.heaters.values()} == {"extruder", "heater_bed"}
    assert len(wired.fan_pins) == 1
    for axis, endstop in enumerate(sorted(wired.endstops.values(), key=lambda e: e.axis)):
        assert endstop.position_endstop_mm == profile.position_endstop_mm[axis]
        low, high = wired.travel_mm[axis]
        assert low < wired.start_mm[axis] < high


def test_wiring_names_what_it_cannot_model(tmp_path: Path) -> None:
    cfg = tmp_path / "printer.cfg"
    profile = load_printer("ender3-klipper")
    text = printer_cfg.printer_cfg_text(profile).replace(printer_cfg.THERMISTOR, "PT1000", 1)
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=r"printer.cfg:\d+: \[extruder\] sensor_type = PT1000.*NTC"):
        wiring.read_wiring(cfg, profile)
    cfg.write_text(printer_cfg.printer_cfg_text(profile).replace("gpiochip0/gpio1\n", "PA1\n", 1))
    with pytest.raises(ConfigError, match=r"pin 'PA1' is not a pin of the virtual MCU"):
        wiring.read_wiring(cfg, profile)


# --- integration tier: real Klippy and Moonraker on the virtual MCU -----------------------------------------

@pytest.fixture(scope="module")
def vp() -> Iterator[VirtualPrinter]:
    printer = VirtualPrinter(fast_hotend())
    printer.start()
    try:
        yield printer
    finally:
        printer.stop()


def test_identifies_configures_and_homes(vp: VirtualPrinter) -> None:
    mcu = vp.client.objects_query(("mcu",))["mcu"]
    assert "virtual-mcu" in mcu["mcu_version"]
    assert mcu["mcu_constants"]["CLOCK_FREQ"] == 50_000_000
    status = vp.mcu_status()
    assert status["configured"] and status["shutdown"] is None
    started = time.monotonic()
    vp.client.gcode_script("G28\nM400", timeout_s=60)
    took = time.monotonic() - started
    toolhead = vp.client.objects_query(("toolhead",))["toolhead"]
    assert toolhead["homed_axes"] == "xyz"
    # Where Klippy believes the toolhead is, the simulated carriages are: the endstops closed at position_endstop.
    assert vp.mcu_status()["carriages_mm"] == pytest.approx(toolhead["position"][:3], abs=0.02)
    # X and Y each travel 50 mm at 50 mm/s and Z 5 mm at 5 mm/s before their endstops close.
    assert took > 3.0


def test_m109_heats_as_the_embedded_model_and_settles(vp: VirtualPrinter) -> None:
    embedded = simulate("M104 S200\nM109 S200\n", printer=vp.profile).time_breakdown_s["heating"]
    assert vp.mcu_status()["heaters"]["extruder"]["temp_c"] < 30.0
    started = time.monotonic()
    vp.client.gcode_script("M109 S200", timeout_s=120)
    took = time.monotonic() - started
    assert took == pytest.approx(embedded, rel=0.15)
    readings = []
    for _ in range(6):
        time.sleep(0.5)
        readings.append(vp.client.objects_query(("extruder",))["extruder"]["temperature"])
    assert all(abs(t - 200.0) <= 2.0 for t in readings), readings


def test_print_takes_the_embedded_simulators_time(vp: VirtualPrinter) -> None:
    text = PRINT_FILE.read_text()
    options = SimOptions(start_hotend_temp_c=200.0)
    before = simulate(HOMED_PREFIX, printer=vp.profile, options=options).time_breakdown_s
    whole = simulate(HOMED_PREFIX + text, printer=vp.profile, options=options).time_breakdown_s
    expected = sum(whole[k] - before[k] for k in ("motion", "heating", "dwell"))
    assert 30.0 <= expected <= 60.0
    vp.client.gcode_script("G1 X5 Y5 Z5 F3000\nM400")
    vp.client.upload(PRINT_FILE.name, text)
    vp.client.print_start(PRINT_FILE.name)
    status, _ = follow_print(vp.client, timeout_s=120)
    stats = status["print_stats"]
    assert stats["state"] == "complete", stats
    assert stats["print_duration"] == pytest.approx(expected, rel=0.03)
    assert vp.client.history(limit=1)[0].status == "completed"


def _ready_to_print(vp: VirtualPrinter) -> None:
    """Homed, hot and the file uploaded (what the tests before leave; done here when run alone)."""
    if vp.client.objects_query(("toolhead",))["toolhead"]["homed_axes"] != "xyz":
        vp.client.gcode_script("G28", timeout_s=60)
    if vp.client.objects_query(("extruder",))["extruder"]["temperature"] < 180.0:
        vp.client.gcode_script("M109 S200", timeout_s=120)
    vp.client.upload(PRINT_FILE.name, PRINT_FILE.read_text())


def test_pause_resume_and_cancel_mid_print(vp: VirtualPrinter) -> None:
    client = vp.client
    _ready_to_print(vp)
    client.print_start(PRINT_FILE.name)
    wait_for(lambda: client.objects_query(("print_stats",))["print_stats"]["state"] == "printing", 10, "printing")
    time.sleep(2.0)
    client.print_pause()
    wait_for(lambda: client.objects_query(("print_stats",))["print_stats"]["state"] == "paused", 10, "paused")
    # The moves Klippy had already queued finish (a few seconds of lookahead); then nothing moves.
    client.gcode_script("M400", timeout_s=30)
    held = vp.mcu_status()["carriages_mm"]
    time.sleep(1.0)
    assert vp.mcu_status()["carriages_mm"] == pytest.approx(held, abs=1e-6)
    client.print_resume()
    wait_for(lambda: client.objects_query(("print_stats",))["print_stats"]["state"] == "printing", 10, "resumed")
    time.sleep(1.5)
    assert vp.mcu_status()["carriages_mm"] != pytest.approx(held, abs=0.5)
    client.print_cancel()
    wait_for(lambda: client.objects_query(("print_stats",))["print_stats"]["state"] == "cancelled", 10,
             "cancelled")
    assert vp.client.history(limit=1)[0].status == "cancelled"


def _restart(vp: VirtualPrinter) -> None:
    vp.clear_fault("all")
    vp.client.firmware_restart()
    try:
        state = wait_for(lambda: (s := klippy_state(vp))[0] in ("ready", "error") and s, 30, "restarted")
        if state[0] == "error" and "is shutdown" in state[1]:
            # Klippy sends `reset` and closes the port 15 ms later; on a loaded machine its serial thread may
            # not have written it by then, so the MCU stays shut down. A person presses FIRMWARE_RESTART
            # again, which now goes over a live connection.
            vp.client.firmware_restart()
        wait_for(lambda: klippy_state(vp)[0] == "ready", 30, "ready after FIRMWARE_RESTART")
    except AssertionError:
        assert vp.mcu is not None and vp.klippy is not None
        raise AssertionError(f"not ready after FIRMWARE_RESTART: {klippy_state(vp)}\nMCU:\n{vp.mcu.output()}\n"
                             f"Klippy:\n{vp.klippy.log_tail(40)}") from None
    assert vp.mcu_status()["shutdown"] is None


def _shutdown_message(vp: VirtualPrinter, timeout_s: float) -> str:
    state, message = wait_for(lambda: (s := klippy_state(vp))[0] in ("shutdown", "error") and s, timeout_s,
                              "shut down")
    return message


@pytest.mark.parametrize("fault, params, expected", [
    ("thermistor_open", {"heater": "extruder"}, "MCU 'mcu' shutdown: ADC out of range"),
    ("thermistor_shorted", {"heater": "heater_bed"}, "MCU 'mcu' shutdown: ADC out of range"),
])
def test_sensor_faults_trip_the_mcus_range_check(vp: VirtualPrinter, fault: str, params: dict[str, str],
                                                expected: str) -> None:
    # Heaters off: with one heating, Klippy's verify_heater may see the wild reading first and stop the
    # printer with "not heating at expected rate" before the MCU's range check counts its 4 bad samples.
    vp.client.gcode_script("TURN_OFF_HEATERS")
    vp.inject_fault(fault, **params)
    assert _shutdown_message(vp, 10) == expected
    assert vp.mcu_status()["shutdown"] == "ADC out of range"
    _restart(vp)


def test_disconnected_heater_trips_klippys_verify_heater(vp: VirtualPrinter) -> None:
    vp.inject_fault("heater_disconnected", heater="extruder")
    vp.client.gcode_script("M104 S230")
    assert _shutdown_message(vp, 30) == "Heater extruder not heating at expected rate"
    _restart(vp)


def test_stuck_endstop_homes_the_full_travel_and_fails(vp: VirtualPrinter) -> None:
    vp.inject_fault("endstop_stuck", axis="x")
    with pytest.raises(MoonrakerError, match="No trigger on x after full movement"):
        vp.client.gcode_script("G28 X", timeout_s=60)
    assert klippy_state(vp)[0] == "ready"
    # The carriage ground against the frame, 1 mm past the switch; repaired, it homes from there.
    assert vp.mcu_status()["carriages_mm"][0] == pytest.approx(-1.0, abs=0.05)
    vp.clear_fault("endstop_stuck", axis="x")
    vp.client.gcode_script("G28 X", timeout_s=60)


def test_dropped_serial_link_loses_communication(vp: VirtualPrinter) -> None:
    vp.inject_fault("serial_disconnect")
    assert _shutdown_message(vp, 15) == "Lost communication with MCU 'mcu'"
    _restart(vp)


def test_stalled_mcu_misses_its_timers(vp: VirtualPrinter) -> None:
    vp.client.gcode_script("G28 X\nG1 X200 F3000")  # a 4 s move: steps due all through the stall
    time.sleep(0.5)
    vp.inject_fault("stall", seconds=1.5)
    assert _shutdown_message(vp, 10) == "MCU 'mcu' shutdown: Timer too close"
    _restart(vp)


def test_control_requests_are_checked(vp: VirtualPrinter) -> None:
    with pytest.raises(mcu_control.ControlError, match="one of"):
        vp.inject_fault("melt_the_hotend")
    with pytest.raises(mcu_control.ControlError, match="heater 'chamber'"):
        vp.inject_fault("heater_disconnected", heater="chamber")
    with pytest.raises(mcu_control.ControlError, match=r"\(0, 60\]"):
        vp.inject_fault("stall", seconds=600)


@pytest.mark.parametrize("name, home", [("corexy300-klipper", True), ("mk3s-marlin", False)])
def test_other_bundled_printers_identify_and_stop_clean(name: str, home: bool) -> None:
    printer = VirtualPrinter(name)
    with printer:
        pids = [p.pid for p in (printer.moonraker, printer.klippy.process, printer.mcu.process)
                if p is not None]
        assert len(pids) == 3
        assert printer.mcu_status()["configured"]
        assert "virtual-mcu" in printer.client.objects_query(("mcu",))["mcu"]["mcu_version"]
        if home:  # CoreXY, homing X and Y to max: both motors turn for each axis
            printer.client.gcode_script("G28\nM400", timeout_s=90)
            toolhead = printer.client.objects_query(("toolhead",))["toolhead"]
            assert toolhead["homed_axes"] == "xyz"
            assert printer.mcu_status()["carriages_mm"] == pytest.approx(toolhead["position"][:3], abs=0.02)
        run_dir = printer.dir
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert run_dir is not None and not run_dir.exists()
