"""The virtual printer on the real stack: kalico's Klippy in live mode behind Moonraker 0.11, on 127.0.0.1.

Never skipped: without ``.venv-klippy`` / ``.venv-moonraker`` the fixture fails with the set-up hint. One
printer (the ``virtual_printer`` fixture, with an API key) serves the module; the destructive tests
(emergency stop, firmware restart) run last and leave it ready again. The printer's MCU is a file, so
prints complete at once and heaters read 0 °C (see :mod:`sim_bridge.virtual_printer`).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, GOLDEN, ROOT, VIRTUAL_PRINTER_API_KEY

from sim_bridge import moonraker
from sim_bridge.config import ConfigError
from sim_bridge.failures import MOVE_OUT_OF_RANGE
from sim_bridge.klippy import dictionary, host, printer_cfg
from sim_bridge.klippy.live import KlippyError
from sim_bridge.moonraker import MoonrakerClient, MoonrakerError, follow_print
from sim_bridge.moonraker_backend import simulate_via_moonraker
from sim_bridge.printers import load_printer
from sim_bridge.virtual_printer import VirtualPrinter, VirtualPrinterError, free_port, moonraker_conf

STARTUP_LIMIT_S = 15.0
"""The issue's bound on start to ready."""
SMALL_PRINT = b"G28\nG1 Z1 F600\nG1 X10 Y10 F3000\nG1 X50 Y10\nG1 X50 Y50\nG1 X10 Y50\n"
BAD_PRINT = b"G28\nG1 Z1 F600\nG1 X10 Y10 F3000\nG1 X999 Y10\nG1 X20 Y20\n"
"""Line 4 leaves the bed: Klipper stops the print there."""
SHUTDOWN_PRINT = b"G28\nG1 Z1 F600\nM112\nG1 X10\n"
"""Line 3 shuts Klippy down mid-print: ``print_stats`` stays ``paused``, ``webhooks.state`` is ``shutdown``."""
TCP_LISTEN = "0A"
"""The ``st`` column of a listening socket in ``/proc/net/tcp``."""


def _listening_addresses(port: int) -> list[str]:
    """The local addresses (``IP:port``, IPv4 and IPv6) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.is_file():
            continue
        for row in path.read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == TCP_LISTEN and int(port_hex, 16) == port:
                if len(address) == 8:  # IPv4, little-endian hex
                    found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.append(f"ipv6:{address}")
    return found


def _restart(client: MoonrakerClient) -> None:
    """Firmware restart and wait for ``ready`` (after a test shut Klippy down)."""
    started = time.monotonic()
    client.firmware_restart()
    while client.server_info()["klippy_state"] != "ready":
        assert time.monotonic() - started < 15, "not ready after firmware restart"
        time.sleep(0.1)


def _print(client: MoonrakerClient, name: str, data: bytes) -> dict:
    client.upload(name, data)
    client.print_start(name)
    status, _ = follow_print(client, timeout_s=30)
    return status


def test_ready_within_limit(virtual_printer: VirtualPrinter) -> None:
    assert virtual_printer.startup_s < STARTUP_LIMIT_S
    info = virtual_printer.client.server_info()
    assert info["klippy_state"] == "ready"
    assert _listening_addresses(virtual_printer.port) == ["127.0.0.1"]


def test_moonraker_fetches_nothing_from_the_internet(virtual_printer: VirtualPrinter) -> None:
    # The fetches Moonraker 0.11 would start: announcement feeds (moonlight) and usb.ids (linux-usb.org).
    log = virtual_printer.moonraker_log.read_text()
    assert "Moonlight Disabled" in log
    assert (virtual_printer.data_path / "misc" / "usb.ids").is_file()
    for fetch in ("linux-usb.org", "usb.ids", "Failed to update subscription", "moonlight.arksine"):
        assert fetch not in log, fetch


def test_no_api_key_is_401(virtual_printer: VirtualPrinter) -> None:
    for key in (None, "wrong-key"):
        with pytest.raises(MoonrakerError) as caught:
            MoonrakerClient(virtual_printer.url, api_key=key).server_info()
        assert caught.value.status == 401


def test_upload_and_download(virtual_printer: VirtualPrinter) -> None:
    client = virtual_printer.client
    answer = client.upload("roundtrip.gcode", SMALL_PRINT)
    assert answer["item"]["path"] == "roundtrip.gcode"
    assert client.download("roundtrip.gcode") == SMALL_PRINT
    with pytest.raises(MoonrakerError) as caught:
        client.download("never-uploaded.gcode")
    assert caught.value.status == 404


def test_print_completes_and_history_records_it(virtual_printer: VirtualPrinter) -> None:
    client = virtual_printer.client
    status = _print(client, "small.gcode", SMALL_PRINT)
    assert status["print_stats"]["state"] == "complete"
    assert status["virtual_sdcard"]["file_position"] == len(SMALL_PRINT)
    assert status["toolhead"]["position"][:2] == [10.0, 50.0]
    state = client.printer_state()
    assert (state.klippy_state, state.print_state) == ("ready", "complete")
    # Moonraker writes the job when it sees the print end, a moment after Klippy.
    deadline = time.monotonic() + 5
    while not (jobs := [j for j in client.history() if j.filename == "small.gcode"]):
        assert time.monotonic() < deadline, "history did not record the job"
        time.sleep(0.1)
    assert jobs[0].status == "completed"


def test_bad_file_stops_with_klippers_message(virtual_printer: VirtualPrinter) -> None:
    status = _print(virtual_printer.client, "bad.gcode", BAD_PRINT)
    assert status["print_stats"]["state"] == "error"
    assert status["print_stats"]["message"].startswith("Move out of range: 999.000 10.000 1.000")
    offset = status["virtual_sdcard"]["file_position"]
    assert BAD_PRINT[:offset].count(b"\n") + 1 == 4


def test_bad_move_through_gcode_script_is_400(virtual_printer: VirtualPrinter) -> None:
    client = virtual_printer.client
    client.gcode_script("G28")
    with pytest.raises(MoonrakerError) as caught:
        client.gcode_script("G1 X999 F3000")
    assert caught.value.status == 400
    assert caught.value.message.startswith("Move out of range: 999.000")


def test_follow_print_polls_without_websocket(virtual_printer: VirtualPrinter,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client = virtual_printer.client
    client.upload("polled.gcode", SMALL_PRINT)
    client.print_start("polled.gcode")
    _, how = follow_print(client, 30)
    assert how == "websocket"
    async def no_websocket(*args: object) -> dict:
        raise ConnectionError("websocket refused (test)")
    monkeypatch.setattr(moonraker, "_follow_websocket", no_websocket)
    client.print_start("polled.gcode")
    status, how = follow_print(client, 30)
    assert how == "polling" and status["print_stats"]["state"] == "complete"


def test_moonraker_backend_on_a_slicer_file(virtual_printer: VirtualPrinter) -> None:
    url, key = virtual_printer.url, VIRTUAL_PRINTER_API_KEY
    report = simulate_via_moonraker(FIXTURES / "prusaslicer" / "cube20_ender3.gcode", "ender3-klipper", url,
                                    api_key=key, timeout_s=60)
    assert report.success, report.summary()
    assert report.final_state["print_state"] == "complete"
    # Klipper's planned time (the MCU is a file: no clock, no heater waits) against the embedded estimate,
    # which waits for the heaters: close, not equal.
    assert report.sources["print_time_s"] == "moonraker" and not report.final_state["mcu_clocked"]
    embedded_s = report.final_state["embedded_print_time_s"]
    assert 0.9 * embedded_s < report.print_time_s < 1.05 * embedded_s
    assert report.layer_count > 50 and report.filament_mm > 100
    assert report.backend == "moonraker" and report.source("filament_mm") == "embedded"


def test_print_time_through_moonraker_is_batch_modes(virtual_printer: VirtualPrinter, tmp_path: Path) -> None:
    # The same Klippy, printer.cfg and file in batch mode: its logged print time is the live planned time.
    gcode = FIXTURES / "prusaslicer" / "cube20_ender3.gcode"
    cfg = printer_cfg.write_printer_cfg(load_printer("ender3-klipper"), tmp_path / "printer.cfg",
                                        printer_cfg.PrinterCfgOptions(sdcard_path=str(tmp_path)))
    argv = host.batch_argv(cfg, gcode, tmp_path / "out.serial", dictionary.dictionary_path(), tmp_path / "log")
    subprocess.run(argv, check=True, timeout=120, capture_output=True)
    exit_line = next(line for line in (tmp_path / "log").read_text().splitlines()
                     if line.startswith(host.EXIT_LINE_PREFIX))
    batch_s = float(exit_line.removeprefix(host.EXIT_LINE_PREFIX).split("s")[0])
    report = simulate_via_moonraker(gcode, "ender3-klipper", virtual_printer.url, api_key=VIRTUAL_PRINTER_API_KEY,
                                    timeout_s=60)
    # Within the start offset Klippy adds when a print begins on a printer that has printed before.
    assert report.print_time_s == pytest.approx(batch_s, abs=0.5)


def test_moonraker_backend_reports_klippers_error_and_line(virtual_printer: VirtualPrinter) -> None:
    report = simulate_via_moonraker(GOLDEN / "must_fail" / "move_out_of_range.gcode", "ender3-klipper",
                                    virtual_printer.url, api_key=VIRTUAL_PRINTER_API_KEY, timeout_s=60)
    assert not report.success
    first = report.failures[0]
    assert (first.mode, first.line, first.fatal, first.source) == (MOVE_OUT_OF_RANGE, 6, True, "moonraker")
    assert first.message.startswith("Move out of range: 240.000 10.000 0.200")
    assert report.stopped_at_line == 6


def test_moonraker_backend_lines_from_a_rewritten_upload(virtual_printer: VirtualPrinter,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A printer with enable_object_processing rewrites what it is sent; here the upload itself prepends three
    # lines, so Klipper (real) runs a file three lines longer than the program: the line is the stored file's.
    header = b"; rewritten on upload (test)\n; EXCLUDE_OBJECT_DEFINE would go here\n; end of header\n"
    real_upload = MoonrakerClient.upload
    monkeypatch.setattr(MoonrakerClient, "upload",
                        lambda self, name, content: real_upload(self, name, header + bytes(content)))
    report = simulate_via_moonraker(BAD_PRINT, "ender3-klipper", virtual_printer.url,
                                    api_key=VIRTUAL_PRINTER_API_KEY, timeout_s=60, filename="rewritten.gcode")
    first = report.failures[0]
    assert first.message.startswith("Move out of range: 999.000 10.000 1.000"), first.message
    assert first.line == report.stopped_at_line == 3 + 4


def test_upload_refuses_names_that_break_the_form(virtual_printer: VirtualPrinter) -> None:
    for name in ('a"b.gcode', "a\r\nX-Evil: 1.gcode", "sub/x.gcode", "line\n.gcode", ""):
        with pytest.raises(ValueError, match="upload file name"):
            virtual_printer.client.upload(name, SMALL_PRINT)


def test_shutdown_mid_print_ends_the_follow(virtual_printer: VirtualPrinter) -> None:
    # Destructive (M112): it restarts the printer, also when it fails.
    client = virtual_printer.client
    try:
        started = time.monotonic()
        report = simulate_via_moonraker(SHUTDOWN_PRINT, "ender3-klipper", virtual_printer.url,
                                        api_key=VIRTUAL_PRINTER_API_KEY, timeout_s=60)
        assert time.monotonic() - started < 15, "followed the print past Klippy's shutdown"
        assert not report.success
        first = report.failures[0]
        assert first.fatal and first.source == "moonraker"
        assert "M112" in first.message, first.message
        assert first.line == report.stopped_at_line == 3
        assert report.final_state["print_state"] == "error"
    finally:
        _restart(client)
    client.gcode_script("G28")


def test_emergency_stop_then_firmware_restart(virtual_printer: VirtualPrinter) -> None:
    # Destructive: last in the module, and it leaves the printer ready again.
    client = virtual_printer.client
    client.emergency_stop()
    deadline = time.monotonic() + 10
    while client.server_info()["klippy_state"] != "shutdown":
        assert time.monotonic() < deadline, "no shutdown after emergency stop"
        time.sleep(0.1)
    with pytest.raises(MoonrakerError):
        client.gcode_script("G28")
    _restart(client)
    client.gcode_script("G28")


# -- starting and stopping (each its own short-lived printer) ------------------------------------------------
def test_bad_inputs_fail_fast_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no-such-printer"):
        VirtualPrinter("no-such-printer")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(VirtualPrinterError, match="is taken"):
            VirtualPrinter("ender3-klipper", port=taken.getsockname()[1])
    started = time.monotonic()
    printer = VirtualPrinter("ender3-klipper", extra_cfg="[no_such_section]\nvalue: 1\n")
    with pytest.raises(KlippyError, match="'no_such_section' is not a valid config section"):
        printer.start()
    assert time.monotonic() - started < 20
    assert printer.dir is None and printer.moonraker is None and printer.klippy is None
    for variable in ("LAYERLOOP_MOONRAKER", "LAYERLOOP_KLIPPY"):
        with monkeypatch.context() as patch:
            patch.setenv(variable, "/nonexistent/host")
            with pytest.raises(VirtualPrinterError, match="setup.sh"):
                VirtualPrinter("ender3-klipper").start()


READY_LINE_TIMEOUT_S = 40.0
"""How long the command may take to print its ready line (its own start timeout is 30 s)."""


def _read_line(stream: object, deadline_s: float) -> str:
    """One line of ``stream`` (a text pipe), or "" when none comes within ``deadline_s``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not selector.select(deadline_s):
            return ""
    return stream.readline()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("stop_signal", "key_source"), [(signal.SIGTERM, "file"), (signal.SIGINT, None)],
                         ids=["SIGTERM-api-key-file", "Ctrl-C-trusted"])
def test_command_line_starts_and_stops_on_a_signal(stop_signal: signal.Signals, key_source: str | None,
                                                   tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    api_key = "cli-key" if key_source else None
    key_args: list[str] = []
    if key_source == "file":
        key_file = tmp_path / "key"
        key_file.write_text(f"{api_key}\nnot part of the key\n")
        key_file.chmod(0o600)
        key_args = ["--api-key-file", str(key_file)]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "sim_bridge", "virtual-printer", "--printer",
                                    "ender3-klipper", *key_args], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert process.stdout is not None
        line = _read_line(process.stdout, READY_LINE_TIMEOUT_S)
        assert "ready at http://127.0.0.1:" in line, (line, (tmp_path / "stderr").read_text())
        assert "cli-key" not in Path(f"/proc/{process.pid}/cmdline").read_text()
        url = line.split("ready at ", 1)[1].split()[0]
        # Without a key, 127.0.0.1 is a trusted client: no key needed.
        assert MoonrakerClient(url, api_key=api_key).server_info()["klippy_state"] == "ready"
        if api_key:
            with pytest.raises(MoonrakerError):
                MoonrakerClient(url, timeout_s=2).server_info()
        children = _children(process.pid)
        assert len(children) == 3  # Klippy, Moonraker and the virtual MCU (the command's default)
        assert "virtual MCU, faults: " in line
        process.send_signal(stop_signal)
        assert process.wait(20) == 0
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        with pytest.raises(MoonrakerError):
            MoonrakerClient(url, api_key=api_key, timeout_s=2).server_info()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


def test_client_and_config_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="http://host"):
        MoonrakerClient("127.0.0.1:7125")
    with pytest.raises(ValueError, match="timeout_s"):
        MoonrakerClient("http://127.0.0.1:7125", timeout_s=0)
    with pytest.raises(MoonrakerError) as caught:  # nothing listens there
        MoonrakerClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).server_info()
    assert caught.value.status == 0
    with pytest.raises(VirtualPrinterError, match="api key"):
        VirtualPrinter("ender3-klipper", api_key="two words")
    assert "trusted_clients" in moonraker_conf(7125, Path("/tmp/k.sock"), trusted_localhost=True)
    assert "trusted_clients" not in moonraker_conf(7125, Path("/tmp/k.sock"), trusted_localhost=False)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Klippy and Moonraker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
